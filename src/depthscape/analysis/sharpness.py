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
    top_k: int = 0  # also the k largest eigenvalues (Lanczos, at most power_iters steps); 0: off
    draws: int = 1  # independent draws (disjoint data subsets, own Lanczos/probe starts)


@dataclass(frozen=True)
class DensityConfig:
    """How the eigenvalue density is estimated (:func:`~depthscape.analysis.spectrum.
    spectral_density`); data, batch, seed, device and precision are the SharpnessConfig's."""

    runs: int = 3  # Lanczos runs from independent random starts
    steps: int = 80  # Lanczos steps per run
    width: float = 0.005  # Gaussian standard deviation / span of the Ritz values
    points: int = 1000  # grid points


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
    # With draws > 1 every number above is the mean over the draws (steps, changes,
    # residuals and standard errors: the largest; flags: all draws), and these hold the
    # half-widths of the Student-t intervals at ``confidence`` and each draw's values.
    top_eigenvalues: list[float] | None = None  # k largest, descending (top_k > 0)
    top_converged: list[bool] | None = None
    top_steps: int | None = None
    draws: int = 1
    confidence: float | None = None
    largest_ci: float | None = None
    smallest_ci: float | None = None
    trace_ci: float | None = None
    top_ci: list[float] | None = None
    draw_values: list[dict] | None = None  # per draw: largest, smallest, trace, top, subset seed

    def end_converged(self, end: str) -> bool:
        """Whether the ``"largest"`` or ``"smallest"`` eigenvalue converged (where the end's
        own flag was not recorded, the run's: both ends)."""
        own = getattr(self, f"{end}_converged")
        return self.eigen_converged if own is None else bool(own)


def model_sharpness(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                    config: SharpnessConfig = SharpnessConfig(), seed: int | None = None,
                    dist=None) -> SharpnessResult:
    """Largest and smallest eigenvalue and trace (and the top-k where ``config.top_k``) of
    the Hessian of ``model``'s mean loss on the given data: one draw, its Lanczos and probe
    starts from ``seed`` (default ``config.seed``). Under torchrun (``dist``, every rank
    the same data) the Hessian-vector products are split over the ranks and all-reduced
    (:class:`HessianOperator`): every rank returns the same result."""
    from depthscape.analysis.spectrum import top_eigenvalues

    seed = config.seed if seed is None else seed
    operator = HessianOperator(model, inputs, labels, config.batch_size,
                               precision=config.precision, dist=dist)
    params = operator.params
    ends = extreme_eigenvalues(operator, params, config.power_iters, config.power_tol, seed)
    trace, stderr, count, trace_ok = hessian_trace(
        operator, params, config.trace_samples, config.trace_tol, config.min_trace_samples,
        seed)
    top = None
    if config.top_k > 0:
        top = top_eigenvalues(operator, params, config.top_k, config.power_iters,
                              config.power_tol, seed)
    return SharpnessResult(ends.largest, ends.smallest, ends.iterations, ends.converged, trace,
                           stderr, count, trace_ok, len(labels), operator.num_parameters,
                           ends.largest_converged, ends.smallest_converged, ends.largest_change,
                           ends.smallest_change, ends.largest_residual, ends.smallest_residual,
                           top_eigenvalues=None if top is None else top.values,
                           top_converged=None if top is None else top.converged,
                           top_steps=None if top is None else top.iterations)


def _largest(values):
    known = [v for v in values if v is not None]
    return max(known) if known else None


