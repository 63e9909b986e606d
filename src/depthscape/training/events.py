"""The events of a training run between steps, and the result a run ends with.

:class:`RunEvents` is the part of the loop's run (``depthscape.training.loop._Run``)
that runs after each step: which events are due (:meth:`RunEvents.due`), the one sync
point where the metric window is summed over ranks and checked (``sync_window``,
``check_finite``), then ``evaluate``, ``log_row``, ``save_checkpoint``, and ``stop`` or
``finish``, which return the :class:`TrainResult`. The progress bar they update is
opened by :meth:`RunEvents.progress`.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from depthscape.core.data import Dataset, Preprocess, Split
from depthscape.core.distributed import DistContext
from depthscape.core.errors import TrainingDiverged, UserError
from depthscape.core.recipe import Recipe
from depthscape.core.runs import RunPaths
from depthscape.training.config import TrainConfig
from depthscape.training.evaluation import evaluate_sums, mean_metrics
from depthscape.training.fastpath import FastPath
from depthscape.training.layerstats import LayerStats, layer_rows
from depthscape.training.runfiles import RunFiles, write_trace
from depthscape.training.snapshots import SnapshotWriter
from depthscape.training.state import TrainState


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    paths: RunPaths
    iteration: int
    finished: bool
    train_loss: float = math.nan
    train_acc: float = math.nan
    test_loss: float = math.nan
    test_acc: float = math.nan
    elapsed_s: float = 0.0
    rows: list[dict] = field(default_factory=list)


class Window(NamedTuple):
    """The metric window summed over ranks at a sync point, and whether the ranks stop."""

    loss: float
    correct: int
    stop: bool


class Due(NamedTuple):
    """The events due after one step."""

    evaluate: bool
    log: bool
    checkpoint: bool
    stop_after: bool


class RunEvents:
    """The events between steps of one run; the loop's ``_Run`` sets up what they use."""

    config: TrainConfig
    recipe: Recipe
    model_name: str
    model_kwargs: dict
    dataset: Dataset
    dist: DistContext
    fast: FastPath
    paths: RunPaths
    files: RunFiles
    preprocess: Preprocess
    settings: dict
    train_split: Split
    test_split: Split
    total_steps: int
    epoch_steps: int
    log_every: int
    eval_every: int
    state: TrainState
    snapshots: SnapshotWriter
    rows: list[dict]
    last_saved: int | None  # the step of the last checkpoint on disk
    log_rows: int  # rows in the log (a resumed run's earlier ones included)
    trace: list[torch.Tensor] | None  # the batch trace (TRACE_ENV), None where off
    layer_stats: LayerStats | None  # gradient flow, None where off

    @contextmanager
    def progress(self):
        """The progress bar over the loop; the batch trace is written when the loop ends."""
        self.bar = tqdm(total=self.total_steps, initial=self.state.step, unit="it",
                        disable=not (self.config.progress and self.dist.is_main),
                        desc=self.paths.run_name, dynamic_ncols=True, mininterval=0.5)
        self.rate_since, self.rate_images = time.perf_counter(), 0
        try:
            yield self.bar
        finally:
            self.bar.close()
            if self.trace is not None:
                write_trace(self.trace, self.paths.run_name, self.dist.rank)

    # ---- events between steps ----------------------------------------------------------

    def due(self) -> Due:
        """Which events the step just done calls for."""
        step, last, by_epoch = self.state.step, self.state.step == self.total_steps, self.recipe.unit == "epoch"
        epoch_end = step % self.epoch_steps == 0 or last
        stop_after = self.config.stop_after
        return Due(evaluate=step % self.eval_every == 0 or last or (by_epoch and epoch_end),
                   log=epoch_end if by_epoch else (step % self.log_every == 0 or last),
                   checkpoint=not last and step % self.config.checkpoint_every == 0,
                   stop_after=stop_after is not None and step >= stop_after)

    def after_step(self, lr: float, images: int, signalled: bool) -> Window | None:
        """Run the events due after a step over ``images`` images; the window summed over
        ranks where the step was a sync point (None where it was not)."""
        self.bar.update(1)
        self.rate_images += images
        self.snapshots.maybe_add(self.state.step, self.state.model)
        due = self.due()
        if not (any(due) or self.dist.signal_acts_alone(signalled)):
            return None
        # The one sync point: under torchrun every rank reaches it at the same steps.
        window = self.sync_window(signalled)
        if due.evaluate:
            self.check_finite(window)
            self.evaluate()
        if due.log:
            self.check_finite(window)
            self.log_row(window, lr)
        if self.state.step < self.total_steps and (due.checkpoint or self.stopping(window)):
            self.check_finite(window)
            self.save_checkpoint()
        return window

    def stopping(self, window: Window | None) -> bool:
        """Whether the run stops (resumably) after this step: ``stop_after`` or an agreed signal."""
        return (window is not None and self.state.step < self.total_steps
                and (window.stop or self.due().stop_after))

    def sync_window(self, signalled: bool) -> Window:
        """The window's sums over all ranks, and whether any rank got a stop signal.

        One all-reduce of three numbers (alone: one read of the device sums); each rank
        keeps its own window, so the sums and their rounding do not depend on where a run
        was stopped and resumed.
        """
        sums = self.state.sums
        packed = torch.stack([sums.loss, sums.correct.double(),
                              torch.tensor(float(signalled), dtype=torch.float64, device=sums.loss.device)])
        loss, correct, stop = self.dist.all_sum(packed).tolist()
        return Window(loss, int(correct), stop > 0)

    def check_finite(self, window: Window) -> None:
        """Raise TrainingDiverged where the window's loss is not finite (the checkpoint is kept)."""
        if not math.isfinite(window.loss):
            where = (f"last good checkpoint kept: {self.paths.resume} (iteration {self.last_saved})"
                     if self.last_saved is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"training diverged: non-finite loss in iterations {self.state.window_from + 1}-"
                f"{self.state.step} of {self.model_name}; {where}")

    def evaluate(self) -> None:
        """Test loss and accuracy; under torchrun each rank evaluates a slice (rank 0's weights)."""
        model = self.state.model
        self.dist.broadcast_buffers(model)  # BatchNorm statistics as rank 0 (and its checkpoint) has them
        lo, hi = self.dist.shard(len(self.test_split))
        part = Split(self.test_split.images[lo:hi], self.test_split.labels[lo:hi])
        with self.fast.autocast():
            batch = self.config.eval_batch_size or (5000 if self.dist.device.type == "cuda" else 1000)
            sums = evaluate_sums(model, part, self.preprocess, batch, prepare=self.fast.prepare_input)
        self.state.last_test = mean_metrics(self.dist.all_sum(sums))

    def log_row(self, window: Window, lr: float) -> None:
        """Write one CSV row of the window's training metrics and the last test result."""
        state = self.state
        seen = max(1, state.window_seen)
        train_loss, train_acc = window.loss / seen, 100.0 * window.correct / seen
        test_loss, test_acc = state.last_test
        row = {"iteration": state.step, "epoch": self.epoch_of_row(), "lr": lr,
               "train_loss": train_loss, "train_acc": train_acc, "train_err": 100.0 - train_acc,
               "test_loss": test_loss, "test_acc": test_acc, "test_err": 100.0 - test_acc,
               "elapsed_s": round(state.elapsed_s, 3)}
        self.files.append_row(row)
        if self.layer_stats is not None:  # gradient flow: one read of the window's sums
            self.files.append_layer_rows(layer_rows(
                self.layer_stats.layers, state.sums.layers, state.step - state.window_from,
                state.step))
        self.rows.append(row)
        self.log_rows += 1
        now = time.perf_counter()
        self.bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.1f}", test=f"{test_acc:.1f}",
                             lr=f"{lr:.2g}", ips=f"{self.rate_images / max(now - self.rate_since, 1e-9):.0f}")
        self.rate_since, self.rate_images = now, 0
        state.reset_window()

    def epoch_of_row(self) -> float:
        """The epoch column: whole epochs (epoch recipes) or the fraction of data seen."""
        step = self.state.step
        if self.recipe.unit == "epoch":
            return float(math.ceil(step / self.epoch_steps))
        return round(step * self.recipe.batch_size / len(self.train_split), 4)

    def run_record(self) -> dict:
        """What every checkpoint of the run carries besides the weights: name, shape, settings."""
        return {"model": self.model_name, "model_kwargs": self.model_kwargs, "config": self.settings}

    def save_checkpoint(self) -> None:
        """Save the resumable checkpoint (a collective: every rank's RNG and window go in it)."""
        payload = self.state.state_dict()
        self.snapshots.flush()  # never ahead of the checkpoint
        self.files.save_resume({**self.run_record(), **payload, "log_rows": self.log_rows})
        self.last_saved = self.state.step

    def stop(self, window: Window) -> TrainResult:
        """End a stopped run once its checkpoint is on disk: an interrupt is a UserError."""
        self.dist.barrier()  # the checkpoint is on disk before any rank leaves
        if window.stop:  # signals count only where every rank agreed on them
            raise UserError(f"interrupted at iteration {self.state.step}; the run is saved in "
                            f"{self.paths.resume}: rerun with --resume to continue", exit_code=130)
        return TrainResult(self.paths, self.state.step, False, rows=self.rows,
                           elapsed_s=self.state.elapsed_s)

    def finish(self) -> TrainResult:
        """Save the final weights and metrics (rank 0), drop the resume file, return the result."""
        state = self.state
        last = self.rows[-1] if self.rows else {}
        metrics = {"train_loss": last.get("train_loss", math.nan),
                   "train_acc": last.get("train_acc", math.nan),
                   "test_loss": state.last_test[0], "test_acc": state.last_test[1],
                   "elapsed_s": state.elapsed_s}
        self.snapshots.flush()
        self.files.save_final({**self.run_record(), "iteration": state.step, "metrics": metrics,
                               "state_dict": state.model.state_dict()})
        self.dist.barrier()  # the final weights are on disk before any rank returns
        return TrainResult(self.paths, state.step, True, rows=self.rows, **metrics)
