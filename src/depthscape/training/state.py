"""Everything the next training steps depend on, and its checkpoint form.

A :class:`TrainState` holds the model, the optimizer, the augmentation generator, the
step count, the metric window (sums on the device, image count and first step on the
host) and the last test result. :meth:`TrainState.state_dict` and
:meth:`TrainState.load_state_dict` turn it into the tensors and numbers of a resumable
checkpoint and back, including this process's global RNG states, so a resumed run takes
the same steps as an uninterrupted one.

Under torchrun every rank has its own RNG stream (dropout) and its own window sums:
``state_dict`` (a collective) stores every rank's under ``*_ranks`` keys, plus rank 0's
RNG and the window summed over ranks under the single-process keys, so a checkpoint
resumes with the same process count (each rank its own part) or any other (rank 0 the
single-process part, the other ranks fresh).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from depthscape.core.distributed import DistContext
from depthscape.training.step import MetricSums


@dataclass
class TrainState:
    """The mutable state of one training run in this process."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    augment: torch.Generator  # draws the crop/flip of every batch (the same on every rank)
    dist: DistContext
    sums: MetricSums  # loss and correct predictions of the window, on the device
    step: int = 0  # updates done
    window_seen: int = 0  # images the window's sums cover
    window_from: int = 0  # the step before the window's first
    last_test: tuple[float, float] = (math.nan, math.nan)  # loss, accuracy of the last evaluation
    elapsed_before: float = 0.0  # seconds trained before this process took over
    _started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def elapsed_s(self) -> float:
        """Training seconds of the whole run so far (earlier processes included)."""
        return self.elapsed_before + time.perf_counter() - self._started

    def start_clock(self) -> None:
        """Count :attr:`elapsed_s` from now on (called when the first step is about to run)."""
        self._started = time.perf_counter()

    def advance(self, images: int) -> None:
        """Book one step over ``images`` images (the global batch)."""
        self.step += 1
        self.window_seen += images

    def reset_window(self) -> None:
        """Start a new metric window after the current step (a log row was written)."""
        self.sums.zero_()
        self.window_seen, self.window_from = 0, self.step

    def state_dict(self) -> dict:
        """The checkpoint form of this state (a collective under torchrun: every rank calls it).

        Keys: ``iteration``, ``elapsed_s``, ``model_state``, ``optimizer_state``,
        ``rng_augment``, ``rng_cpu`` (``rng_cuda`` on CUDA), ``window_loss``,
        ``window_correct``, ``window_seen``, ``window_from``, ``last_test``, the
        per-rank lists ``rng_cpu_ranks`` (``rng_cuda_ranks``), ``window_loss_ranks``,
        ``window_correct_ranks``, and with layer statistics ``window_layers`` (the same on
        every rank: they are norms of the all-reduced gradients).
        """
        cuda = self.device.type == "cuda"
        own = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None,
               float(self.sums.loss), int(self.sums.correct))
        ranks = self.dist.gather_objects(own)
        per_rank = {
            "rng_cpu": ranks[0][0],
            "rng_cpu_ranks": [r[0] for r in ranks],
            "window_loss": math.fsum(r[2] for r in ranks),
            "window_loss_ranks": [r[2] for r in ranks],
            "window_correct": sum(r[3] for r in ranks),
            "window_correct_ranks": [r[3] for r in ranks],
        }
        if cuda:
            per_rank["rng_cuda"], per_rank["rng_cuda_ranks"] = ranks[0][1], [r[1] for r in ranks]
        return {
            "iteration": self.step, "elapsed_s": self.elapsed_s,
            "model_state": self.model.state_dict(), "optimizer_state": _portable(self.optimizer.state_dict()),
            "rng_augment": self.augment.get_state().cpu(), **per_rank,
            "window_seen": self.window_seen, "window_from": self.window_from,
            "last_test": list(self.last_test),
            **({"window_layers": self.sums.layers.cpu().clone()}
               if self.sums.layers is not None else {}),
        }

    def load_state_dict(self, state: dict, saved_world_size: int = 1) -> None:
        """Continue from ``state`` (a :meth:`state_dict`, written by ``saved_world_size`` processes).

        The model's tensors must match (check with ``check_state_dict`` first for a clear
        error). The optimizer runs this device's kernel, whatever saved it. Each rank takes
        its own RNG and window where the process count is unchanged; otherwise rank 0 takes
        the single-process part and the others start fresh.
        """
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        fused = bool(self.optimizer.defaults.get("fused"))
        for group in self.optimizer.param_groups:  # this device's kernel, not the saving one's
            group["fused"], group["foreach"] = (True if fused else None), None
            if "capturable" in group:  # a captured run's Adam is capturable; this one may not be
                group["capturable"] = bool(self.optimizer.defaults.get("capturable", False))
        if fused:  # fused Adam keeps its step counts on the device, as float32
            for slot in self.optimizer.state.values():
                if torch.is_tensor(slot.get("step")):
                    slot["step"] = slot["step"].to(self.device, torch.float32)
        rng_cpu, rng_cuda, loss, correct = self._own_part(state, saved_world_size)
        if rng_cpu is not None:
            torch.set_rng_state(rng_cpu)
        if self.device.type == "cuda" and rng_cuda is not None:
            torch.cuda.set_rng_state(rng_cuda, self.device)
        self.augment.set_state(state["rng_augment"].to(self.augment.get_state().device))
        self.step = int(state["iteration"])
        self.elapsed_before = float(state["elapsed_s"])
        self.sums.loss.fill_(loss)
        self.sums.correct.fill_(correct)
        layers = state.get("window_layers")
        if self.sums.layers is not None:  # the loop turns them off for runs saved without
            if not torch.is_tensor(layers) or layers.shape != self.sums.layers.shape:
                raise ValueError("the checkpoint's layer statistics do not match the model")
            self.sums.layers.copy_(layers)
        self.window_seen, self.window_from = int(state["window_seen"]), int(state["window_from"])
        self.last_test = tuple(state["last_test"])

    def _own_part(self, state: dict, saved_world_size: int) -> tuple:
        """This rank's (CPU RNG, CUDA RNG, window loss, window correct) in ``state``."""
        rank = self.dist.rank
        if saved_world_size == self.dist.world_size and "rng_cpu_ranks" in state:
            cuda = state.get("rng_cuda_ranks")
            return (state["rng_cpu_ranks"][rank], cuda[rank] if cuda else None,
                    float(state["window_loss_ranks"][rank]), int(state["window_correct_ranks"][rank]))
        if rank == 0:  # the single-process keys: rank 0's RNG, the window summed over ranks
            return (state["rng_cpu"], state.get("rng_cuda"), float(state["window_loss"]),
                    int(state["window_correct"]))
        return None, None, 0.0, 0


def _portable(optimizer_state: dict) -> dict:
    """An optimizer state dict with plain float learning rates.

    A captured step holds each learning rate as a device tensor (:mod:`depthscape.training.graph`);
    the checkpoint stores the number, so any run (eager, another device) resumes from it.
    """
    for group in optimizer_state["param_groups"]:  # fresh dicts: the optimizer's own are untouched
        if torch.is_tensor(group.get("lr")):
            group["lr"] = float(group["lr"])
    return optimizer_state