def combine_draws(draws: Sequence[SharpnessResult], seeds: Sequence[int] | None = None,
                  confidence: float | None = None) -> SharpnessResult:
    """One result from independent draws: means with Student-t half-widths, worst-case
    steps/changes/residuals/standard errors, and a flag converged only if every draw's is."""
    from depthscape.analysis.stats import CONFIDENCE, mean_ci

    confidence = CONFIDENCE if confidence is None else confidence
    if len(draws) == 1:
        return draws[0]
    first = draws[0]

    def ci(name):
        return mean_ci([getattr(d, name) for d in draws], confidence)

    largest, smallest, trace = ci("largest_eigenvalue"), ci("smallest_eigenvalue"), ci("trace")
    top = top_ci = top_ok = None
    if first.top_eigenvalues is not None:
        k = len(first.top_eigenvalues)
        pairs = [mean_ci([d.top_eigenvalues[i] for d in draws if len(d.top_eigenvalues) > i],
                         confidence) for i in range(k)]
        top, top_ci = [p[0] for p in pairs], [p[1] for p in pairs]
        top_ok = [all(d.top_converged[i] for d in draws if len(d.top_converged) > i)
                  for i in range(k)]

    def all_of(name):
        flags = [getattr(d, name) for d in draws]
        return None if any(f is None for f in flags) else all(flags)

    per_draw = [{"largest": d.largest_eigenvalue, "smallest": d.smallest_eigenvalue,
                 "trace": d.trace, "top": d.top_eigenvalues,
                 "seed": None if seeds is None else seeds[i]} for i, d in enumerate(draws)]
    return SharpnessResult(
        largest[0], smallest[0], max(d.eigen_steps for d in draws),
        all(d.eigen_converged for d in draws), trace[0], max(d.trace_stderr for d in draws),
        max(d.trace_samples for d in draws), all(d.trace_converged for d in draws),
        first.subset_size, first.num_parameters, all_of("largest_converged"),
        all_of("smallest_converged"), _largest([d.largest_change for d in draws]),
        _largest([d.smallest_change for d in draws]),
        _largest([d.largest_residual for d in draws]),
        _largest([d.smallest_residual for d in draws]), top, top_ok,
        _largest([d.top_steps for d in draws]), len(draws), confidence, largest[1],
        smallest[1], trace[1], top_ci, per_draw)


def draw_subsets(split, size: int | None, draws: int, seed: int) -> list:
    """``draws`` disjoint random subsets of ``size`` samples from one permutation seeded with
    ``seed`` (the first is :meth:`Split.subset`'s own); all of it each time where ``size`` is
    None or covers the split (then only the Lanczos and probe starts differ)."""
    from depthscape.core.data import Split

    if size is None or size >= len(split):
        return [split] * draws
    if size * draws > len(split):
        raise UserError(f"{draws} disjoint subsets of {size} need {size * draws} samples; the "
                        f"split has {len(split)}: lower --subset or --draws")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return [Split(split.images[index], split.labels[index]) for index in
            (order[i * size:(i + 1) * size].sort().values for i in range(draws))]


def _resolved(checkpoint: Path, config: SharpnessConfig):
    """The config with its precision resolved for its device, that device and the process's
    :class:`~depthscape.core.distributed.DistContext` (under torchrun: ``cuda:LOCAL_RANK``
    or the CPU, and the process group joined)."""
    from depthscape.core.distributed import setup

    if config.split not in ("train", "test"):
        raise UserError(f"split must be train or test, got {config.split!r}")
    if not checkpoint.exists():
        raise UserError(f"checkpoint not found: {checkpoint}")
    dist = setup(config.device)
    device = dist.device
    precision, notice = resolve_precision(config.precision, device)  # bf16 unsupported: UserError
    if notice and dist.is_main:
        print(f"depthscape: notice: {notice}", file=sys.stderr, flush=True)
    return replace(config, precision=precision), device, dist


def _cache_key(checkpoint: Path, settings: dict) -> dict:
    stat = checkpoint.stat()
    return {"checkpoint": checkpoint.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "settings": settings}


