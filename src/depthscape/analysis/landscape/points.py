"""Fast loss/accuracy at one point ``theta + sum_i c_i d_i`` of parameter space.

Why it is fast:

* the evaluation split is normalised once and held on the device as one float tensor
  (channels-last on the CPU, where oneDNN's convolutions prefer it);
* batches are large, under ``torch.inference_mode``; loss and correct counts accumulate
  on the device and are read back once per grid point, never per batch;
* every BatchNorm that directly follows a convolution (or linear layer) is folded into it.
  In eval mode BatchNorm is the fixed affine map ``y = (x - mean) * gamma / sqrt(var + eps)
  + beta``, so ``bn(conv(x, W, b)) == conv(x, W * s, (b - mean) * s + beta)`` with ``s =
  gamma / sqrt(var + eps)`` exactly (up to float rounding). A grid point changes the
  weights (and, on a line between two checkpoints, the BatchNorm state too), so the fold is
  recomputed for each point: a few element-wise products, far cheaper than one forward;
* optionally the folded network goes through ``torch.compile``.

The fold is verified once against the unfolded model on a slice of the data; if they do
not agree (an architecture where a convolution's output also feeds something else) the
evaluator falls back to the unfolded model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.core.data import Preprocess, Split
from depthscape.core.errors import UserError
from depthscape.core.runtime import autocast, tf32_scope

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: Largest batch on the CPU. Batches this small keep a ResNet's activations near the
#: cache; measured faster per image than batches of 1,000 there (GPUs take the batch as given).
CPU_BATCH = 128

#: Normalised inputs up to this many bytes are precomputed once; larger splits (e.g. the
#: whole training set on a small GPU) are normalised batch by batch instead.
_PRECOMPUTE_BYTES = 2 * 1024**3


def full_float32(tf32: bool = False):
    """Convolutions and matrix products in full float32 (no TF32 on NVIDIA GPUs) inside the
    block; ``tf32=True`` turns TF32 on instead (``--precision tf32``). See
    :func:`depthscape.core.runtime.tf32_scope`."""
    return tf32_scope(tf32)


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


def effective_batch_size(batch_size: int, device: torch.device | str) -> int:
    """The batch a :class:`PointEvaluator` uses: as asked on a GPU, at most CPU_BATCH on the CPU.

    Values differ in their last digits between batch sizes (a convolution's arithmetic
    depends on the batch's shape), so a surface records this in its identity.
    """
    return int(batch_size) if torch.device(device).type != "cpu" else min(int(batch_size), CPU_BATCH)


def has_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``outputs`` vs ``targets`` is a classification with an accuracy: integer
    class labels, one per sample, and one score per class in the outputs' last dimension."""
    return (not targets.is_floating_point() and not targets.is_complex() and targets.dim() == 1
            and outputs.dim() == 2 and outputs.shape[0] == targets.shape[0])


class PointEvaluator:
    """Loss and accuracy of ``model`` at ``theta + sum_i c_i d_i`` on one split.

    ``directions`` are dicts keyed like ``model.state_dict()`` (entries missing or all zero
    are not perturbed). BatchNorm runs in eval mode with the stored running statistics.

    ``preprocess`` turns the split's uint8 images into model input; ``None`` takes the
    split's ``images`` as the model's input as they are (any float tensor, e.g. a user's own
    data) and its ``labels`` as any targets. ``loss_fn`` (``None``: cross-entropy, the CLI's)
    is any ``(outputs, targets) -> mean loss of the batch``; the point's loss is the
    sample-weighted mean of its batches' values. Accuracy is measured where the targets are
    class labels (see :func:`has_accuracy`; always with the default loss) and is NaN
    otherwise (``self.accuracy`` False).
    """

    def __init__(self, model: nn.Module, directions: list[dict[str, torch.Tensor]], split: Split,
                 preprocess: Preprocess | None, batch_size: int = 1000,
                 device: torch.device | None = None, fold: bool = True, compile: bool = False,
                 channels_last: bool | None = None, precision: str = "fp32",
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.device = device
        # fp32 (exact, TF32 off), tf32 (CUDA) or bf16 (autocast, channels-last): as the caller
        # resolved it for this device (core.runtime.resolve_precision)
        self.precision = precision
        self.batch_size = effective_batch_size(batch_size, device)
        self.compiled = compile
        model = copy.deepcopy(model).to(device).eval()
        if channels_last is None:
            channels_last = device.type == "cpu" or self.precision == "bf16"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.labels = split.labels.to(device)
        self.count = len(split)
        if self.count == 0:
            raise UserError("the evaluation split holds no samples")
        self.preprocess = preprocess
        self.base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.directions = []
        for direction in directions:
            kept = {name: d.to(device, self.base[name].dtype) for name, d in direction.items()
                    if name in self.base and bool(d.ne(0).any())}
            self.directions.append(kept)
        self.perturbed = sorted({name for d in self.directions for name in d})

        self.loss_fn = loss_fn
        images = split.images.to(device)
        what = "images" if preprocess is not None else "inputs"
        try:
            precompute = self.count * images[0].numel() * 4 <= _PRECOMPUTE_BYTES
            self.inputs = self._normalize(images) if precompute else None
            self.images = None if precompute else images
            example = self._batch(0, min(self.count, 64))
            with torch.no_grad(), full_float32():
                reference = model(example)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0][:200]
            raise UserError(f"the model cannot read this data ({tuple(images.shape[1:])} {what}): "
                            f"{first}") from None
        if not isinstance(reference, torch.Tensor):
            raise UserError(f"the model returns a {type(reference).__name__}, not a tensor: wrap it "
                            "so it returns one (depthscape.select_output(model, key))")
        self.accuracy = loss_fn is None or has_accuracy(reference, self.labels[:len(reference)])
        if loss_fn is None or self.accuracy:
            classes = int(reference.shape[-1])
            if int(self.labels.min()) < 0 or int(self.labels.max()) >= classes:
                raise UserError(f"the data has labels up to {int(self.labels.max())}, but the "
                                f"model predicts {classes} classes: is this the data it was "
                                "trained on?")
        self.folded_pairs: list[FoldPair] = []
        if fold:
            folded = build_folded_model(model, example)
            with torch.no_grad(), full_float32():
                check = folded.module(example)
            if torch.allclose(check, reference, rtol=1e-4, atol=1e-4 * (1 + float(reference.abs().max()))):
                self.folded = folded
                self.folded_pairs = folded.pairs
            else:  # pragma: no cover - a safety net for architectures the hook test misreads
                warnings.warn("BatchNorm folding changed the model's output; evaluating unfolded",
                              stacklevel=2)
                self.folded = FoldedModel(model, [])
        else:
            self.folded = FoldedModel(model, [])
        self.folded.module.to(memory_format=self.memory_format)
        self.folded.targets = dict(self.folded.module.state_dict(keep_vars=True))
        self.rewrite = self.folded.dependents(set(self.perturbed))
        self.network = self.folded.module
        if compile:
            self.network = torch.compile(self.folded.module)

    def replica(self) -> "PointEvaluator":
        """A second evaluator on the same data and directions with its own network copy,
        so two threads can evaluate two points at once."""
        twin = copy.copy(self)
        twin.folded = self.folded.clone()
        twin.network = torch.compile(twin.folded.module) if self.compiled else twin.folded.module
        return twin

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess.normalize(images) if self.preprocess is not None else images
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def _batch(self, start: int, stop: int) -> torch.Tensor:
        if self.inputs is not None:
            return self.inputs[start:stop]
        return self._normalize(self.images[start:stop])

    def state_at(self, coefficients) -> dict[str, torch.Tensor]:
        """The perturbed entries of the state at ``theta + sum_i c_i d_i``."""
        state = {}
        for name in self.perturbed:
            value = self.base[name].clone()
            for c, direction in zip(coefficients, self.directions):
                if name in direction and c != 0:
                    value.add_(direction[name], alpha=float(c))
            state[name] = value
        return state

    @torch.inference_mode()
    def evaluate_async(self, coefficients) -> torch.Tensor:
        """``[mean loss, accuracy %]`` at the point, as a float64 tensor left on the device."""
        self.folded.load(self.state_at(coefficients), self.rewrite)
        # Per-sample losses in float64, summed once over the whole split: the reduction
        # then does not depend on how the split was cut into batches.
        losses = torch.empty(self.count, dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, self.count, self.batch_size):
            stop = min(start + self.batch_size, self.count)
            with self._autocast():
                logits = self.network(self._batch(start, stop))
            y = self.labels[start:stop]
            if self.loss_fn is None:
                losses[start:stop] = F.cross_entropy(logits.double(), y, reduction="none")
            else:  # the batch's mean for each of its samples: sums to the split's total
                if logits.dtype in (torch.bfloat16, torch.float16):
                    logits = logits.float()
                losses[start:stop] = self.loss_fn(logits, y).double()
            if self.accuracy:
                correct += (logits.argmax(1) == y).sum()
        accuracy = correct.double() * 100.0 / self.count if self.accuracy else \
            torch.full((), float("nan"), dtype=torch.float64, device=self.device)
        return torch.stack([losses.sum() / self.count, accuracy])

    def _autocast(self):
        """bf16 autocast under ``precision="bf16"`` (entered per call: it is per thread)."""
        return autocast(self.device.type, self.precision)

    def evaluate(self, coefficients) -> tuple[float, float]:
        """Mean loss and accuracy (percent; NaN without one) at the point (one host sync)."""
        loss, acc = self.evaluate_async(coefficients).tolist()
        return loss, acc


class PointPool:
    """Evaluates up to ``workers`` points at once, one replica of ``evaluator`` per thread.

    On the CPU, grid points are independent work: ``workers`` threads each running one
    point single-threaded keep every core busy without the synchronisation of splitting
    small convolutions across cores, and every value is computed by the same one-thread
    code however many workers (or torchrun ranks) share the grid. Use as a context manager:
    inside, torch runs one intra-op thread per worker.
    """

    def __init__(self, evaluator: PointEvaluator, workers: int = 1):
        self.workers = max(1, int(workers))
        self.replicas = [evaluator] + [evaluator.replica() for _ in range(self.workers - 1)]
        self._executor = None
        self._threads = None

    def __enter__(self) -> "PointPool":
        self._precision = full_float32(tf32=self.replicas[0].precision == "tf32")
        self._precision.__enter__()
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._threads = torch.get_num_threads()
            torch.set_num_threads(1)
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="landscape")
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
        self._precision.__exit__(None, None, None)

    def evaluate(self, points: list) -> list[tuple[float, float]]:
        """``(loss, accuracy)`` at each of up to ``workers`` points."""
        if len(points) > self.workers:
            raise ValueError(f"{len(points)} points for {self.workers} workers")
        if self._executor is None:
            return [self.replicas[0].evaluate(p) for p in points]
        futures = [self._executor.submit(r.evaluate, p) for r, p in zip(self.replicas, points)]
        return [f.result() for f in futures]
