"""BatchNorm folded into the layer before it, for the landscape's evaluator.

In eval mode BatchNorm is the fixed affine map ``y = (x - mean) * gamma / sqrt(var + eps) +
beta``, so ``bn(conv(x, W, b)) == conv(x, W * s, (b - mean) * s + beta)`` with ``s = gamma /
sqrt(var + eps)`` exactly (up to float rounding). :func:`find_foldable_pairs` finds every
BatchNorm that directly follows a convolution (or linear layer); :class:`FoldedModel` is a
copy of the model with each such pair merged, whose :meth:`~FoldedModel.load` rewrites the
folded weights from the original model's state (a grid point changes the weights, and on a
line between two checkpoints the BatchNorm state too: a few element-wise products, far
cheaper than one forward).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class FoldPair:
    """A BatchNorm (``norm``) whose only input is the output of ``layer``."""

    layer: str
    norm: str


def find_foldable_pairs(model: nn.Module, example: torch.Tensor) -> list[FoldPair]:
    """Convolution/linear layers whose output goes straight into a BatchNorm in eval mode.

    Found by one forward pass with hooks: a BatchNorm input that is the very tensor a layer
    returned, unmodified (same version counter, so an in-place ReLU in between is seen),
    with each module called once. Running statistics must be tracked (else BatchNorm uses
    batch statistics even in eval mode and cannot be folded).
    """
    outputs: dict[int, tuple[str, torch.Tensor, int]] = {}
    calls: dict[str, int] = {}
    candidates: dict[str, str] = {}
    handles = []

    def after_layer(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (name, output, output._version)
        return hook

    def before_norm(name):
        def hook(module, inputs):
            calls[name] = calls.get(name, 0) + 1
            x = inputs[0] if inputs else None
            if not isinstance(x, torch.Tensor):
                return
            found = outputs.get(id(x))
            if found is not None and found[1] is x and found[2] == x._version:
                candidates[name] = found[0]
        return hook

    for name, module in model.named_modules():
        if isinstance(module, _FOLDABLE):
            handles.append(module.register_forward_hook(after_layer(name)))
        elif isinstance(module, _NORMS):
            handles.append(module.register_forward_pre_hook(before_norm(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: version counters are needed
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    modules = dict(model.named_modules())
    layer_uses: dict[str, int] = {}
    for layer in candidates.values():
        layer_uses[layer] = layer_uses.get(layer, 0) + 1
    pairs = []
    for norm, layer in candidates.items():
        bn = modules[norm]
        if (calls.get(norm) != 1 or calls.get(layer) != 1 or layer_uses[layer] != 1
                or bn.running_mean is None or bn.running_var is None):
            continue
        pairs.append(FoldPair(layer, norm))
    return pairs


def fold_weights(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor | None,
                 beta: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the layer equivalent to ``layer`` followed by eval-mode BatchNorm."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    folded_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    shift = -mean if bias is None else bias - mean
    folded_bias = shift * scale
    if beta is not None:
        folded_bias = folded_bias + beta
    return folded_weight, folded_bias


class FoldedModel:
    """A copy of ``model`` with each :class:`FoldPair` merged into its layer.

    :meth:`load` takes the *original* model's state (any subset of its entries, the rest
    stays as given at construction) and writes the folded weights into the copy in place.
    """

    def __init__(self, model: nn.Module, pairs: list[FoldPair]):
        self.module = copy.deepcopy(model).eval()
        self.pairs = list(pairs)
        self.base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        modules = dict(self.module.named_modules())
        self.eps = {pair.norm: float(modules[pair.norm].eps) for pair in self.pairs}
        for pair in self.pairs:
            layer = modules[pair.layer]
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                                      device=layer.weight.device))
            parent_name, _, child = pair.norm.rpartition(".")
            parent = self.module.get_submodule(parent_name) if parent_name else self.module
            setattr(parent, child, nn.Identity())
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.targets = dict(self.module.state_dict(keep_vars=True))
        # Which original entries each folded entry is made of.
        self.sources: dict[str, tuple[str, ...]] = {}
        folded_names = set()
        for pair in self.pairs:
            n = self._norm_entries(pair)
            w, b = f"{pair.layer}.weight", f"{pair.layer}.bias"
            sources = tuple(s for s in (w, b if b in self.base else None, *n.values()) if s)
            self.sources[w] = sources
            self.sources[b] = sources
            folded_names.update((w, b))
        for name in self.targets:
            if name not in folded_names:
                self.sources[name] = (name,)

    def _norm_entries(self, pair: FoldPair) -> dict[str, str]:
        entries = {}
        for key in ("weight", "bias", "running_mean", "running_var"):
            name = f"{pair.norm}.{key}"
            if name in self.base:
                entries[key] = name
        return entries

    def clone(self) -> "FoldedModel":
        """An independent copy of the folded network sharing the (read-only) base state."""
        twin = copy.copy(self)
        twin.module = copy.deepcopy(self.module)
        twin.targets = dict(twin.module.state_dict(keep_vars=True))
        return twin

    def dependents(self, changed: set[str]) -> list[str]:
        """The folded entries to rewrite when the original entries ``changed`` change."""
        return [name for name, sources in self.sources.items() if changed.intersection(sources)]

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], names: list[str] | None = None) -> None:
        """Write the folded form of ``state`` (over the construction-time state) into the copy.

        ``names`` limits the rewrite to those folded entries (see :meth:`dependents`).
        """
        def value(name):
            return state[name] if name in state else self.base[name]

        wanted = set(names) if names is not None else set(self.targets)
        for pair in self.pairs:
            w, b = f"{pair.layer}.weight", f"{pair.layer}.bias"
            if w not in wanted and b not in wanted:
                continue
            n = self._norm_entries(pair)
            folded_w, folded_b = fold_weights(
                value(w), value(b) if b in self.base else None,
                value(n["weight"]) if "weight" in n else None,
                value(n["bias"]) if "bias" in n else None,
                value(n["running_mean"]), value(n["running_var"]), self.eps[pair.norm])
            self.targets[w].copy_(folded_w)
            self.targets[b].copy_(folded_b)
        for name in wanted:
            if self.sources[name] == (name,):
                self.targets[name].copy_(value(name))


def build_folded_model(model: nn.Module, example: torch.Tensor) -> FoldedModel:
    """Find the foldable pairs of ``model`` (see :func:`find_foldable_pairs`) and fold them."""
    folded = FoldedModel(model, find_foldable_pairs(model, example))
    folded.load({})
    return folded
