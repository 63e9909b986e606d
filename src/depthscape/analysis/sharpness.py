"""Sharpness of trained runs: the Hessian's extreme eigenvalues and trace at a checkpoint.

The estimators and their result (:class:`SharpnessConfig`, :class:`SharpnessResult`,
:func:`model_sharpness`, draws and their intervals) are in
:mod:`depthscape.analysis.sharpness_estimate`; this module measures trained runs: a final
checkpoint on the data its run trained on (:func:`measure_sharpness`, the eigenvalue
density :func:`measure_density`), every finished run of a study (:func:`measure_runs`,
:func:`measure_run_densities`), each result stored and reused while the checkpoint and
settings are unchanged (:mod:`depthscape.analysis.sharpness_cache`). The table and the
marks of unconverged numbers are :mod:`depthscape.analysis.sharpness_table`. Every name
stays importable from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from tqdm.auto import tqdm

from depthscape.analysis.blocks import block_densities, partition
from depthscape.analysis.broadening import BULK_RULE
from depthscape.analysis.curves import display_name
from depthscape.analysis.density import SpectralDensity, spectral_density
from depthscape.analysis.hessian import (  # noqa: F401  (re-exported: sharpness's tools)
    STOP_RULE,
    EigenExtremes,
    HessianOperator,
    dominant_eigenvalue,
    extreme_eigenvalues,
    hessian_extremes,
    hessian_trace,
)
from depthscape.analysis.lanczos import run_seed
from depthscape.analysis.measures import all_measures
from depthscape.analysis.sharpness_cache import cache_key as _cache_key
from depthscape.analysis.sharpness_cache import cached_result as _cached
from depthscape.analysis.sharpness_estimate import (  # noqa: F401  (re-exported)
    DensityConfig,
    SharpnessConfig,
    SharpnessResult,
    active_measures,
    check_sharpness_fits,
    combine_draws,
    draw_subsets,
    model_sharpness,
)
from depthscape.analysis.sharpness_table import (  # noqa: F401  (re-exported)
    UNCONVERGED_MARK,
    mark_unconverged,
    sharpness_table,
    unconverged_details,
    unconverged_note,
)
from depthscape.analysis.spectrum_plots import plot_densities
from depthscape.analysis.tables import model_sort_key
from depthscape.core.atomic import atomic_write_text
from depthscape.core.data import Split
from depthscape.core.distributed import is_main_process, setup
from depthscape.core.errors import UserError
from depthscape.core.errors import notice as print_notice
from depthscape.core.models import canonical_name
from depthscape.core.runs import find_runs
from depthscape.core.runtime import resolve_precision
from depthscape.core.subject import Subject, subject_from_run


def _resolved(config: SharpnessConfig, checkpoint: Path | None = None):
    """The config with its precision's name resolved for its device, that
    :class:`~depthscape.core.runtime.Precision`, the device and the process's
    :class:`~depthscape.core.distributed.DistContext` (under torchrun: ``cuda:LOCAL_RANK``
    or the CPU, and the process group joined)."""
    if config.split not in ("train", "test"):
        raise UserError(f"split must be train or test, got {config.split!r}")
    if checkpoint is not None and not checkpoint.exists():
        raise UserError(f"checkpoint not found: {checkpoint}")
    dist = setup(config.device)
    device = dist.device
    precision = resolve_precision(config.precision, device, backward=True)  # e.g. bf16 unsupported: UserError
    if precision.notice and dist.is_main:
        print_notice(precision.notice)
    return replace(config, precision=precision.name), precision, device, dist


def _subject_split(load: Callable[[], Subject], which: str, dist=None) -> tuple[Subject, Split]:
    """The Subject ``load()`` makes and its split ``which`` (before the subset), the model
    checked against it.

    Under torchrun one process per machine loads first (it fills the data cache), then
    the others; an error in it stops every rank."""
    if dist is not None and dist.enabled:
        loaded, error = None, None
        if dist.local_rank == 0:
            try:
                loaded = _subject_split(load, which)
            except UserError as caught:
                error = caught
        if not dist.all_true(error is None):
            raise error or UserError("loading the run or its data failed in another process "
                                     "(see rank 0)")
        return loaded if loaded is not None else _subject_split(load, which)
    subject = load()
    split = subject.split(which)
    subject.check_reads(split)
    return subject, split


def _run_loader(checkpoint: Path, device, dataset, data_source: dict | None, datasets):
    """How a run's Subject is made: ``dataset`` (loaded) or ``data_source``
    (``dataset``/``data_dir``/``cache_dir``) override its recorded data."""
    source = data_source or {}
    return lambda: subject_from_run(
        checkpoint, dataset=dataset if dataset is not None else source.get("dataset"),
        data_dir=source.get("data_dir"), cache_dir=source.get("cache_dir"), device=device,
        datasets=datasets)


def _sharpness_of(subject: Subject, split: Split, config, precision, device, dist):
    """Every draw's measures on ``subject``, combined (see :func:`measure_sharpness`)."""
    seeds = [run_seed(config.seed, i) for i in range(config.draws)]
    draws = []
    for subset, seed in zip(draw_subsets(split, config.subset, config.draws, config.seed), seeds):
        inputs = subject.preprocess.normalize(subset.images.to(device))
        draws.append(model_sharpness(subject.model, inputs, subset.labels.to(device), config,
                                     seed, dist, precision))
    result = combine_draws(draws, seeds)
    if config.draws > 1:  # what the interval is of: subsets, or the same data each time
        result.same_data = config.subset is None or config.subset >= len(split)
    return result


