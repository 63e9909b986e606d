"""A model's parameterised layers in depth order, and the stage each belongs to.

One row per module that holds trainable parameters of its own (each convolution and linear
layer; each BatchNorm, whose weight and bias are a row of their own), in the order
``named_modules`` walks them, which is the forward order for the study's models. The
stage is the top-level part of the model the layer sits in: the top-level containers by
their names (a ResNet's ``layer1``..``layer3``, the CNN's ``features`` and ``classifier``),
top-level layers before the first container ``stem``, after it ``head`` (in a model with no
containers each top-level layer is its own stage). Gradient flow
(:mod:`depthscape.training.layerstats`) and per-block Hessians read the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layer:
    """One parameterised layer of a model."""

    index: int  # 0-based, in depth order
    name: str  # the module's path, e.g. ``layer2.0.conv1``
    kind: str  # the module's class, e.g. ``Conv2d``
    stage: str  # ``stem``, a top-level container's name, or ``head``
    params: tuple[nn.Parameter, ...]

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)


def parameterised_layers(model: nn.Module) -> list[Layer]:
    """Every module of ``model`` holding trainable parameters of its own, in depth order,
    with its stage (see the module's docstring). A model with none gives ``[]``."""
    order = [name for name, _ in model.named_children()]
    containers = [name for name, child in model.named_children()
                  if any(True for _ in child.children())]
    first = order.index(containers[0]) if containers else None
    layers = []
    for name, module in model.named_modules():
        params = tuple(p for p in module.parameters(recurse=False) if p.requires_grad)
        if not params:
            continue
        top = name.split(".")[0]
        if not name:  # the model itself holds parameters (a bare nn.Linear)
            stage = "model"
        elif top in containers or first is None:  # no containers: each layer its own stage
            stage = top
        else:
            stage = "stem" if order.index(top) < first else "head"
        layers.append(Layer(len(layers), name or type(module).__name__, type(module).__name__,
                            stage, params))
    return layers


def stages(layers: list[Layer]) -> list[str]:
    """The stages of ``layers``, in depth order, each once."""
    return list(dict.fromkeys(layer.stage for layer in layers))
