"""Fast loss/accuracy at one point ``theta + sum_i c_i d_i`` of parameter space.

Why it is fast:

* the evaluation split is normalised once and held on the device as one float tensor
  (channels-last on the CPU, where oneDNN's convolutions prefer it);
* batches are large, under ``torch.inference_mode``; loss and correct counts accumulate
  on the device and are read back once per grid point, never per batch;
* every BatchNorm that directly follows a convolution (or linear layer) is folded into it
  (:mod:`depthscape.analysis.landscape.folding`), the fold recomputed for each point;
* optionally the folded network goes through ``torch.compile``.

The fold is verified once against the unfolded model on a slice of the data; if they do
not agree (an architecture where a convolution's output also feeds something else) the
evaluator falls back to the unfolded model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.analysis.landscape.folding import (  # noqa: F401  (FoldPair etc. re-exported)
    FoldedModel,
    FoldPair,
    build_folded_model,
    find_foldable_pairs,
    fold_weights,
)
from depthscape.analysis.landscape.sweep import WorkerPool
from depthscape.core.checkpoint import check_finite
from depthscape.core.data import Preprocess, Split
from depthscape.core.errors import UserError
from depthscape.core.plugins import copy_model, raised
from depthscape.core.runtime import Precision, precision_named
from depthscape.core.tf32 import tf32_scope

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


def _checked_fold(model: nn.Module, example: torch.Tensor, reference: torch.Tensor) -> FoldedModel:
    """``model`` with its BatchNorms folded, if the folded network gives ``reference`` on
    ``example``; else (with a warning) the model unfolded."""
    folded = build_folded_model(model, example)
    with torch.no_grad(), full_float32():
        check = folded.module(example)
    if not torch.allclose(check, reference, rtol=1e-4,
                          atol=1e-4 * (1 + float(reference.abs().max()))):  # pragma: no cover
        # a safety net for architectures the hook test misreads
        warnings.warn("BatchNorm folding changed the model's output; evaluating unfolded",
                      stacklevel=3)
        return FoldedModel(model, [])
    return folded


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
                 channels_last: bool | None = None, precision: Precision | str | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.device = device
        # as the caller resolved it for this device (core.runtime.resolve_precision; a name
        # is taken as resolved already); None: fp32 (exact, TF32 off)
        self.precision = (precision if isinstance(precision, Precision)
                          else precision_named(precision, device.type))
        self.batch_size = effective_batch_size(batch_size, device)
        self.compiled = compile
        model = copy_model(model).to(device).eval()
        if channels_last is None:
            channels_last = self.precision.channels_last_default()
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
        example, reference = self._read_inputs(model, split)
        self.accuracy = loss_fn is None or has_accuracy(reference, self.labels[:len(reference)])
        if loss_fn is None or self.accuracy:
            classes = int(reference.shape[-1])
            if int(self.labels.min()) < 0 or int(self.labels.max()) >= classes:
                raise UserError(f"the data has labels up to {int(self.labels.max())}, but the "
                                f"model predicts {classes} classes: is this the data it was "
                                "trained on?")
        self.folded = _checked_fold(model, example, reference) if fold else FoldedModel(model, [])
        self.folded_pairs: list[FoldPair] = self.folded.pairs
        self.folded.module.to(memory_format=self.memory_format)
        self.folded.targets = dict(self.folded.module.state_dict(keep_vars=True))
        self.rewrite = self.folded.dependents(set(self.perturbed))
        self.network = self.folded.module
        if compile:
            self.network = torch.compile(self.folded.module)

    def _read_inputs(self, model: nn.Module, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Hold the split's inputs (normalised once where they fit) and run ``model`` on a
        first slice: that ``(example, reference output)``; a model that cannot read the
        data, or returns no tensor, is a UserError."""
        images = split.images.to(self.device)
        what = "images" if self.preprocess is not None else "inputs"
        try:
            precompute = self.count * images[0].numel() * 4 <= _PRECOMPUTE_BYTES
            self.inputs = self._normalize(images) if precompute else None
            self.images = None if precompute else images
            example = self._batch(0, min(self.count, 64))
            with torch.no_grad(), full_float32():
                reference = model(example)
        except (Exception, SystemExit) as error:  # the user's model: any error is theirs
            raise UserError(f"the model cannot read this data ({tuple(images.shape[1:])} {what}): "
                            f"its forward pass raised {raised(error)}") from None
        if not isinstance(reference, torch.Tensor):
            raise UserError(f"the model returns a {type(reference).__name__}, not a tensor: wrap it "
                            "so it returns one (depthscape.select_output(model, key))")
        check_finite(reference, f"the model's output on {len(example)} {what} (at its own weights)")
        return example, reference

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
        with self.precision.scope():
            return self._evaluate_async(coefficients)

    def _evaluate_async(self, coefficients) -> torch.Tensor:
        self.folded.load(self.state_at(coefficients), self.rewrite)
        # Per-sample losses in float64, summed once over the whole split: the reduction
        # then does not depend on how the split was cut into batches.
        losses = torch.empty(self.count, dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, self.count, self.batch_size):
            stop = min(start + self.batch_size, self.count)
            with self.precision.forward():  # entered per call: autocast is per thread
                logits = self.network(self._batch(start, stop))
            y = self.labels[start:stop]
            if self.loss_fn is None:
                losses[start:stop] = F.cross_entropy(logits.double(), y, reduction="none")
            else:  # the batch's mean for each of its samples: sums to the split's total
                logits = self.precision.float_output(logits)
                losses[start:stop] = self.loss_fn(logits, y).double()
            if self.accuracy:
                correct += (logits.argmax(1) == y).sum()
        accuracy = correct.double() * 100.0 / self.count if self.accuracy else \
            torch.full((), float("nan"), dtype=torch.float64, device=self.device)
        return torch.stack([losses.sum() / self.count, accuracy])

    def evaluate(self, coefficients) -> tuple[float, float]:
        """Mean loss and accuracy (percent; NaN without one) at the point (one host sync)."""
        loss, acc = self.evaluate_async(coefficients).tolist()
        return loss, acc


class PointPool(WorkerPool):
    """A :class:`~depthscape.analysis.landscape.sweep.WorkerPool` of ``workers`` replicas
    of ``evaluator``: up to ``workers`` points at once, one thread each (torch then runs
    one intra-op thread per worker, so every value is computed by the same one-thread code
    however many workers or ranks share the grid); each point in ``evaluator``'s precision
    (its TF32 switches set as it says, :meth:`PointEvaluator.evaluate_async`)."""

    def __init__(self, evaluator: PointEvaluator, workers: int = 1):
        workers = max(1, int(workers))
        super().__init__([evaluator] + [evaluator.replica() for _ in range(workers - 1)],
                         one_thread=workers > 1, name="landscape")

    def evaluate(self, points: list) -> list[tuple[float, float]]:
        """``(loss, accuracy)`` at each of up to ``workers`` points."""
        return self.map(_evaluate, points)


def _evaluate(evaluator: PointEvaluator, point) -> tuple[float, float]:
    return evaluator.evaluate(point)
