"""Training curves from the CSV logs (spec 7.1): EMA smoothing, train vs validation panels.

A log is read once into a :class:`Curve` (its x-axis unit chosen the spec's way: epochs for
the CNN, iterations for ResNet/PlainNet). :func:`plot_run` draws one run's accuracy, loss
and error, training against validation; :func:`plot_comparison` draws several runs on the
same axes; :func:`standard_figures` draws the spec's set (CNN alone, ResNet-20/56/110,
PlainNet-20/56/110, ResNet vs PlainNet at each depth) for whichever runs exist.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from depthscape.core.atomic import save_figure
from depthscape.core.csvlog import LOG_COLUMNS, read_log
from depthscape.core.datasets import DEFAULT_DATASET
from depthscape.core.errors import UserError
from depthscape.core.models import (
    canonical_name,
    families,
    family_prefix,
    model_depth,
    model_family,
    model_info,
    present_pairs,
)
from depthscape.core.runs import find_runs, run_paths

#: The three panels of every curve figure: (log column stem, axis label).
METRICS = (("acc", "accuracy (%)"), ("loss", "cross-entropy loss"), ("err", "error (%)"))
DEFAULT_EMA = 0.6


def ema(values: Sequence[float], factor: float = DEFAULT_EMA) -> np.ndarray:
    """Exponential moving average ``s_t = factor * s_{t-1} + (1 - factor) * x_t``.

    ``factor`` 0 returns the values unchanged; the first finite value starts the average.
    NaN entries (e.g. test columns before the first evaluation) stay NaN and do not move it.
    """
    if not 0.0 <= factor < 1.0:
        raise UserError(f"EMA factor must be in [0, 1), got {factor}")
    out = np.full(len(values), np.nan)
    state = None
    for i, value in enumerate(values):
        if value is None or not math.isfinite(value):
            continue
        state = value if state is None else factor * state + (1.0 - factor) * value
        out[i] = state
    return out


def display_name(model: str) -> str:
    """``resnet56`` -> ``ResNet-56``, ``plain110`` -> ``PlainNet-110``, ``cnn`` -> ``CNN``."""
    return model_info(model).display_name


@dataclass
class Curve:
    """One training log: its x-axis and the metric columns, as arrays."""

    label: str  # legend text, e.g. "ResNet-56"
    run_name: str  # file stem, e.g. "resnet56" or "plainnet110_seed1"
    unit: str  # "epoch" or "iteration": the x-axis
    x: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    model: str | None = None  # canonical model name where known
    source: Path | None = None  # the CSV log it was read from

    def series(self, split: str, metric: str) -> np.ndarray:
        """The ``{split}_{metric}`` column, e.g. ``series("test", "acc")``."""
        return self.columns[f"{split}_{metric}"]


def _unit_for(log_path: Path, model: str | None) -> str:
    """x-axis unit: the run config's recipe unit, else the model's (from the log's name)."""
    config = log_path.with_name(log_path.name.replace("_log.csv", "_config.json"))
    if config.name != log_path.name and config.exists():
        try:
            unit = json.loads(config.read_text())["recipe"]["unit"]
            if unit in ("epoch", "iteration"):
                return unit
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable config falls back to the model's registry entry
    model = model or _model_from_log_name(log_path)
    return model_info(model).curve_unit if model is not None else "iteration"


def _model_from_log_name(path: Path) -> str | None:
    stem = path.name.removesuffix("_log.csv").split("_")[0]
    try:
        return canonical_name(stem)
    except UserError:
        return None


def load_curve(log_path: str | os.PathLike, label: str | None = None,
               model: str | None = None) -> Curve:
    """Read one CSV training log into a :class:`Curve`; a bad file is a one-line UserError."""
    path = Path(log_path)
    if not path.is_file():
        raise UserError(f"training log not found: {path}")
    try:
        rows = read_log(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read training log {path}: {error}") from None
    if not rows:
        raise UserError(f"training log {path} holds no rows yet")
    missing = [c for c in LOG_COLUMNS if c not in rows[0] and c not in ("lr",)]
    if missing:
        raise UserError(f"{path} is not a depthscape training log: missing column {missing[0]!r}")
    model = canonical_name(model) if model else _model_from_log_name(path)
    unit = _unit_for(path, model)
    x = np.array([r["epoch" if unit == "epoch" else "iteration"] for r in rows], dtype=float)
    columns = {c: np.array([r.get(c, math.nan) for r in rows], dtype=float) for c in LOG_COLUMNS}
    run_name = path.name.removesuffix("_log.csv")
    if label is None:
        label = display_name(model) if model else run_name
        seed = run_name.rpartition("_seed")[2] if "_seed" in run_name else ""
        if seed:
            label += f" (seed {seed})"
    return Curve(label=label, run_name=run_name, unit=unit, x=x, columns=columns, model=model,
                 source=path)


def _pick_dataset(runs, dataset: str | None) -> str | None:
    datasets = sorted({r.dataset for r in runs})
    if dataset is not None:
        return dataset
    return DEFAULT_DATASET if DEFAULT_DATASET in datasets else (datasets[0] if datasets else None)


def resolve_runs(tokens: Sequence[str], run_dir: str | os.PathLike = ".", seed: int = 0,
                 dataset: str | None = None) -> list[Path]:
    """Turn what the user typed into log paths.

    Each RUN is a CSV path or a model name (``resnet56``, ``resnet-56``, ``plainnet 110``:
    a bare depth joins the name before it). Model names look in ``<run_dir>/logs/`` for
    that model's run with ``seed`` on ``dataset`` (default: CIFAR-10, else the one found).
    """
    runs = find_runs(run_dir)
    data_tag = _pick_dataset(runs, dataset) or DEFAULT_DATASET
    paths: list[Path] = []
    pending: str | None = None

    def flush(name: str | None, depth: str | None = None) -> None:
        if name is None:
            return
        model = canonical_name(name, depth)
        paths.append(run_paths(run_dir, model, seed, data_tag).log)

    for token in tokens:
        if token.isdigit() and pending is not None:
            flush(pending, token)
            pending = None
            continue
        if token.isdigit():
            raise UserError(f"depth {token} given without a model name before it")
        flush(pending)
        pending = None
        if token.endswith(".csv") or os.sep in token:
            paths.append(Path(token))
        elif family_prefix(token) is not None:  # a depth family's bare name: its depth follows
            pending = token
        else:
            flush(token)
    flush(pending)
    for path in paths:
        if not path.is_file():
            raise UserError(f"training log not found: {path} (train that model first, or pass "
                            "--run-dir pointing at the folder holding logs/)")
    return paths


# ---------------------------------------------------------------------------------------
# Plotting


def _pyplot():
    # deferred on purpose: matplotlib is slow to import and only figures need it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _up_to_date(stem: Path, formats: Sequence[str], curves: Sequence[Curve]) -> list[Path] | None:
    """The figure's files when they all exist and are newer than every log drawn in them."""
    targets = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    sources = [c.source for c in curves]
    if any(s is None for s in sources) or not all(t.exists() for t in targets):
        return None
    newest_log = max(s.stat().st_mtime_ns for s in sources)
    return targets if min(t.stat().st_mtime_ns for t in targets) >= newest_log else None


def _xlabel(curves: Sequence[Curve]) -> str:
    units = {c.unit for c in curves}
    return "epoch" if units == {"epoch"} else "iteration" if units == {"iteration"} else "epoch / iteration"


def plot_run(curve: Curve, out_dir: str | os.PathLike, ema_factor: float = DEFAULT_EMA,
             formats: Sequence[str] = ("png", "pdf"), raw: bool = True,
             reuse: bool = False) -> list[Path]:
    """One run's accuracy, loss and error panels, training vs validation.

    Smoothed lines on top of the faint raw values (``raw``). Writes
    ``<out_dir>/<run>_curves.<fmt>`` for each format and returns the paths. With ``reuse``,
    files newer than the log are kept as they are.
    """
    stem = Path(out_dir) / f"{curve.run_name}_curves"
    if reuse and (done := _up_to_date(stem, formats, [curve])):
        return done
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (metric, ylabel) in zip(axes, METRICS):
        for split, colour, name in (("train", "tab:blue", "training"),
                                    ("test", "tab:orange", "validation")):
            values = curve.series(split, metric)
            ok = np.isfinite(values)
            if not ok.any():
                continue
            if raw and ema_factor > 0:
                ax.plot(curve.x[ok], values[ok], color=colour, alpha=0.25, linewidth=1)
            ax.plot(curve.x[ok], ema(values[ok], ema_factor), color=colour, linewidth=1.8,
                    label=name, marker=_marker(ok))
        ax.set_xlabel(curve.unit)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if metric == "loss" and _positive(curve, metric):
            ax.set_yscale("log")
        ax.legend()
    smoothing = f" (EMA {ema_factor:g})" if ema_factor > 0 else ""
    fig.suptitle(f"{curve.label}: training vs validation{smoothing}")
    fig.tight_layout()
    try:
        return save_figure(fig, stem, formats, dpi=120)
    finally:
        plt.close(fig)


def _marker(points: np.ndarray) -> str | None:
    """Dots where a line has so few points that it would hardly show (or not at all)."""
    return "o" if int(np.count_nonzero(points)) < 12 else None


def _positive(curve: Curve, metric: str) -> bool:
    values = np.concatenate([curve.series("train", metric), curve.series("test", metric)])
    values = values[np.isfinite(values)]
    return values.size > 0 and bool((values > 0).all())


def plot_comparison(curves: Sequence[Curve], out_stem: str | os.PathLike, title: str,
                    ema_factor: float = DEFAULT_EMA,
                    formats: Sequence[str] = ("png", "pdf"), reuse: bool = False) -> list[Path]:
    """Several runs on one set of panels: one colour per run, training dashed, validation solid.

    Writes ``<out_stem>.<fmt>`` for each format and returns the paths. With ``reuse``,
    files newer than every log are kept as they are.
    """
    if not curves:
        raise ValueError("plot_comparison needs at least one curve")
    if reuse and (done := _up_to_date(Path(out_stem), formats, curves)):
        return done
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, ylabel) in zip(axes, METRICS):
        for k, curve in enumerate(curves):
            colour = colours[k % len(colours)]
            for split, style in (("train", "--"), ("test", "-")):
                values = curve.series(split, metric)
                ok = np.isfinite(values)
                if ok.any():
                    ax.plot(curve.x[ok], ema(values[ok], ema_factor), style, color=colour,
                            linewidth=1.6, marker=_marker(ok), markersize=3, label=f"{curve.label} {'train' if split == 'train' else 'val'}")
        ax.set_xlabel(_xlabel(curves))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if metric == "loss" and all(_positive(c, metric) for c in curves):
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    smoothing = f" (EMA {ema_factor:g}; dashed: training, solid: validation)" if ema_factor > 0 else \
        " (dashed: training, solid: validation)"
    fig.suptitle(title + smoothing)
    fig.tight_layout()
    try:
        return save_figure(fig, out_stem, formats, dpi=120)
    finally:
        plt.close(fig)


@dataclass
class Figure:
    """One written figure: what it shows and its files (PNG first)."""

    key: str  # e.g. "cnn", "resnet", "plain", "resnet_vs_plain_56", "run_resnet56"
    title: str
    paths: list[Path]


def standard_figures(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     models: Sequence[str] | None = None, seed: int = 0,
                     dataset: str | None = None, ema_factor: float = DEFAULT_EMA,
                     formats: Sequence[str] = ("png", "pdf"), per_run: bool = True,
                     reuse: bool = False) -> list[Figure]:
    """The spec's figures for the runs under ``run_dir`` that have logs.

    CNN alone; the ResNets together; the PlainNets together; ResNet vs PlainNet at each
    depth both have; plus one figure per run when ``per_run``. ``models`` limits the runs
    (default: all found); ``dataset`` picks the runs' dataset (default CIFAR-10, else the
    one found). Missing runs are left out silently. ``reuse`` keeps figures that are
    newer than their logs (a rerun of a finished study draws nothing again).
    """
    runs = [r for r in find_runs(run_dir) if r.seed == seed]
    dataset = _pick_dataset(runs, dataset)
    wanted = {canonical_name(m) for m in models} if models else None
    curves: dict[str, Curve] = {}
    for run in runs:
        if run.dataset != dataset or (wanted is not None and run.model not in wanted):
            continue
        try:
            curves[run.model] = load_curve(run.paths.log, model=run.model)
        except UserError:
            continue  # an empty log (run just started) has nothing to draw yet
    out = Path(out_dir)
    figures: list[Figure] = []

    def by_family(family: str) -> list[Curve]:
        chosen = [n for n in curves if model_family(n) == family]
        return [curves[n] for n in sorted(chosen, key=lambda n: model_depth(n) or 0)]

    baselines = [f.prefix for f in families(with_depth=False) if f.prefix in curves]
    for name in baselines:  # the spec's Figure 1: the CNN alone, training vs validation
        figures.append(Figure(name, f"Baseline {model_info(name).display_name}",
                              plot_run(curves[name], out, ema_factor, formats, reuse=reuse)))
    depth_families = families(with_depth=True)
    for family in depth_families:
        group = by_family(family.prefix)
        if group:
            title = f"{family.label}-" + "/".join(str(model_depth(c.model)) for c in group)
            figures.append(Figure(family.prefix, title, plot_comparison(
                group, out / f"{family.file_name}_depths_curves", title, ema_factor, formats,
                reuse=reuse)))
    for found in present_pairs(curves):  # the families' pairings (ResNet vs PlainNet) at each depth
        pair = [curves[n] for n in found.names]
        title = " vs ".join(c.label for c in pair)
        figures.append(Figure(found.stem, title, plot_comparison(
            pair, out / f"{found.stem}_curves", title, ema_factor, formats, reuse=reuse)))
    if per_run:
        for name, curve in curves.items():
            if name in baselines:
                continue  # already drawn above
            figures.append(Figure(f"run_{name}", curve.label,
                                  plot_run(curve, out, ema_factor, formats, reuse=reuse)))
    return figures
