"""Gradient flow while training: per layer, the gradient's and the weights' L2 norms and the
update-to-weight ratio, summed on the device at every step and read once per log row.

For every parameterised layer (:func:`depthscape.core.layers.parameterised_layers`: each
convolution and linear layer, each BatchNorm as a row of its own) a step adds, between
``backward`` and the optimizer's update (:meth:`LayerStats.before_update`) and after it
(:meth:`LayerStats.after_update`):

* ``grad_norm``: ``||g||`` of the layer's loss gradient (all its parameters together), as
  the optimizer receives it (under torchrun: the all-reduced gradient, so every rank adds
  the same numbers);
* ``weight_norm``: ``||w||`` after the update;
* ``update_ratio``: ``||w_after - w_before|| / ||w_after||`` (learning rate, momentum and
  weight decay included: the step the optimizer took).

The sums live in :attr:`MetricSums.layers <depthscape.training.step.MetricSums>` (a
``(3, layers)`` float64 tensor beside the loss and accuracy sums), so they belong to the
metric window: zeroed with it, saved in resumable checkpoints with it, restored after a
CUDA graph's warm-up with it. Everything is ``torch._foreach_*`` and indexed adds on the
device: no host read per step, and a captured step records them too. A log row divides by
the window's step count (:func:`layer_rows`).
"""

from __future__ import annotations

import torch
from torch import nn

from depthscape.core.layers import Layer, parameterised_layers

#: The columns of ``logs/<run>_layers.csv``: one row per layer per log row.
LAYER_COLUMNS = ("iteration", "layer_index", "layer", "stage", "grad_norm", "weight_norm",
                 "update_ratio")


class LayerStats:
    """The per-layer sums of one model's steps, added into ``sums`` (a ``(3, layers)``
    float64 tensor on the model's device: grad norms, weight norms, update ratios)."""

    def __init__(self, model: nn.Module, sums: torch.Tensor):
        self.layers: list[Layer] = parameterised_layers(model)
        self.params = [p for layer in self.layers for p in layer.params]
        device = self.params[0].device if self.params else torch.device("cpu")
        # which layer each parameter belongs to: their squared norms add up per layer
        self.owner = torch.tensor([layer.index for layer in self.layers for _ in layer.params],
                                  dtype=torch.long, device=device)
        self.before = [torch.empty_like(p) for p in self.params]  # w before the update
        self.sums = sums

    def _per_layer(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Each layer's L2 norm over its parameters' tensors, as float64."""
        squares = torch.stack(torch._foreach_norm(tensors)).double() ** 2
        total = torch.zeros(len(self.layers), dtype=torch.float64, device=squares.device)
        return total.index_add_(0, self.owner, squares).sqrt()

    @torch.no_grad()
    def before_update(self) -> None:
        """After ``backward``, before the optimizer's step: the gradient norms, and the
        weights as they are (to measure the step)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self.sums[0] += self._per_layer(grads)
        torch._foreach_zero_(self.before)  # a copy, with foreach ops every torch >= 2.1 has
        torch._foreach_add_(self.before, self.params)

    @torch.no_grad()
    def after_update(self) -> None:
        """After the optimizer's step: the weight norms and the update-to-weight ratios."""
        weights = self._per_layer(self.params)
        torch._foreach_sub_(self.before, self.params)  # now w_before - w_after
        moved = self._per_layer(self.before)
        self.sums[1] += weights
        self.sums[2] += moved / weights.clamp_min(torch.finfo(torch.float64).tiny)


class NoLayerStats:
    """What a step calls where layer statistics are off: nothing."""

    layers: list[Layer] = []

    def before_update(self) -> None:
        pass

    def after_update(self) -> None:
        pass


def layer_rows(layers: list[Layer], sums: torch.Tensor, steps: int, iteration: int) -> list[list]:
    """The layer file's rows for one log row: the window's means over its ``steps`` steps
    (one host read of the sums)."""
    means = (sums / max(1, steps)).tolist()
    return [[iteration, layer.index, layer.name, layer.stage, means[0][i], means[1][i],
             means[2][i]] for i, layer in enumerate(layers)]


def layer_count(model: nn.Module) -> int:
    """How many rows one log row of ``model`` adds to its layer file."""
    return len(parameterised_layers(model))
