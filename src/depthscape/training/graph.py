"""The training step captured once as one CUDA graph and replayed (CUDA only).

What is captured is exactly :func:`depthscape.training.step.make_train_step`'s step:
forward (under the fast path's autocast), loss, backward, the optimizer update and the
metric sums on the device. The graph reads its batch from static input tensors; the loop
writes each batch into them (after the on-device gather, crop/flip and normalisation)
and replays the graph, so a step costs one copy and one launch instead of hundreds.

Capture follows the PyTorch recipe for whole-network capture: a few warm-up steps on a
side stream (cuDNN picks its algorithms, the optimizer creates its state, autocast fills
its cache), then ``torch.cuda.graph``. The warm-up steps are real updates, so every
tensor they change (weights, BatchNorm statistics, optimizer state, metric sums, the
CUDA RNG of dropout) is saved before and copied back in place afterwards: the first
replay is the run's next step, exactly as if nothing had happened (fresh optimizer state
is zeroed, which equals the fresh state for SGD with momentum and for Adam).

The learning rate must change without a re-capture: it becomes a float32 device tensor
in every param group (the fused SGD/Adam kernels and ``capturable`` Adam read it on the
device), and :func:`depthscape.training.step.set_learning_rate` updates it with ``fill_``.

Dropout inside the graph draws from the default CUDA generator, which PyTorch registers
with the graph: each replay advances its offset, so ``torch.cuda.get_rng_state`` saved
in a checkpoint and restored on resume continues the same stream.

A capture that fails (an op that cannot be captured, an optimizer that syncs) leaves the
run on the eager step with a one-line notice naming the reason, never a crash mid-run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from depthscape.training.fastpath import FastPath
from depthscape.training.step import MetricSums, TrainStep

#: Warm-up steps on a side stream before capture (the PyTorch docs use three; DDP needs 11).
WARMUP_STEPS = 3


class CapturedStep:
    """A train step captured as one CUDA graph: ``step(x, y)`` copies the batch into the
    graph's static inputs and calls ``replay`` (the graph's). The eager step it came from
    stays usable as ``eager``; ``graph`` keeps the graph (and its memory pool) alive."""

    def __init__(self, replay: Callable[[], None], static_x: torch.Tensor, static_y: torch.Tensor,
                 eager: TrainStep, graph: object = None):
        self.replay, self.static_x, self.static_y = replay, static_x, static_y
        self.eager, self.graph = eager, graph

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.replay()


def use_tensor_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Hold each param group's learning rate as a float32 tensor on ``device`` (in place).

    Adam is made ``capturable``: its ``step()`` refuses a capture otherwise (fused or not),
    and the unfused kernel then keeps its step counts on the device. Its warning about a
    capturable optimizer stepping outside a graph is silenced: the warm-up and an epoch's
    smaller last batch do that on purpose. Fused SGD takes a tensor learning rate as it is.
    """
    for group in optimizer.param_groups:
        lr = group["lr"]
        group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        if "capturable" in group:
            group["capturable"] = True
            optimizer._warned_capturable_if_run_uncaptured = True


