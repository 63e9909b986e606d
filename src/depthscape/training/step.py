"""One training step: one batch in, one optimizer update out, metrics summed on the device.

:func:`make_train_step` builds the step once per run (and per batch size), with every
choice made outside it: the loss reduction (:func:`make_loss`: a mean alone, a scaled sum
under DistributedDataParallel), the autocast context of the fast path, the metric sums
it adds to. The step itself has no Python branching, reads nothing back to the host and
sees only tensors of a fixed shape, so it can be timed alone, tested alone and captured
as one CUDA graph. The learning rate is set before the call (:func:`set_learning_rate`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.training.layerstats import LayerStats, NoLayerStats

#: ``loss_fn(logits, labels) -> (loss to differentiate, this batch's summed loss as float64)``.
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
TrainStep = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class MetricSums:
    """Training loss and correct predictions summed on the device since the last log row,
    and where layer statistics are kept (:mod:`depthscape.training.layerstats`) their
    per-layer sums, ``(3, layers)``."""

    loss: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))
    layers: torch.Tensor | None = None

    @classmethod
    def on(cls, device: torch.device | str, layers: int = 0) -> MetricSums:
        """Zero sums on ``device`` (with per-layer sums for ``layers`` layers, if any)."""
        return cls(torch.zeros((), dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.int64, device=device),
                   torch.zeros(3, layers, dtype=torch.float64, device=device) if layers else None)

    def tensors(self) -> list[torch.Tensor]:
        """Every sum tensor (what a captured step's warm-up must put back)."""
        return [self.loss, self.correct] + ([self.layers] if self.layers is not None else [])

    def zero_(self) -> None:
        """Start a new window (in place: a captured step keeps adding to the same tensors)."""
        for tensor in self.tensors():
            tensor.zero_()


def make_loss(world_size: int = 1, global_batch: int = 1) -> LossFn:
    """The cross-entropy reduction for ``world_size`` processes sharing a ``global_batch``.

    Alone: the batch mean (as ``F.cross_entropy``). Under DistributedDataParallel, which
    averages gradients over ranks, each rank's sum times ``world_size / global_batch``,
    so the update is that of the global batch's mean even where the shards differ in size.
    """
    if world_size == 1:
        def mean_loss(logits: torch.Tensor, labels: torch.Tensor):
            loss = F.cross_entropy(logits, labels)
            return loss, loss.detach().double() * labels.shape[0]
        return mean_loss
    scale = world_size / global_batch

    def scaled_sum_loss(logits: torch.Tensor, labels: torch.Tensor):
        total = F.cross_entropy(logits, labels, reduction="sum")
        return total * scale, total.detach().double()
    return scaled_sum_loss


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Use ``lr`` for the next step (the recipe's schedule is a pure function of the step).

    A learning rate held as a device tensor (a captured step reads it there) is updated in
    place, so the graph sees the new value without a re-capture.
    """
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def make_train_step(net: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                    sums: MetricSums,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    layers: LayerStats | NoLayerStats | None = None) -> TrainStep:
    """``step(x, y)``: forward, loss, backward and update of ``net`` on one batch.

    ``x`` is the model input as the net takes it (preprocessed, augmented, in the fast
    path's memory layout), ``y`` the labels. The step adds the batch's summed loss and
    correct predictions to ``sums`` on the device, and ``layers`` (gradient flow:
    :class:`~depthscape.training.layerstats.LayerStats`, None: off) its per-layer norms
    around the update; nothing is read back.
    """
    layers = layers if layers is not None else NoLayerStats()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast():
            logits = net(x)
            loss, loss_sum = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        layers.before_update()
        optimizer.step()
        layers.after_update()
        with torch.no_grad():
            sums.loss += loss_sum
            sums.correct += (logits.argmax(1) == y).sum()
    return step
