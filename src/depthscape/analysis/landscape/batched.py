"""Several grid points in one batched call (``torch.func.vmap``), for GPUs a small model leaves idle.

:func:`evaluate_points` gives the same values as calling
:meth:`PointEvaluator.evaluate_async` once per point (up to float rounding): it folds each
point's weights exactly as the evaluator does, stacks the perturbed entries of the K
points and runs the folded network once per data batch with ``vmap`` over the stacked
weights, so every convolution becomes one grouped convolution over K weight sets.

Where it pays: a small model (ResNet-20) on a large GPU, where one point's batches do not
fill the GPU. Where it does not: the CPU (grouped convolutions are slower there; see
``benchmarks/bench_switches.py``), or deep models that fill the GPU already. Memory grows
with K times the activations of one batch; lower the evaluator's ``batch_size`` to fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from depthscape.analysis.landscape.points import PointEvaluator


@torch.inference_mode()
def evaluate_points(evaluator: PointEvaluator, points: Sequence[Sequence[float]]) -> torch.Tensor:
    """``[[mean loss, accuracy %], ...]`` of the K ``points``, a (K, 2) float64 tensor on the device."""
    if evaluator.loss_fn is not None or evaluator.preprocess is None:
        raise ValueError("batched points evaluate the CLI's cross-entropy on a preprocessed split")
    points = [tuple(p) for p in points]
    if not points:
        return torch.zeros((0, 2), dtype=torch.float64, device=evaluator.device)
    names = list(evaluator.rewrite)
    stacks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for point in points:
        evaluator.folded.load(evaluator.state_at(point), names)
        for name in names:
            stacks[name].append(evaluator.folded.targets[name].detach().clone())
    weights = {name: torch.stack(values) for name, values in stacks.items()}
    module = evaluator.folded.module

    def forward(params, x):
        return functional_call(module, params, (x,))

    batched = vmap(forward, in_dims=(0, None))
    k = len(points)
    loss_sum = torch.zeros(k, dtype=torch.float64, device=evaluator.device)
    correct = torch.zeros(k, dtype=torch.int64, device=evaluator.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")  # pooling falls back, correctly
        for start in range(0, evaluator.count, evaluator.batch_size):
            stop = min(start + evaluator.batch_size, evaluator.count)
            logits = batched(weights, evaluator._batch(start, stop))  # (K, B, classes)
            y = evaluator.labels[start:stop]
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(k), reduction="none")
            loss_sum += losses.view(k, -1).double().sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
    # the evaluator's folded weights are left at the last point: evaluate_async reloads them
    return torch.stack([loss_sum / evaluator.count, correct.double() * 100.0 / evaluator.count], 1)