def use_float_lr(optimizer: torch.optim.Optimizer) -> None:
    """Undo :func:`use_tensor_lr`: plain Python learning rates (the eager path's)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False


@dataclass
class StateSnapshot:
    """Copies of every tensor a warm-up step changes, to put back in place after capture."""

    model: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]
    sums: tuple[torch.Tensor, torch.Tensor]
    rng_cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer, sums: MetricSums,
             device: torch.device) -> StateSnapshot:
        saved_optimizer = {id(p): {k: v.detach().clone() for k, v in slot.items() if torch.is_tensor(v)}
                           for p, slot in optimizer.state.items()}
        return cls({k: v.detach().clone() for k, v in model.state_dict().items()}, saved_optimizer,
                   (sums.loss.clone(), sums.correct.clone()),
                   torch.cuda.get_rng_state(device) if device.type == "cuda" else None, device)

    @torch.no_grad()
    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, sums: MetricSums) -> None:
        """Copy the saved values back into the same tensors (the graph holds their addresses)."""
        for key, tensor in model.state_dict().items():
            tensor.copy_(self.model[key])
        for param, slot in optimizer.state.items():
            saved = self.optimizer.get(id(param), {})
            for key, value in slot.items():
                if not torch.is_tensor(value):
                    continue
                if key in saved:
                    value.copy_(saved[key])
                else:  # state the warm-up created is zeroed: equal to a fresh state
                    value.zero_()
        sums.loss.copy_(self.sums[0])
        sums.correct.copy_(self.sums[1])
        if self.rng_cuda is not None:
            torch.cuda.set_rng_state(self.rng_cuda, self.device)


def capture_step(step: TrainStep, model: nn.Module, optimizer: torch.optim.Optimizer,
                 sums: MetricSums, example_x: torch.Tensor, example_y: torch.Tensor,
                 warmup: int = WARMUP_STEPS) -> CapturedStep:
    """Capture ``step`` (built over ``model``, ``optimizer`` and ``sums``) as one CUDA graph.

    ``example_x``/``example_y`` give the static inputs' shape, dtype and memory layout (and
    the warm-up's data). Every state the warm-up changes is restored afterwards, so the
    run continues exactly where it was. The optimizer must already hold a tensor learning
    rate (:func:`use_tensor_lr`). Raises whatever the capture raises; see
    :func:`capture_or_eager` for the fallback.
    """
    device = example_x.device
    static_x = torch.empty_like(example_x)  # keeps the memory layout (channels-last)
    static_y = torch.empty_like(example_y)
    static_x.copy_(example_x)
    static_y.copy_(example_y)
    snapshot = StateSnapshot.take(model, optimizer, sums, device)
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step(static_x, static_y)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # backward allocates .grad from the graph's pool
        with torch.cuda.graph(graph):
            step(static_x, static_y)
        torch.cuda.synchronize(device)
    finally:
        snapshot.restore(model, optimizer, sums)
    return CapturedStep(graph.replay, static_x, static_y, step, graph)


#: The capture function :func:`capture_or_eager` calls (tests replace it to force a failure).
CAPTURE: Callable[..., CapturedStep] = capture_step


def capture_or_eager(steps: dict[int, TrainStep], batch: int, model: nn.Module,
                     optimizer: torch.optim.Optimizer, sums: MetricSums, example_x: torch.Tensor,
                     example_y: torch.Tensor) -> tuple[dict[int, TrainStep], str | None]:
    """``steps`` with the step of the full ``batch`` captured, and a notice (or None).

    Only the full batch is captured: an epoch recipe's smaller last batch keeps its eager
    step (the same optimizer and sums, just not replayed). Where the capture fails, the
    steps come back unchanged with float learning rates and a one-line notice naming why.
    """
    use_tensor_lr(optimizer, example_x.device)
    try:
        captured = CAPTURE(steps[batch], model, optimizer, sums, example_x, example_y)
    except Exception as error:  # any failure to capture: run eager rather than crash
        use_float_lr(optimizer)
        optimizer.zero_grad(set_to_none=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return steps, f"CUDA graph capture failed ({type(error).__name__}: {reason[:160]}); running eager"
    return {**steps, batch: captured}, None


def graph_allowed(fast: FastPath, distributed: bool) -> tuple[FastPath, str | None]:
    """``fast`` with the captured step turned off where it cannot run here, and a notice.

    Under torchrun the step runs eager: DistributedDataParallel's bucketed all-reduce can
    be captured only with settings this loop does not make, so it is not attempted.
    ``torch.compile`` makes graphs of its own, so with ``--compile`` the step is not
    captured a second time.
    """
    if not fast.cuda_graph:
        return fast, None
    if distributed:
        return replace(fast, cuda_graph=False), ("--cuda-graph: under torchrun the step runs eager "
                                                 "(no capture of DistributedDataParallel)")
    if fast.compile:
        return replace(fast, cuda_graph=False), ("--cuda-graph: with --compile the step runs "
                                                 "compiled, not captured")
    return fast, None
