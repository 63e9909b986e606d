"""Flatness with error bars: K filter-normalised random 1-D slices through a minimum.

One random direction gives one curve, and which direction was drawn changes the picture
(loss-landscape #31, #36, #44). :func:`slice_flatness` draws ``K`` directions (one seeded
generator, as :func:`~depthscape.analysis.landscape.directions.random_directions`; BatchNorm
and biases untouched) and evaluates the loss along each, ``theta + a d_k`` for ``a`` in
``[-span, span]``, with the landscape machinery's
:class:`~depthscape.analysis.landscape.points.PointEvaluator` (eval-mode BatchNorm folded).
Per direction it reports

* the **loss rise at radius r**: ``(L(r) + L(-r)) / 2 - L(0)`` (both sides are evaluated
  exactly at ``+-r``), and
* the **doubling radius**: the mean over the two sides of the smallest ``|a|`` where the
  loss reaches ``2 L(0)`` (linear interpolation between grid points); a direction whose
  loss does not double on both sides within ``span`` has none (counted, and left out of
  the mean: the mean of those reached is then a lower bound),

each summarised as mean +- the Student-t confidence interval over the ``K`` directions.
Cost: ``K * points`` forward passes over the data (no Hessian-vector products).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from depthscape.analysis.curves import display_name
from depthscape.analysis.landscape.directions import random_directions
from depthscape.analysis.landscape.points import PointEvaluator
from depthscape.analysis.landscape.surface import SUBSET_SEED
from depthscape.analysis.sharpness import _cache_key, _cached, _finished_runs
from depthscape.analysis.stats import CONFIDENCE, format_ci, mean_ci, student_t_quantile
from depthscape.analysis.tables import Table, model_sort_key
from depthscape.core.atomic import atomic_write_text, save_figure_file
from depthscape.core.data import Preprocess, Split
from depthscape.core.device import get_device
from depthscape.core.errors import UserError
from depthscape.core.models import families, model_depth, model_family
from depthscape.core.runtime import resolve_precision
from depthscape.core.subject import subject_from_run


@dataclass
class FlatnessResult:
    """K 1-D slices through a minimum, the two flatness measures per slice, their summary."""

    coordinates: list[float]  # the step sizes a along every direction (0, +-radius included)
    losses: list[list[float]]  # per direction: the loss at each coordinate
    base_loss: float  # the loss at the minimum itself (a = 0)
    radius: float
    rise: list[float]  # per direction: (L(r) + L(-r)) / 2 - L(0)
    doubling: list[float | None]  # per direction: radius where the loss doubles (None: not)
    rise_mean: float = math.nan
    rise_ci: float = math.nan
    doubling_mean: float = math.nan
    doubling_ci: float = math.nan
    doubling_reached: int = 0  # directions whose loss doubled on both sides within span
    confidence: float = CONFIDENCE
    settings: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def slice_coordinates(span: float, points: int, radius: float) -> list[float]:
    """``points`` even steps over ``[-span, span]`` plus ``0`` and ``+-radius``, sorted."""
    grid = set(np.round(np.linspace(-span, span, points), 12).tolist())
    grid.update((0.0, radius, -radius))
    return sorted(grid)


def doubling_radius(coordinates: Sequence[float], losses: Sequence[float], base: float
                    ) -> float | None:
    """Mean over both sides of the smallest ``|a|`` with ``L(a) >= 2 L(0)`` (interpolated
    linearly), or None where either side stays under it."""
    target = 2.0 * base
    a = np.asarray(coordinates, dtype=float)
    values = np.asarray(losses, dtype=float)
    sides = []
    for sign in (1.0, -1.0):
        keep = sign * a >= 0
        order = np.argsort(sign * a[keep])
        xs, ys = (sign * a[keep])[order], values[keep][order]
        hit = np.nonzero(ys >= target)[0]
        if len(hit) == 0:
            return None
        i = int(hit[0])
        if i == 0:
            sides.append(0.0)
            continue
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        sides.append(float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)))
    return sum(sides) / 2.0


def summarize(coordinates: Sequence[float], losses: Sequence[Sequence[float]], radius: float,
              settings: dict | None = None, confidence: float = CONFIDENCE) -> FlatnessResult:
    """The flatness measures of slices already evaluated (every row has ``a = 0``)."""
    coordinates = [float(c) for c in coordinates]
    zero = coordinates.index(0.0)
    plus, minus = coordinates.index(float(radius)), coordinates.index(-float(radius))
    base = float(np.mean([row[zero] for row in losses]))  # the same point in every slice
    rise = [(row[plus] + row[minus]) / 2.0 - row[zero] for row in losses]
    doubling = [doubling_radius(coordinates, row, row[zero]) for row in losses]
    rise_mean, rise_ci, _ = mean_ci(rise, confidence)
    reached = [d for d in doubling if d is not None]
    doubling_mean, doubling_ci, _ = mean_ci(reached, confidence)
    return FlatnessResult(coordinates, [list(map(float, row)) for row in losses], base,
                          float(radius), rise, doubling, rise_mean, rise_ci, doubling_mean,
                          doubling_ci, len(reached), confidence, dict(settings or {}))


def slice_flatness(model: nn.Module, split: Split, preprocess: Preprocess, directions: int = 8,
                   radius: float = 0.25, span: float = 1.0, points: int = 21, seed: int = 0,
                   norm: str = "filter", batch_size: int = 1000,
                   device: torch.device | str | None = None,
                   precision: str = "fp32") -> FlatnessResult:
    """``directions`` random 1-D slices through ``model``'s weights and their flatness.

    ``points`` even steps over ``[-span, span]`` (plus ``0`` and ``+-radius``) along each
    of ``directions`` directions drawn with ``seed`` and normalised per ``norm``; the loss
    is the mean cross-entropy over ``split`` with eval-mode BatchNorm.
    """
    if directions < 2:
        raise ValueError("at least 2 directions are needed for an interval")
    if not 0 < radius <= span:
        raise ValueError(f"the radius must be in (0, span], got {radius} (span {span})")
    drawn = random_directions(model, directions, seed, norm)
    device = torch.device(device) if device is not None else torch.device("cpu")
    evaluator = PointEvaluator(model, drawn, split, preprocess, batch_size, device,
                               precision=resolve_precision(precision, device))
    coordinates = slice_coordinates(span, points, radius)
    losses = []
    with torch.no_grad():
        for k in range(directions):
            row = []
            for a in coordinates:
                coefficients = [0.0] * directions
                coefficients[k] = a
                row.append(evaluator.evaluate(coefficients)[0])
            losses.append(row)
    settings = {"directions": directions, "radius": radius, "span": span, "points": points,
                "seed": seed, "norm": norm, "samples": len(split), "precision": precision}
    return summarize(coordinates, losses, radius, settings)


def flatness_cells(result: FlatnessResult) -> tuple[str, str]:
    """The two measures as table cells: ``mean ± CI`` (doubling: ``> span`` if never)."""
    k = len(result.rise)
    rise = format_ci(result.rise_mean, result.rise_ci, k, 3)
    span = result.settings.get("span", max(result.coordinates))
    if result.doubling_reached == 0:
        doubling = f"> {span:g}"
    else:
        doubling = format_ci(result.doubling_mean, result.doubling_ci, result.doubling_reached, 3)
        if result.doubling_reached < k:
            doubling += f" ({result.doubling_reached} of {k}; the others > {span:g})"
    return rise, doubling


def plot_flatness(result: FlatnessResult, path, title: str | None = None):
    """The K slices as thin lines over their band (mean +- CI, and min to max)."""
    # deferred on purpose: matplotlib is slow to import and only figures need it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = np.asarray(result.coordinates)
    y = np.asarray(result.losses)
    k = len(y)
    mean = y.mean(0)
    half = student_t_quantile(0.5 + result.confidence / 2, k - 1) * y.std(0, ddof=1) / math.sqrt(k)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.fill_between(x, y.min(0), y.max(0), color="C0", alpha=0.12, label="min to max")
    ax.fill_between(x, mean - half, mean + half, color="C0", alpha=0.35,
                    label=f"mean ± {round(100 * result.confidence)}% CI")
    for row in y:
        ax.plot(x, row, color="C0", linewidth=0.5, alpha=0.5)
    ax.plot(x, mean, color="C0", linewidth=1.8, label=f"mean of {k} directions")
    ax.axhline(2 * result.base_loss, color="grey", linestyle=":", linewidth=1,
               label="twice the minimum's loss")
    for r in (-result.radius, result.radius):
        ax.axvline(r, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("Step along a filter-normalised random direction")
    ax.set_ylabel("Loss")
    ax.set_title(title or "Loss along random 1-D slices through the minimum")
    ax.legend(fontsize="small")
    fig.tight_layout()
    try:
        return save_figure_file(fig, path, dpi=150)
    finally:
        plt.close(fig)


@dataclass(frozen=True)
class FlatnessConfig:
    """Settings of :func:`measure_run_flatness` (the data: a fixed subset of one split)."""

    directions: int = 8
    radius: float = 0.25
    span: float = 1.0
    points: int = 21
    seed: int = 0
    norm: str = "filter"
    split: str = "train"
    subset: int | None = 1000  # drawn with the landscapes' SUBSET_SEED
    batch_size: int = 1000
    device: str | None = None


def measure_run_flatness(run_dir, out_dir=None, models: Sequence[str] | None = None,
                         config: FlatnessConfig = FlatnessConfig(), data_source: dict | None = None,
                         progress: bool = True) -> list:
    """Flatness of every finished run under ``run_dir``: ``<out_dir>/<run>.flatness.json``
    (reused while checkpoint and settings are unchanged) and ``.png`` (the band); returns
    (RunInfo, FlatnessResult) pairs. ``out_dir`` defaults to ``<run_dir>/flatness``."""
    if config.split not in ("train", "test"):
        raise UserError(f"split must be train or test, got {config.split!r}")
    if config.directions < 2 or not 0 < config.radius <= config.span:
        raise UserError("flatness needs at least 2 directions and 0 < radius <= span")
    out = Path(out_dir) if out_dir else Path(run_dir) / "flatness"
    out.mkdir(parents=True, exist_ok=True)
    device = get_device(config.device)
    settings = asdict(config)
    settings.pop("device")
    source = data_source or {}
    datasets: dict = {}
    results = []
    for run in tqdm(_finished_runs(run_dir, models), desc="flatness", unit="run",
                    disable=not progress, dynamic_ncols=True):
        path = out / f"{run.paths.run_name}.flatness.json"
        key = _cache_key(run.paths.final, settings)
        stored = _cached(path, key)
        if stored is not None:
            results.append((run, FlatnessResult(**stored)))
            continue
        subject = subject_from_run(run.paths.final, dataset=source.get("dataset"),
                                   data_dir=source.get("data_dir"),
                                   cache_dir=source.get("cache_dir"), device=device,
                                   datasets=datasets)
        split = subject.split(config.split).subset(config.subset, seed=SUBSET_SEED)
        result = slice_flatness(subject.model, split, subject.preprocess, config.directions,
                                config.radius, config.span, config.points, config.seed,
                                config.norm, config.batch_size, device)
        result.settings.update(split=config.split, subset=config.subset)
        atomic_write_text(path, json.dumps({"key": key, "result": asdict(result)}) + "\n")
        plot_flatness(result, path.with_suffix(".png"),
                      title=f"{display_name(run.model)}: {config.directions} random 1-D slices")
        results.append((run, result))
    return results


def flatness_table(results: Sequence[tuple[object, FlatnessResult]]):
    """Per run: the minimum's loss, the loss rise at the radius and the doubling radius."""
    results = sorted(results, key=lambda p: (model_sort_key(p[0].model), getattr(p[0], "seed", 0)))
    several = len({r.model for r, _ in results}) < len(results)
    first = results[0][1] if results else None
    radius = first.radius if first else math.nan
    header = ["Model"] + (["Seed"] if several else []) + [
        "Loss at the minimum", f"Loss rise at radius {radius:g}", "Radius where the loss doubles",
        "Directions"]
    csv_header = ["model", "seed", "base_loss", "radius", "rise_mean", "rise_ci",
                  "doubling_mean", "doubling_ci", "doubling_reached", "directions", "confidence",
                  "span", "norm", "direction_seed"]
    rows, csv_rows = [], []
    for run, r in results:
        rise, doubling = flatness_cells(r)
        rows.append([display_name(run.model)] + ([str(run.seed)] if several else [])
                    + [f"{r.base_loss:.4g}", rise, doubling, str(len(r.rise))])
        csv_rows.append([run.model, getattr(run, "seed", 0), r.base_loss, r.radius, r.rise_mean,
                         r.rise_ci, r.doubling_mean, r.doubling_ci, r.doubling_reached,
                         len(r.rise), r.confidence, r.settings.get("span"),
                         r.settings.get("norm"), r.settings.get("seed")])
    level = round(100 * (first.confidence if first else CONFIDENCE))
    note = (f"± is the {level}% Student-t confidence interval over the random "
            "filter-normalised directions. Loss rise: the mean of the loss at +r and -r minus "
            "the loss at the minimum; doubling radius: the mean over both sides of the step "
            "where the loss first reaches twice the minimum's (directions that do not double "
            "within the span are counted apart).")
    return Table("Flatness along random 1-D slices through the trained minima", header, rows,
                 csv_header, csv_rows, notes=[note])


