"""Sharpness of a trained minimum: the Hessian's largest and smallest eigenvalue, and its trace.

All three come from Hessian-vector products (:mod:`depthscape.analysis.hessian`):

* the largest and the smallest (algebraic) eigenvalue, by Lanczos
  (:func:`~depthscape.analysis.hessian.extreme_eigenvalues`), stopped when both change
  by less than ``power_tol`` (relative) in one step or after ``power_iters`` steps (the
  settings keep their old names; one step is one Hessian-vector product). The largest says how sharp the sharpest direction is; a negative smallest
  says the point is not a minimum of the measured loss (some direction still descends).
* the trace by Hutchinson's estimator ``E[v^T H v]`` with Rademacher ``v``, stopped when
  the running mean's standard error falls under ``trace_tol`` times its magnitude.

The loss is the mean cross-entropy over a fixed data subset, with the model in eval mode
(BatchNorm uses its running statistics, dropout is off), so the function whose Hessian is
measured is deterministic. Every trainable parameter is included.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from depthscape.analysis.hessian import (  # noqa: F401  (re-exported: sharpness's tools)
    EigenExtremes,
    HessianOperator,
    dominant_eigenvalue,
    extreme_eigenvalues,
    hessian_extremes,
    hessian_trace,
)
from depthscape.core.atomic import atomic_write_text
from depthscape.core.errors import UserError
from depthscape.core.runtime import resolve_precision


@dataclass(frozen=True)
class SharpnessConfig:
    """How sharpness is measured."""

    split: str = "train"  # "train" (the split the run trained on) or "test"
    subset: int | None = 1000  # fixed random subset of that split; None: all of it
    batch_size: int = 500  # images per Hessian-vector product chunk
    power_iters: int = 20  # most Lanczos steps (Hessian-vector products) for both ends
    power_tol: float = 1e-3  # stop when both ends change by less than this (relative)
    trace_samples: int = 50  # most Hutchinson probe vectors
    trace_tol: float = 1e-2  # stop when the standard error is under this fraction of the mean
    min_trace_samples: int = 5  # probes before the trace may stop early
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"  # core.runtime.PRECISIONS: bf16 autocasts the forward passes


@dataclass
class SharpnessResult:
    """Sharpness of one minimum, with how the estimates ended."""

    largest_eigenvalue: float  # largest (algebraic): curvature of the sharpest direction
    smallest_eigenvalue: float  # smallest (algebraic): negative where the loss still descends
    eigen_steps: int  # Lanczos steps (Hessian-vector products) for both ends
    eigen_converged: bool  # both ends met power_tol
    trace: float
    trace_stderr: float
    trace_samples: int
    trace_converged: bool
    subset_size: int
    num_parameters: int
    # Each end's own convergence, its last Lanczos change and its Ritz residual (see
    # EigenExtremes); None where not recorded (results stored before they were kept).
    largest_converged: bool | None = None
    smallest_converged: bool | None = None
    largest_change: float | None = None
    smallest_change: float | None = None
    largest_residual: float | None = None
    smallest_residual: float | None = None

    def end_converged(self, end: str) -> bool:
        """Whether the ``"largest"`` or ``"smallest"`` eigenvalue converged (where the end's
        own flag was not recorded, the run's: both ends)."""
        own = getattr(self, f"{end}_converged")
        return self.eigen_converged if own is None else bool(own)


def model_sharpness(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                    config: SharpnessConfig = SharpnessConfig()) -> SharpnessResult:
    """Largest and smallest eigenvalue and trace of the Hessian of ``model``'s mean loss on
    the given data."""
    operator = HessianOperator(model, inputs, labels, config.batch_size,
                               precision=config.precision)
    params = operator.params
    ends = extreme_eigenvalues(operator, params, config.power_iters, config.power_tol, config.seed)
    trace, stderr, count, trace_ok = hessian_trace(
        operator, params, config.trace_samples, config.trace_tol, config.min_trace_samples,
        config.seed)
    return SharpnessResult(ends.largest, ends.smallest, ends.iterations, ends.converged, trace,
                           stderr, count, trace_ok, len(labels), operator.num_parameters,
                           ends.largest_converged, ends.smallest_converged, ends.largest_change,
                           ends.smallest_change, ends.largest_residual, ends.smallest_residual)


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
    device = get_device(config.device)
    precision, notice = resolve_precision(config.precision, device)  # bf16 unsupported: UserError
    if notice:
        print(f"depthscape: notice: {notice}", file=sys.stderr, flush=True)
    config = replace(config, precision=precision)
    stat = checkpoint.stat()
    settings = asdict(config)
    settings.pop("device")
    if settings["precision"] == "fp32":  # fp32 results (all earlier ones) keep their key
        settings.pop("precision")
    key = {"checkpoint": checkpoint.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "settings": settings}
    if output is not None and Path(output).exists():
        try:
            stored = json.loads(Path(output).read_text())
            if stored.get("key") == key:
                return SharpnessResult(**stored["result"])
        except (OSError, ValueError, TypeError):
            pass  # damaged: measure again
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


#: Marks a number that did not converge within its budget: shown, never a result.
UNCONVERGED_MARK = "†"  # a dagger


def mark_unconverged(text: str, converged: bool) -> str:
    """``text`` with :data:`UNCONVERGED_MARK` appended unless ``converged``."""
    return text if converged else f"{text}{UNCONVERGED_MARK}"


def unconverged_details(result: SharpnessResult, quantity: str) -> str | None:
    """What is known about an estimate that did not converge, or None if it did.

    ``quantity``: ``"largest"`` or ``"smallest"`` (eigenvalue) or ``"trace"``.
    """
    if quantity == "trace":
        if result.trace_converged:
            return None
        return (f"{result.trace_samples} Hutchinson probe{'s' * (result.trace_samples != 1)}, "
                f"standard error {result.trace_stderr:.3g}")
    if result.end_converged(quantity):
        return None
    parts = [f"{result.eigen_steps} Lanczos step{'s' * (result.eigen_steps != 1)}"]
    for label, value in (("last change", getattr(result, f"{quantity}_change")),
                         ("residual", getattr(result, f"{quantity}_residual"))):
        if value is not None and math.isfinite(value):
            parts.append(f"{label} {value:.3g}")
    if not math.isfinite(getattr(result, f"{quantity}_eigenvalue")):
        parts.append("no finite value (the Hessian overflowed)")
    return ", ".join(parts)


def unconverged_note(entries: Sequence[tuple[str, str, Sequence[tuple[int, str]]]],
                     several_seeds: bool = False) -> str | None:
    """The footnote that explains :data:`UNCONVERGED_MARK`, or None when nothing is marked.

    ``entries``: (model name as shown, quantity as shown, [(seed, details), ...]) for every
    marked cell, ``details`` from :func:`unconverged_details`.
    """
    if not entries:
        return None
    items = []
    for name, quantity, seeds in entries:
        details = "; ".join(f"seed {seed}: {text}" if several_seeds else text
                            for seed, text in seeds)
        items.append(f"{name} {quantity} ({details})")
    note = (f"{UNCONVERGED_MARK} Did not converge within the budget, so not a result: "
            + "; ".join(items) + ".")
    if any(quantity != "trace" for _, quantity, _ in entries):
        note += (" Last change: how far the last Lanczos step moved the value; residual "
                 "||Hv - θv||: some Hessian eigenvalue lies within it of the value, not "
                 "necessarily the extreme one. Lanczos approaches both ends from inside: the "
                 "true smallest eigenvalue is at most the value shown, the true largest at "
                 "least.")
    return note


def sharpness_table(results: Sequence[tuple[object, SharpnessResult]]):
    """Per model: largest and smallest Hessian eigenvalue and trace (mean ± std over seeds).

    A number that did not converge (in any seed) carries :data:`UNCONVERGED_MARK`, and the
    table's note says how far each got.
    """
    from depthscape.analysis.curves import display_name
    from depthscape.analysis.tables import Table, mean_std, model_sort_key

    by_model: dict[str, list[tuple[object, SharpnessResult]]] = {}
    for run, result in results:
        by_model.setdefault(run.model, []).append((run, result))
    several = any(len(v) > 1 for v in by_model.values())
    header = ["Model", "Largest eigenvalue", "Smallest eigenvalue", "Trace",
              "Trace / parameters"] + (["Seeds"] if several else [])
    csv_header = ["model", "n_seeds", "largest_eigenvalue_mean", "largest_eigenvalue_std",
                  "smallest_eigenvalue_mean", "smallest_eigenvalue_std", "trace_mean",
                  "trace_std", "trace_stderr_max", "eigen_steps_max",
                  "all_eigen_converged", "all_trace_converged", "subset_size", "num_parameters",
                  "all_largest_converged", "all_smallest_converged"]
    rows, csv_rows, marked = [], [], []
    for model in sorted(by_model, key=model_sort_key):
        runs = sorted(by_model[model], key=lambda pair: getattr(pair[0], "seed", 0))
        group = [result for _, result in runs]
        largest = mean_std([r.largest_eigenvalue for r in group])
        smallest = mean_std([r.smallest_eigenvalue for r in group])
        trace = mean_std([r.trace for r in group])
        per_param = mean_std([r.trace / r.num_parameters for r in group])
        ok = {q: all(r.end_converged(q) for r in group) for q in ("largest", "smallest")}
        ok["trace"] = all(r.trace_converged for r in group)
        cells = [display_name(model), mark_unconverged(_fmt_g(*largest), ok["largest"]),
                 mark_unconverged(_fmt_g(*smallest), ok["smallest"]),
                 mark_unconverged(_fmt_g(*trace), ok["trace"]),
                 mark_unconverged(_fmt_g(*per_param), ok["trace"])]
        if several:
            cells.append(str(len(group)))
        rows.append(cells)
        for quantity, shown in (("largest", "largest eigenvalue"),
                                ("smallest", "smallest eigenvalue"), ("trace", "trace")):
            seeds = [(getattr(run, "seed", 0), text) for run, r in runs
                     if (text := unconverged_details(r, quantity)) is not None]
            if seeds:
                marked.append((display_name(model), shown, seeds))
        csv_rows.append([model, len(group), largest[0], largest[1], smallest[0], smallest[1],
                         trace[0], trace[1], max(r.trace_stderr for r in group),
                         max(r.eigen_steps for r in group),
                         all(r.eigen_converged for r in group), ok["trace"],
                         group[0].subset_size, group[0].num_parameters, ok["largest"],
                         ok["smallest"]])
    note = unconverged_note(marked, several)
    return Table("Sharpness at the trained minima (Hessian of the training loss)", header, rows,
                 csv_header, csv_rows, notes=[note] if note else [])


def _fmt_g(mean: float, std: float, n: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"