def _cached(output, key, build=None, dist=None):
    """``build(stored result)`` (default: the stored dict) where ``output`` holds a result
    for ``key``, else None; under torchrun (``dist``) None unless every rank found it (all
    measure, or none: the products are collectives)."""
    build = build or (lambda data: data)
    found = None
    if output is not None and Path(output).exists():
        try:
            stored = json.loads(Path(output).read_text())
            if stored.get("key") == key:
                found = build(stored["result"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            found = None  # damaged or from another version: measure again
    if dist is not None and not dist.all_true(found is not None):
        return None
    return found


def _load_split(checkpoint, config, device, dataset, data_source, datasets, dist=None):
    """The trained run and the split its Hessian is measured on (before the subset).

    Under torchrun one process per machine loads first (it fills the data cache), then
    the others; an error in it stops every rank."""
    if dist is not None and dist.enabled:
        loaded, error = None, None
        if dist.local_rank == 0:
            try:
                loaded = _load_split(checkpoint, config, device, dataset, data_source, datasets)
            except UserError as caught:
                error = caught
        if not dist.all_true(error is None):
            raise error or UserError("loading the run or its data failed in another process "
                                     "(see rank 0)")
        return loaded if loaded is not None else _load_split(
            checkpoint, config, device, dataset, data_source, datasets)
    from depthscape.core.trained import load_trained_run

    source = data_source or {}
    run = load_trained_run(checkpoint, dataset=dataset if dataset is not None else
                           source.get("dataset"), data_dir=source.get("data_dir"),
                           cache_dir=source.get("cache_dir"), device=device, datasets=datasets)
    # "train": the split the run trained on; "test": the whole test set
    return run, run.train if config.split == "train" else run.dataset.test


def measure_sharpness(checkpoint: str | os.PathLike, config: SharpnessConfig = SharpnessConfig(),
                      dataset=None, output: str | os.PathLike | None = None,
                      data_source: dict | None = None,
                      datasets: dict | None = None) -> SharpnessResult:
    """Sharpness at the minimum a final checkpoint holds, on the data its run trained on.

    The subset is drawn from the run's own training split (or the test set) with
    ``config.seed``; with ``config.draws`` > 1, that many disjoint subsets of one
    permutation, each with its own Lanczos and probe starts, combined by
    :func:`combine_draws`. With ``output`` the result is written there as JSON and reused
    while the checkpoint and settings are unchanged. ``dataset`` (loaded) or ``data_source``
    (``dataset``/``data_dir``/``cache_dir``) override the run's data by
    :func:`~depthscape.core.trained.load_trained_run`'s rule; ``datasets`` is its cache.
    Under torchrun every rank calls this: each forms the Hessian-vector products on its
    share of every subset, the ranks sum them (:class:`HessianOperator`), all return the
    same result and rank 0 alone writes ``output``.
    """
    from depthscape.analysis.spectrum import run_seed

    checkpoint = Path(checkpoint)
    config, device, dist = _resolved(checkpoint, config)
    settings = asdict(config)
    settings.pop("device")
    if settings["precision"] == "fp32":  # fp32 results (all earlier ones) keep their key
        settings.pop("precision")
    for name, off in (("top_k", 0), ("draws", 1)):  # as do results without these
        if settings[name] == off:
            settings.pop(name)
    key = _cache_key(checkpoint, settings)
    stored = _cached(output, key, lambda data: SharpnessResult(**data), dist)
    if stored is not None:
        return stored
    run, split = _load_split(checkpoint, config, device, dataset, data_source, datasets, dist)
    seeds = [run_seed(config.seed, i) for i in range(config.draws)]
    draws = []
    for subset, seed in zip(draw_subsets(split, config.subset, config.draws, config.seed), seeds):
        inputs = run.preprocess.normalize(subset.images.to(device))
        draws.append(model_sharpness(run.model, inputs, subset.labels.to(device), config, seed,
                                     dist))
    result = combine_draws(draws, seeds)
    if output is not None and dist.is_main:
        atomic_write_text(output, json.dumps({"key": key, "result": asdict(result)}, indent=2) + "\n")
    return result


def measure_density(checkpoint: str | os.PathLike, config: SharpnessConfig = SharpnessConfig(),
                    density: DensityConfig = DensityConfig(), dataset=None,
                    output: str | os.PathLike | None = None, data_source: dict | None = None,
                    datasets: dict | None = None, label: str | None = None):
    """The Hessian's eigenvalue density (:func:`~depthscape.analysis.spectrum.
    spectral_density`) at a final checkpoint, on ``config``'s data subset (the first draw's).

    With ``output`` (a ``.json`` path) the density is stored there with every setting, and
    beside it as ``.csv`` (eigenvalue, density) and ``.png`` (log density axis); the JSON is
    reused while the checkpoint and settings are unchanged. Returns a SpectralDensity.
    Under torchrun the products are split over the ranks as :func:`measure_sharpness`'s
    are; rank 0 alone writes.
    """
    from depthscape.analysis.spectrum import SpectralDensity, plot_densities, spectral_density

    checkpoint = Path(checkpoint)
    config, device, dist = _resolved(checkpoint, config)
    settings = {"split": config.split, "subset": config.subset, "batch_size": config.batch_size,
                "seed": config.seed, "precision": config.precision, **asdict(density)}
    key = _cache_key(checkpoint, settings)
    stored = _cached(output, key, SpectralDensity.from_dict, dist)
    if stored is not None:
        return stored
    run, split = _load_split(checkpoint, config, device, dataset, data_source, datasets, dist)
    subset = split.subset(config.subset, seed=config.seed)
    operator = HessianOperator(run.model, run.preprocess.normalize(subset.images.to(device)),
                               subset.labels.to(device), config.batch_size,
                               precision=config.precision, dist=dist)
    result = spectral_density(operator, operator.params, density.runs, density.steps,
                              density.width, density.points, seed=config.seed)
    result.settings.update({k: v for k, v in settings.items() if k not in result.settings})
    result.settings["subset_size"] = len(subset)
    if output is not None and dist.is_main:
        output = Path(output)
        atomic_write_text(output, json.dumps({"key": key, "result": asdict(result)}) + "\n")
        atomic_write_text(output.with_suffix(".csv"), result.to_csv())
        if result.density:
            plot_densities([(label or output.stem, result)], output.with_suffix(".png"),
                           title=f"Hessian eigenvalue density: {label or output.stem}")
    return result


# ---------------------------------------------------------------------------------------
# Every run of a study


def _finished_runs(run_dir, models):
    from depthscape.core.models import canonical_name
    from depthscape.core.runs import find_runs

    runs = [r for r in find_runs(run_dir) if r.paths.final.exists()]
    if models:
        wanted = {canonical_name(m) for m in models}
        runs = [r for r in runs if r.model in wanted]
    if not runs:
        raise UserError(f"no finished runs (final checkpoints) found under {run_dir}")
    return runs


def measure_runs(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 models: Sequence[str] | None = None, config: SharpnessConfig = SharpnessConfig(),
                 dataset=None, data_source: dict | None = None,
                 progress: bool = True) -> list[tuple[object, SharpnessResult]]:
    """Sharpness of every finished run under ``run_dir``, cached as ``<out_dir>/<run>.json``.

    ``out_dir`` defaults to ``<run_dir>/sharpness``. Returns (RunInfo, result) pairs.
    Under torchrun every rank calls this (rank 0 shows the progress and writes).
    """
    from tqdm.auto import tqdm

    from depthscape.core.distributed import is_main_process

    progress = progress and is_main_process()
    runs = _finished_runs(run_dir, models)
    out = Path(out_dir) if out_dir else Path(run_dir) / "sharpness"
    results = []
    datasets: dict = {}  # loaded once per data source, shared by the runs
    for run in tqdm(runs, desc="sharpness", unit="run", disable=not progress, dynamic_ncols=True):
        results.append((run, measure_sharpness(run.paths.final, config, dataset,
                                               out / f"{run.paths.run_name}.json", data_source,
                                               datasets)))
    return results


def measure_run_densities(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                          models: Sequence[str] | None = None,
                          config: SharpnessConfig = SharpnessConfig(),
                          density: DensityConfig = DensityConfig(), dataset=None,
                          data_source: dict | None = None, progress: bool = True) -> list:
    """The eigenvalue density of every finished run, as ``<out_dir>/<run>.density.json``
    (with ``.csv`` and ``.png``), and all of them on one axis in ``<out_dir>/density.png``.
    Returns (RunInfo, SpectralDensity) pairs. Under torchrun every rank calls this (rank 0
    shows the progress and writes)."""
    from tqdm.auto import tqdm

    from depthscape.analysis.curves import display_name
    from depthscape.analysis.spectrum import plot_densities
    from depthscape.analysis.tables import model_sort_key
    from depthscape.core.distributed import is_main_process

    runs = sorted(_finished_runs(run_dir, models),
                  key=lambda r: (model_sort_key(r.model), getattr(r, "seed", 0)))
    out = Path(out_dir) if out_dir else Path(run_dir) / "sharpness"
    several = len({r.model for r in runs}) < len(runs)
    main = is_main_process()
    progress = progress and main
    results = []
    datasets: dict = {}
    for run in tqdm(runs, desc="density", unit="run", disable=not progress, dynamic_ncols=True):
        label = display_name(run.model) + (f" seed {run.seed}" if several else "")
        results.append((run, measure_density(
            run.paths.final, config, density, dataset,
            out / f"{run.paths.run_name}.density.json", data_source, datasets, label)))
    drawn = [(display_name(r.model) + (f" seed {r.seed}" if several else ""), d)
             for r, d in results if d.density]
    if drawn and main:
        plot_densities(drawn, out / "density.png", title="Hessian eigenvalue density (SLQ)")
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

    Where each model has one seed measured in several draws, ``±`` is the Student-t
    confidence interval over the draws instead (the note says which). With top-k measured,
    a column lists the k largest eigenvalues. A number that did not converge (in any seed
    or draw) carries :data:`UNCONVERGED_MARK`, and the table's note says how far each got.
    """
    from depthscape.analysis.curves import display_name
    from depthscape.analysis.stats import format_ci
    from depthscape.analysis.tables import Table, mean_std, model_sort_key

    by_model: dict[str, list[tuple[object, SharpnessResult]]] = {}
    for run, result in results:
        by_model.setdefault(run.model, []).append((run, result))
    several = any(len(v) > 1 for v in by_model.values())
    every = [r for _, r in results]
    with_draws = any((r.draws or 1) > 1 for r in every)
    intervals = with_draws and not several  # ± over draws (several seeds: ± over seeds)
    with_top = any(r.top_eigenvalues for r in every)
    header = ["Model", "Largest eigenvalue", "Smallest eigenvalue", "Trace",
              "Trace / parameters"] + (["Top eigenvalues"] if with_top else []) \
        + (["Seeds"] if several else []) + (["Draws"] if with_draws else [])
    csv_header = ["model", "n_seeds", "largest_eigenvalue_mean", "largest_eigenvalue_std",
                  "smallest_eigenvalue_mean", "smallest_eigenvalue_std", "trace_mean",
                  "trace_std", "trace_stderr_max", "eigen_steps_max",
                  "all_eigen_converged", "all_trace_converged", "subset_size", "num_parameters",
                  "all_largest_converged", "all_smallest_converged", "draws",
                  "largest_eigenvalue_ci", "smallest_eigenvalue_ci", "trace_ci", "confidence",
                  "top_eigenvalues", "top_eigenvalues_ci", "all_top_converged"]
    rows, csv_rows, marked = [], [], []

    def cell(values, half, count):
        if intervals:
            return format_ci(values[0], half if half is not None else math.nan, count)
        return _fmt_g(*values)

    for model in sorted(by_model, key=model_sort_key):
        runs = sorted(by_model[model], key=lambda pair: getattr(pair[0], "seed", 0))
        group = [result for _, result in runs]
        one = group[0]
        largest = mean_std([r.largest_eigenvalue for r in group])
        smallest = mean_std([r.smallest_eigenvalue for r in group])
        trace = mean_std([r.trace for r in group])
        per_param = mean_std([r.trace / r.num_parameters for r in group])
        ok = {q: all(r.end_converged(q) for r in group) for q in ("largest", "smallest")}
        ok["trace"] = all(r.trace_converged for r in group)
        draws = one.draws or 1
        per_param_ci = (one.trace_ci / one.num_parameters if one.trace_ci is not None
                        else None)
        cells = [display_name(model),
                 mark_unconverged(cell(largest, one.largest_ci, draws), ok["largest"]),
                 mark_unconverged(cell(smallest, one.smallest_ci, draws), ok["smallest"]),
                 mark_unconverged(cell(trace, one.trace_ci, draws), ok["trace"]),
                 mark_unconverged(cell(per_param, per_param_ci, draws), ok["trace"])]
        top_ok = all(all(r.top_converged or [False]) for r in group)
        top_mean = top_ci = None
        if with_top:
            k = max(len(r.top_eigenvalues or []) for r in group)
            top_mean = [mean_std([r.top_eigenvalues[i] for r in group
                                  if r.top_eigenvalues and len(r.top_eigenvalues) > i])
                        for i in range(k)]
            top_ci = one.top_ci if intervals else None
            shown = ", ".join(
                cell(m, top_ci[i] if top_ci else None, draws) for i, m in enumerate(top_mean))
            cells.append(mark_unconverged(shown or "-", top_ok or not k))
        if several:
            cells.append(str(len(group)))
        if with_draws:
            cells.append(str(draws))
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
                         one.subset_size, one.num_parameters, ok["largest"],
                         ok["smallest"], draws,
                         one.largest_ci if intervals else None,
                         one.smallest_ci if intervals else None,
                         one.trace_ci if intervals else None,
                         one.confidence if intervals else None,
                         None if top_mean is None else ";".join(f"{m[0]:.6g}" for m in top_mean),
                         None if not top_ci else ";".join(f"{c:.3g}" for c in top_ci),
                         top_ok if with_top else None])
    notes = []
    if intervals:
        level = round(100 * (every[0].confidence or 0.95))
        notes.append(f"± is the {level}% Student-t confidence interval of the mean over the "
                     "draws (disjoint random data subsets, each with its own Lanczos and "
                     "Hutchinson starts); Draws: their number.")
    elif with_draws:
        notes.append("± is the standard deviation over seeds; each seed's value is the mean "
                     "over its draws (Draws).")
    if with_top:
        notes.append("Top eigenvalues: the largest Lanczos Ritz values, descending (one "
                     "start vector sees one copy of a repeated eigenvalue).")
    note = unconverged_note(marked, several)
    if note:
        notes.append(note)
    return Table("Sharpness at the trained minima (Hessian of the training loss)", header, rows,
                 csv_header, csv_rows, notes=notes)


def _fmt_g(mean: float, std: float, n: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"