def pooled_flatness(results: Sequence[tuple[object, FlatnessResult]],
                    confidence: float = CONFIDENCE) -> dict:
    """Per model: both measures, mean ± Student-t half-width over every direction of every
    seed (one seed: its own). ``{model: {"rise": (mean, half, n), "doubling": (mean, half,
    reached), "directions": n, "span": span}}``; a direction that never doubled is left out
    of the doubling mean (``reached`` < ``directions``)."""
    by_model: dict[str, list[FlatnessResult]] = {}
    for run, result in results:
        by_model.setdefault(run.model, []).append(result)
    pooled = {}
    for model, group in by_model.items():
        rise = [v for r in group for v in r.rise]
        doubling = [v for r in group for v in r.doubling if v is not None]
        span = max(float(r.settings.get("span", max(r.coordinates))) for r in group)
        pooled[model] = {"rise": mean_ci(rise, confidence),
                         "doubling": mean_ci(doubling, confidence),
                         "directions": len(rise), "span": span,
                         "radius": group[0].radius}
    return pooled


def plot_flatness_by_depth(results: Sequence[tuple[object, FlatnessResult]], path,
                           confidence: float = CONFIDENCE):
    """Both measures against depth, one line per family, each point mean ± CI over the
    directions (pooled over seeds); a model of fixed depth (the CNN) as a dashed level.
    Writes ``path``; returns it."""
    # deferred on purpose: matplotlib is slow to import and only figures need it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pooled = pooled_flatness(results, confidence)
    radius = next(iter(pooled.values()))["radius"] if pooled else math.nan
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("rise", f"Loss rise at radius {radius:g} (higher = sharper)"),
              ("doubling", "Radius where the loss doubles (higher = flatter)"))
    for ax, (measure, label) in zip(axes, panels):
        for i, family in enumerate(families(with_depth=True)):
            points = sorted((model_depth(m), v[measure]) for m, v in pooled.items()
                            if model_family(m) == family.prefix and v[measure][2] > 0)
            if not points:
                continue
            depths = [d for d, _ in points]
            means = [v[0] for _, v in points]
            halves = [v[1] if math.isfinite(v[1]) else 0.0 for _, v in points]
            ax.errorbar(depths, means, yerr=halves, marker="o", capsize=4, color=f"C{i}",
                        label=family.label)
        for model, values in sorted(pooled.items()):
            if model_depth(model) is None and values[measure][2] > 0:
                ax.axhline(values[measure][0], color="grey", linestyle="--", linewidth=1,
                           label=display_name(model))
        ax.set_xlabel("Depth (layers)")
        ax.set_title(label, fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"Flatness along random 1-D slices: mean ± {round(100 * confidence)}% CI "
                 "over the directions")
    fig.tight_layout()
    try:
        return save_figure_file(fig, path, dpi=150)
    finally:
        plt.close(fig)
