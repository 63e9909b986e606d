"""Sharpness of a trained minimum: the Hessian's largest eigenvalue and its trace.

Both come from Hessian-vector products (Pearlmutter's trick: the gradient of ``g . v``),
never from the Hessian itself, so they work for any model size:

* :func:`top_eigenvalue`: power iteration, stopped when the Rayleigh quotient changes by
  less than ``tol`` (relative) between iterations. It finds the eigenvalue of largest
  magnitude, which at a minimum is the largest (the Hessian is near positive semidefinite).
* :func:`hessian_trace`: Hutchinson's estimator ``E[v^T H v]`` with Rademacher ``v``,
  stopped when the running mean's standard error falls under ``tol`` times its magnitude.

The loss is the mean cross-entropy over a fixed data subset, with the model in eval mode
(BatchNorm uses its running statistics, dropout is off), so the function whose Hessian is
measured is deterministic. Every trainable parameter is included.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.core.atomic import atomic_write_text
from depthscape.core.errors import UserError


@dataclass(frozen=True)
class SharpnessConfig:
    """How sharpness is measured."""

    split: str = "train"  # "train" (the split the run trained on) or "test"
    subset: int | None = 1000  # fixed random subset of that split; None: all of it
    batch_size: int = 500  # images per Hessian-vector product chunk
    power_iters: int = 20  # most power iterations
    power_tol: float = 1e-3  # stop when the eigenvalue changes by less than this (relative)
    trace_samples: int = 50  # most Hutchinson probe vectors
    trace_tol: float = 1e-2  # stop when the standard error is under this fraction of the mean
    min_trace_samples: int = 5  # probes before the trace may stop early
    seed: int = 0
    device: str | None = None


@dataclass
class SharpnessResult:
    """Sharpness of one minimum, with how the estimates ended."""

    top_eigenvalue: float
    power_iterations: int
    power_converged: bool
    trace: float
    trace_stderr: float
    trace_samples: int
    trace_converged: bool
    subset_size: int
    num_parameters: int


class HessianOperator:
    """``v -> H v`` for the mean loss of ``model`` over ``(inputs, labels)``, model in eval mode.

    The data is cut into chunks of ``batch_size``; each product sums the chunks' Hessian-
    vector products weighted by their share of the samples. With a single chunk the
    gradient graph is built once and reused by every product.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 500,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        self.model = model
        self.model.eval()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
        self.chunks = [(inputs[i:i + batch_size], labels[i:i + batch_size])
                       for i in range(0, len(labels), batch_size)]
        self.total = len(labels)
        if self.total == 0:
            raise ValueError("no data to measure the Hessian on")
        self._cached_grads: list[torch.Tensor] | None = None
        self.products = 0

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def _grads(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        loss = self.loss_fn(self.model(x), y) / self.total
        return list(torch.autograd.grad(loss, self.params, create_graph=True))

    def __call__(self, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.products += 1
        if len(self.chunks) == 1:
            if self._cached_grads is None:
                self._cached_grads = self._grads(*self.chunks[0])
            return self._product(self._cached_grads, vector, retain=True)
        result = [torch.zeros_like(p) for p in self.params]
        for x, y in self.chunks:
            part = self._product(self._grads(x, y), vector, retain=False)
            for r, h in zip(result, part):
                r += h
        return result

    def _product(self, grads, vector, retain: bool) -> list[torch.Tensor]:
        dot = sum((g * v).sum() for g, v in zip(grads, vector))
        hv = torch.autograd.grad(dot, self.params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(self.params, hv)]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _normalized(vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(_dot(vector, vector))
    if norm == 0:
        raise ArithmeticError("zero vector in power iteration")
    return [v / norm for v in vector]


def top_eigenvalue(operator: Callable, params: Sequence[torch.Tensor], iters: int = 20,
                   tol: float = 1e-3, seed: int = 0) -> tuple[float, int, bool]:
    """Power iteration on ``operator`` (a Hessian-vector product over ``params``' shapes).

    Returns (eigenvalue of largest magnitude, iterations used, converged). Converged means
    the Rayleigh quotient moved by less than ``tol * |eigenvalue|`` in the last iteration.
    """
    generator = torch.Generator().manual_seed(seed)
    vector = _normalized([torch.randn(p.shape, generator=generator).to(p) for p in params])
    eigenvalue = math.nan
    for iteration in range(1, iters + 1):
        product = operator(vector)
        new = _dot(vector, product)  # Rayleigh quotient of the unit vector
        try:
            vector = _normalized(product)
        except ArithmeticError:
            return 0.0, iteration, True  # H v = 0: v lies in the null space
        if math.isfinite(eigenvalue) and abs(new - eigenvalue) <= tol * max(abs(new), 1e-12):
            return new, iteration, True
        eigenvalue = new
    return eigenvalue, iters, False


def hessian_trace(operator: Callable, params: Sequence[torch.Tensor], samples: int = 50,
                  tol: float = 1e-2, min_samples: int = 5,
                  seed: int = 0) -> tuple[float, float, int, bool]:
    """Hutchinson's estimate of the trace: the mean of ``v^T H v`` over Rademacher ``v``.

    Returns (trace, standard error of the mean, probes used, converged). Stops early once
    at least ``min_samples`` probes give a standard error under ``tol * |trace|``.
    """
    generator = torch.Generator().manual_seed(seed + 7919)
    values: list[float] = []
    for _ in range(samples):
        probe = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p)
                 for p in params]
        values.append(_dot(probe, operator(probe)))
        n = len(values)
        mean = sum(values) / n
        stderr = (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
                  if n > 1 else math.inf)
        if n >= max(2, min_samples) and stderr <= tol * abs(mean):
            return mean, stderr, n, True
    return mean, stderr, len(values), False


def model_sharpness(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                    config: SharpnessConfig = SharpnessConfig()) -> SharpnessResult:
    """Top eigenvalue and trace of the Hessian of ``model``'s mean loss on the given data."""
    operator = HessianOperator(model, inputs, labels, config.batch_size)
    params = operator.params
    eigenvalue, iterations, converged = top_eigenvalue(
        operator, params, config.power_iters, config.power_tol, config.seed)
    trace, stderr, count, trace_ok = hessian_trace(
        operator, params, config.trace_samples, config.trace_tol, config.min_trace_samples,
        config.seed)
    return SharpnessResult(eigenvalue, iterations, converged, trace, stderr, count, trace_ok,
                           len(labels), operator.num_parameters)


def measure_sharpness(checkpoint: str | os.PathLike, config: SharpnessConfig = SharpnessConfig(),
                      dataset=None, output: str | os.PathLike | None = None,
                      data_source: dict | None = None,
                      datasets: dict | None = None) -> SharpnessResult:
    """Sharpness at the minimum a final checkpoint holds, on the data its run trained on.

    The subset is drawn from the run's own training split (or the test set) with
    ``config.seed``. With ``output`` the result is written there as JSON and reused while
    the checkpoint and settings are unchanged. ``dataset`` (loaded) or ``data_source``
    (``dataset``/``data_dir``/``cache_dir``) override the run's data by
    :func:`~depthscape.core.trained.load_trained_run`'s rule; ``datasets`` is its cache.
    """
    from depthscape.core.device import get_device
    from depthscape.core.trained import load_trained_run

    checkpoint = Path(checkpoint)
    if config.split not in ("train", "test"):
        raise UserError(f"split must be train or test, got {config.split!r}")
    if not checkpoint.exists():
        raise UserError(f"checkpoint not found: {checkpoint}")
    stat = checkpoint.stat()
    settings = asdict(config)
    settings.pop("device")
    key = {"checkpoint": checkpoint.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "settings": settings}
    if output is not None and Path(output).exists():
        try:
            stored = json.loads(Path(output).read_text())
            if stored.get("key") == key:
                return SharpnessResult(**stored["result"])
        except (OSError, ValueError, TypeError):
            pass  # damaged: measure again
    device = get_device(config.device)
    source = data_source or {}
    run = load_trained_run(checkpoint, dataset=dataset if dataset is not None else
                           source.get("dataset"), data_dir=source.get("data_dir"),
                           cache_dir=source.get("cache_dir"), device=device, datasets=datasets)
    # "train": the split the run trained on; "test": the whole test set
    split = run.train if config.split == "train" else run.dataset.test
    split = split.subset(config.subset, seed=config.seed)
    inputs = run.preprocess.normalize(split.images.to(device))
    labels = split.labels.to(device)
    result = model_sharpness(run.model, inputs, labels, config)
    if output is not None:
        atomic_write_text(output, json.dumps({"key": key, "result": asdict(result)}, indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------------------
# Every run of a study


def measure_runs(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 models: Sequence[str] | None = None, config: SharpnessConfig = SharpnessConfig(),
                 dataset=None, data_source: dict | None = None,
                 progress: bool = True) -> list[tuple[object, SharpnessResult]]:
    """Sharpness of every finished run under ``run_dir``, cached as ``<out_dir>/<run>.json``.

    ``out_dir`` defaults to ``<run_dir>/sharpness``. Returns (RunInfo, result) pairs.
    """
    from tqdm.auto import tqdm

    from depthscape.core.models import canonical_name
    from depthscape.core.runs import find_runs

    runs = [r for r in find_runs(run_dir) if r.paths.final.exists()]
    if models:
        wanted = {canonical_name(m) for m in models}
        runs = [r for r in runs if r.model in wanted]
    if not runs:
        raise UserError(f"no finished runs (final checkpoints) found under {run_dir}")
    out = Path(out_dir) if out_dir else Path(run_dir) / "sharpness"
    results = []
    datasets: dict = {}  # loaded once per data source, shared by the runs
    for run in tqdm(runs, desc="sharpness", unit="run", disable=not progress, dynamic_ncols=True):
        results.append((run, measure_sharpness(run.paths.final, config, dataset,
                                               out / f"{run.paths.run_name}.json", data_source,
                                               datasets)))
    return results


def sharpness_table(results: Sequence[tuple[object, SharpnessResult]]):
    """Per model: top Hessian eigenvalue and trace (mean ± std over seeds)."""
    from depthscape.analysis.curves import display_name
    from depthscape.analysis.tables import Table, mean_std, model_sort_key

    by_model: dict[str, list[SharpnessResult]] = {}
    for run, result in results:
        by_model.setdefault(run.model, []).append(result)
    several = any(len(v) > 1 for v in by_model.values())
    header = ["Model", "Top eigenvalue", "Trace", "Trace / parameters"] + (["Seeds"] if several else [])
    csv_header = ["model", "n_seeds", "top_eigenvalue_mean", "top_eigenvalue_std", "trace_mean",
                  "trace_std", "trace_stderr_max", "power_iterations_max",
                  "all_power_converged", "all_trace_converged", "subset_size", "num_parameters"]
    rows, csv_rows = [], []
    for model in sorted(by_model, key=model_sort_key):
        group = by_model[model]
        top = mean_std([r.top_eigenvalue for r in group])
        trace = mean_std([r.trace for r in group])
        per_param = mean_std([r.trace / r.num_parameters for r in group])
        cells = [display_name(model), _fmt_g(*top), _fmt_g(*trace), _fmt_g(*per_param)]
        if several:
            cells.append(str(len(group)))
        rows.append(cells)
        csv_rows.append([model, len(group), top[0], top[1], trace[0], trace[1],
                         max(r.trace_stderr for r in group),
                         max(r.power_iterations for r in group),
                         all(r.power_converged for r in group),
                         all(r.trace_converged for r in group),
                         group[0].subset_size, group[0].num_parameters])
    return Table("Sharpness at the trained minima (Hessian of the training loss)", header, rows,
                 csv_header, csv_rows)


def _fmt_g(mean: float, std: float, n: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"