def measure_sharpness(checkpoint: str | os.PathLike,
                      config: SharpnessConfig = SharpnessConfig(),  # noqa: B008 (frozen)
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
    checkpoint = Path(checkpoint)
    config, precision, device, dist = _resolved(config, checkpoint)
    settings = asdict(config)
    settings.pop("device")
    if precision.is_default:  # fp32 results (all earlier ones) keep their key
        settings.pop("precision")
    later = {"draws": 1, **{k: v for m in all_measures() for k, v in m.added.items()}}
    for name, off in later.items():  # as do results without the settings added later
        if settings[name] == off:
            settings.pop(name)
    settings["stop_rule"] = STOP_RULE  # results of the older rule are measured again
    key = _cache_key(checkpoint, settings)
    stored = _cached(output, key, SharpnessResult.from_dict, dist)
    if stored is not None:
        return stored
    subject, split = _subject_split(_run_loader(checkpoint, device, dataset, data_source,
                                                datasets), config.split, dist)
    result = _sharpness_of(subject, split, config, precision, device, dist)
    if output is not None and dist.is_main:
        atomic_write_text(output, json.dumps({"key": key, "result": result.to_dict()}, indent=2)
                          + "\n")
    return result


def measure_files(config: SharpnessConfig, result: SharpnessResult, stem) -> list[Path]:
    """Each active measure's own files beside a result ``<stem>.json`` (``--blocks``:
    ``<stem>.blocks.json/.csv``), written atomically: the paths."""
    return [path for measure in active_measures(config)
            for path in measure.write_files(result, stem)]


def subject_sharpness(subject: Subject,
                      config: SharpnessConfig = SharpnessConfig()  # noqa: B008 (frozen)
                      ) -> SharpnessResult:
    """:func:`measure_sharpness` of any :class:`~depthscape.core.subject.Subject` (a model
    of the user's: ``--model-from``), measured the same way and not stored. The settings
    are checked against the model before its data loads."""
    config, precision, device, dist = _resolved(config)
    check_sharpness_fits(config, subject.model, device)
    subject, split = _subject_split(lambda: subject.to(device), config.split, dist)
    return _sharpness_of(subject, split, config, precision, device, dist)


def _density_settings(config: SharpnessConfig, density: DensityConfig) -> dict:
    return {"split": config.split, "subset": config.subset, "batch_size": config.batch_size,
            "seed": config.seed, "precision": config.precision, **asdict(density),
            # the outer nodes' flags: densities stored before them are measured again
            "power_tol": config.power_tol, "stop_rule": STOP_RULE,
            # the bulk's broadening names its rule (the span's: as before)
            **({"broadening": BULK_RULE} if density.width is None else {}),
            # the stages' densities come with it (stored before them: without)
            **({"stage_densities": True} if config.blocks else {})}


def _density_of(load: Callable[[], Subject], config, density, key, precision, device, dist,
                output, label):
    """The density of the Subject ``load()`` makes (see :func:`measure_density`)."""
    subject, split = _subject_split(load, config.split, dist)
    stages = partition(subject.model, "stage") if config.blocks else None  # before any product
    subset = split.subset(config.subset, seed=config.seed)
    operator = HessianOperator(subject.model,
                               subject.preprocess.normalize(subset.images.to(device)),
                               subset.labels.to(device), config.batch_size,
                               precision=precision, dist=dist)
    result = spectral_density(operator, operator.params, density.runs, density.steps,
                              density.width, density.points, seed=config.seed,
                              tol=config.power_tol)
    if stages is not None:  # --blocks: each stage's density too, SLQ on its H_bb
        per_stage = block_densities(operator, stages, density.runs, density.steps,
                                    density.width, density.points, config.seed,
                                    config.power_tol)
        if output is not None and dist.is_main:
            _write_stage_densities(per_stage, Path(output), label)
    result.settings.update({k: v for k, v in key["settings"].items()
                            if k not in result.settings})
    result.settings["subset_size"] = len(subset)
    if output is not None and dist.is_main:
        output = Path(output)
        atomic_write_text(output, json.dumps({"key": key, "result": result.to_dict()}) + "\n")
        atomic_write_text(output.with_suffix(".csv"), result.to_csv())
        if result.density:
            plot_densities([(label or output.stem, result)], output.with_suffix(".png"),
                           title=f"Hessian eigenvalue density: {label or output.stem}")
    return result


def stage_density_paths(output: Path) -> list[Path]:
    """Where :func:`measure_density` with ``--blocks`` puts the stages' densities: one
    JSON (stage -> density) and one figure, beside ``output`` (``<run>.density.json``)."""
    stem = output.name.removesuffix(".density.json")
    return [output.with_name(f"{stem}.stages.density.{s}") for s in ("json", "png")]


def _write_stage_densities(per_stage: dict, output: Path, label: str | None) -> None:
    json_path, png_path = stage_density_paths(output)
    atomic_write_text(json_path, json.dumps({k: d.to_dict() for k, d in per_stage.items()})
                      + "\n")
    drawn = [(stage, d) for stage, d in per_stage.items() if d.density]
    if drawn:
        plot_densities(drawn, png_path, title="Hessian eigenvalue density per stage (H_bb): "
                                              f"{label or output.stem}")


def measure_density(checkpoint: str | os.PathLike,
                    config: SharpnessConfig = SharpnessConfig(),  # noqa: B008 (frozen)
                    density: DensityConfig = DensityConfig(), dataset=None,  # noqa: B008
                    output: str | os.PathLike | None = None, data_source: dict | None = None,
                    datasets: dict | None = None, label: str | None = None):
    """The Hessian's eigenvalue density (:func:`~depthscape.analysis.density.
    spectral_density`) at a final checkpoint, on ``config``'s data subset (the first draw's).

    ``density.width`` None broadens by the bulk of the nodes (the rule's name,
    :data:`~depthscape.analysis.broadening.BULK_RULE`, is in the cache key, so densities of
    another rule are measured again); a width, by that fraction of the nodes' span.
    With ``output`` (a ``.json`` path) the density is stored there with every setting and
    its summary (bulk, outliers, negative mass), and beside it as ``.csv`` (eigenvalue,
    density) and ``.png`` (log density axis, and the bulk); the JSON is reused while the
    checkpoint and settings are unchanged. Returns a SpectralDensity.
    Under torchrun the products are split over the ranks as :func:`measure_sharpness`'s
    are; rank 0 alone writes.
    """
    checkpoint = Path(checkpoint)
    config, precision, device, dist = _resolved(config, checkpoint)
    key = _cache_key(checkpoint, _density_settings(config, density))
    stored = _cached(output, key, SpectralDensity.from_dict, dist)
    if stored is not None:
        return stored
    return _density_of(_run_loader(checkpoint, device, dataset, data_source, datasets),
                       config, density, key, precision, device, dist, output, label)


def subject_density(subject: Subject,
                    config: SharpnessConfig = SharpnessConfig(),  # noqa: B008 (frozen)
                    density: DensityConfig = DensityConfig(),  # noqa: B008
                    output: str | os.PathLike | None = None):
    """:func:`measure_density` of any :class:`~depthscape.core.subject.Subject` (a model of
    the user's): stored with ``output`` under a key of the subject's identity (its weights'
    hash) and the settings, and reused while both hold."""
    config, precision, device, dist = _resolved(config)
    key = {"subject": subject.identity, "settings": _density_settings(config, density)}
    stored = _cached(output, key, SpectralDensity.from_dict, dist)
    if stored is not None:
        return stored
    return _density_of(lambda: subject.to(device), config, density, key, precision, device,
                       dist, output, subject.label)


# ---------------------------------------------------------------------------------------
# Every run of a study


def _finished_runs(run_dir, models):
    runs = [r for r in find_runs(run_dir) if r.paths.final.exists()]
    if models:
        wanted = {canonical_name(m) for m in models}
        runs = [r for r in runs if r.model in wanted]
    if not runs:
        raise UserError(f"no finished runs (final checkpoints) found under {run_dir}")
    return runs


def measure_runs(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 models: Sequence[str] | None = None,
                 config: SharpnessConfig = SharpnessConfig(),  # noqa: B008 (frozen)
                 dataset=None, data_source: dict | None = None,
                 progress: bool = True) -> list[tuple[object, SharpnessResult]]:
    """Sharpness of every finished run under ``run_dir``, cached as ``<out_dir>/<run>.json``.

    ``out_dir`` defaults to ``<run_dir>/sharpness``. Returns (RunInfo, result) pairs.
    Under torchrun every rank calls this (rank 0 shows the progress and writes).
    """
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
                          config: SharpnessConfig = SharpnessConfig(),  # noqa: B008 (frozen)
                          density: DensityConfig = DensityConfig(), dataset=None,  # noqa: B008
                          data_source: dict | None = None, progress: bool = True) -> list:
    """The eigenvalue density of every finished run, as ``<out_dir>/<run>.density.json``
    (with ``.csv`` and ``.png``), and all of them on one axis in ``<out_dir>/density.png``.
    Returns (RunInfo, SpectralDensity) pairs. Under torchrun every rank calls this (rank 0
    shows the progress and writes)."""
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
