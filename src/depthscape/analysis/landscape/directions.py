"""Directions in parameter space: seeded random Gaussian, filter- or layer-normalised.

A direction is an ordered ``{name: tensor}`` dict keyed like the model's ``state_dict``.

* :func:`random_direction` (Li et al., "Visualizing the Loss Landscape of Neural Nets"):
  one Gaussian tensor per parameter with two or more dimensions, rescaled so that each
  output filter (``norm="filter"``) or each whole tensor (``norm="layer"``) has the norm of
  the same filter/tensor of the trained weights. Parameters with one dimension (biases,
  BatchNorm weights and biases) get zero, and BatchNorm's running statistics are buffers,
  never perturbed: BatchNorm is skipped entirely.
* :func:`interpolation_direction`: ``theta_target - theta`` over every floating-point
  entry of the state (BatchNorm statistics included), so ``theta + 1 * d`` *is* the target.
"""

from __future__ import annotations

import torch
from torch import nn

from depthscape.core.errors import UserError

NORMS = ("filter", "layer")

#: Keeps a zero filter of the random direction from dividing by zero (as the original tool).
_EPS = 1e-10


def normalize_direction(direction: torch.Tensor, weight: torch.Tensor, norm: str = "filter"
                        ) -> torch.Tensor:
    """Rescale ``direction`` to the norm of ``weight``, per output filter or per tensor.

    ``norm="filter"``: for every slice ``i`` along dimension 0 (an output filter of a
    convolution, a row of a linear layer), ``d[i] * ||w[i]|| / ||d[i]||``.
    ``norm="layer"``: ``d * ||w|| / ||d||``. Returns a new tensor.
    """
    if norm == "filter":
        d_norm = direction.flatten(1).norm(dim=1)
        w_norm = weight.flatten(1).norm(dim=1)
        scale = (w_norm / (d_norm + _EPS)).view(-1, *([1] * (direction.dim() - 1)))
        return direction * scale
    if norm == "layer":
        return direction * (weight.norm() / (direction.norm() + _EPS))
    raise UserError(f"unknown direction normalisation {norm!r}: choose one of {', '.join(NORMS)}")


def random_direction(model: nn.Module, generator: torch.Generator, norm: str = "filter"
                     ) -> dict[str, torch.Tensor]:
    """One random direction for ``model``'s parameters, drawn from ``generator`` (CPU).

    Only parameters with two or more dimensions draw random numbers (in ``named_parameters``
    order); one-dimensional ones get zeros. Tensors come back on the CPU in float32.
    """
    direction = {}
    for name, weight in model.named_parameters():
        weight = weight.detach().to("cpu", torch.float32)
        if weight.dim() <= 1:
            direction[name] = torch.zeros_like(weight)
            continue
        noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
        direction[name] = normalize_direction(noise, weight, norm)
    return direction


def random_directions(model: nn.Module, count: int = 2, seed: int = 0, norm: str = "filter"
                      ) -> list[dict[str, torch.Tensor]]:
    """``count`` random directions from one generator seeded with ``seed``.

    The same model, seed and norm give the same directions on every machine: the numbers
    are drawn on the CPU in a fixed order, whatever device the model lives on.
    """
    if norm not in NORMS:
        raise UserError(f"unknown direction normalisation {norm!r}: choose one of {', '.join(NORMS)}")
    generator = torch.Generator().manual_seed(seed)
    return [random_direction(model, generator, norm) for _ in range(count)]


def interpolation_direction(start: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                            ) -> dict[str, torch.Tensor]:
    """``target - start`` over every floating-point entry of two state dicts.

    Integer entries (BatchNorm's ``num_batches_tracked``) are left out: they do not enter
    the forward pass. The two states must hold the same tensors with the same shapes, and
    differ somewhere (else the line is one point, and its plot a flat line that says nothing).
    """
    direction = {}
    extra = [name for name, value in target.items() if value.is_floating_point() and name not in start]
    if extra:
        raise UserError(f"the two checkpoints differ in tensor {extra[0]!r}: they must be of the "
                        "same architecture to draw the line between them")
    for name, value in start.items():
        if not value.is_floating_point():
            continue
        if name not in target or tuple(target[name].shape) != tuple(value.shape):
            raise UserError(f"the two checkpoints differ in tensor {name!r}: they must be of the "
                            "same architecture to draw the line between them")
        direction[name] = target[name].detach().to("cpu", torch.float32) - \
            value.detach().to("cpu", torch.float32)
    if not any(bool(delta.any()) for delta in direction.values()):
        raise UserError("the target's weights equal the checkpoint's: the line between them is "
                        "a single point (give the checkpoint of another run or iteration)")
    return direction
