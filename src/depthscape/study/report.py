"""The study's report, as Markdown (``report.md``) and one self-contained page (``report.html``).

Both are rendered from the same list of blocks (headings, paragraphs, tables, figures,
interactive surfaces), so they always say the same thing. The Markdown links the figures
by relative path; the HTML embeds every figure as a base64 PNG and draws the interactive
3-D surfaces with plotly.js, inlined once, so the page works offline and can be mailed.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from depthscape.analysis.curves import display_name
from depthscape.analysis.tables import (
    Table,
    format_duration,
    group_by_model,
    mean_std,
    table1,
    table2,
)
from depthscape.core.atomic import atomic_write_text
from depthscape.core.models import families, model_depth, model_family, pairs


@dataclass
class Landscape:
    """One model's loss surface and the files drawn from it."""

    model: str
    run_name: str
    surface: Path  # HDF5 surface file
    plots: list[Path] = field(default_factory=list)  # PNG/PDF drawings
    html: Path | None = None  # standalone interactive page

    def plot(self, kind: str) -> Path | None:
        """The PNG of ``kind`` (``contour``, ``surface3d``, ...), if drawn."""
        for path in self.plots:
            if path.suffix == ".png" and path.stem.endswith(f"_{kind}"):
                return path
        return None


@dataclass
class View:
    """One run's trajectory or curvature map: its data file and its drawing."""

    model: str
    run_name: str
    data: Path  # HDF5 file
    png: Path


# ---------------------------------------------------------------------------------------
# Blocks


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str  # plain text; `code` spans allowed


@dataclass
class Bullets:
    items: list[str]


@dataclass
class TableBlock:
    table: Table
    caption: str = ""


@dataclass
class FigureBlock:
    path: Path  # PNG
    caption: str
    links: list[tuple[str, Path]] = field(default_factory=list)  # other formats


@dataclass
class FigureGrid:
    figures: list[FigureBlock]


@dataclass
class SurfaceBlock:
    landscape: Landscape
    caption: str


# ---------------------------------------------------------------------------------------
# The story the numbers tell


def describe_trend(values: Sequence[float], digits: int = 2) -> str:
    """What a sequence of numbers does, in words: ``rises``, ``falls``, ``rises then falls``,
    ``falls then rises``, ``goes up and down`` or ``is unchanged``.

    Values equal when rounded to ``digits`` (as the report prints them) count as unchanged,
    so a step the reader cannot see is not called a rise.
    """
    rounded = [round(v, digits) for v in values]
    moves: list[str] = []
    for before, after in zip(rounded, rounded[1:]):
        if after == before:
            continue
        move = "rises" if after > before else "falls"
        if not moves or moves[-1] != move:
            moves.append(move)
    if not moves:
        return "is unchanged"
    if len(moves) == 1:
        return moves[0]
    if len(moves) == 2:
        return f"{moves[0]} then {moves[1]}"
    return "goes up and down"


def describe_change(first: float, last: float, unit: str = "points", digits: int = 2) -> str:
    """The net change end to end: ``up 3.20 points``, ``down 0.50 points`` or ``unchanged``."""
    change = round(last, digits) - round(first, digits)
    if change == 0:
        return "unchanged end to end"
    return f"{'up' if change > 0 else 'down'} {abs(change):.{digits}f} {unit} end to end"


def compare_intervals(first: tuple[float, float], second: tuple[float, float],
                      level: float = 0.95) -> str:
    """Whether two means with their confidence half-widths differ: ``"significant: the
    95% intervals do not overlap"`` only where they do not, ``"within noise: the 95%
    intervals overlap"`` where they do, ``""`` where either has no interval (one draw)."""
    (m1, h1), (m2, h2) = first, second
    if not all(math.isfinite(v) for v in (m1, h1, m2, h2)):
        return ""
    percent = round(100 * level)
    if m1 + h1 < m2 - h2 or m2 + h2 < m1 - h1:
        return f"significant: the {percent}% intervals do not overlap"
    return f"within noise: the {percent}% intervals overlap"


def _ci_text(mean: float, half: float) -> str:
    return f"{mean:.3g} ± {half:.2g}" if math.isfinite(half) else f"{mean:.3g}"


def flatness_observations(flatness, depths, first, second) -> list[str]:
    """ResNet vs PlainNet at each depth, per flatness measure, mean ± CI over the random
    directions: a difference is called significant only where the intervals do not
    overlap, "within noise" where they do."""
    from depthscape.analysis.landscape.flatness import pooled_flatness

    if not flatness:
        return []
    pooled = pooled_flatness(flatness)
    level = flatness[0][1].confidence
    lines = []
    radius = next(iter(pooled.values()))["radius"]
    for measure, what in (("rise", f"Loss rise at radius {radius:g} along random 1-D slices "
                                   "(higher = sharper)"),
                          ("doubling", "Radius where the loss doubles along random 1-D slices "
                                       "(higher = flatter)")):
        pairs = []
        for depth in depths:
            a = pooled.get(f"{first.prefix}{depth}")
            b = pooled.get(f"{second.prefix}{depth}")
            if not (a and b):
                continue
            cells, intervals = [], []
            for values in (a, b):
                mean, half, n = values[measure]
                if measure == "doubling" and n < values["directions"]:
                    # some directions never doubled within the span: the mean of the
                    # others is a lower bound, no interval to compare
                    shown = (f"> {values['span']:g} in all {values['directions']} directions"
                             if n == 0 else f"{_ci_text(mean, half)} ({n} of "
                             f"{values['directions']} directions doubled)")
                    cells.append(shown)
                    intervals.append((math.nan, math.nan))
                    continue
                cells.append(_ci_text(mean, half))
                intervals.append((mean, half))
            verdict = compare_intervals(*intervals, level=level)
            if not verdict:
                verdict = "not comparable: not every direction doubled within the span" \
                    if measure == "doubling" else "no interval (one direction)"
            pairs.append(f"depth {depth}: {first.label} {cells[0]} vs {second.label} "
                         f"{cells[1]} ({verdict})")
        if pairs:
            lines.append(f"{what}, mean ± {round(100 * level)}% CI over the directions: "
                         + "; ".join(pairs) + ".")
    return lines


def observations(metrics, sharpness, flatness=None) -> list[str]:
    """Plain statements read off the results (no claim the numbers do not make).

    Where a measure comes with confidence intervals (sharpness with several draws, the
    flatness slices), a ResNet/PlainNet difference is called significant only where the
    two intervals do not overlap, and "within noise" where they do."""
    lines = []
    groups = group_by_model(metrics)
    depth_families = families(with_depth=True)
    for family in depth_families:
        chain = [(model_depth(m), mean_std([r.test_acc for r in g])[0])
                 for m, g in groups.items() if model_family(m) == family.prefix]
        if len(chain) >= 2:
            steps = " → ".join(f"{acc:.2f}% (depth {depth})" for depth, acc in chain)
            accs = [acc for _, acc in chain]
            lines.append(f"{family.label} test accuracy {describe_trend(accs)} from depth "
                         f"{chain[0][0]} to {chain[-1][0]} "
                         f"({describe_change(accs[0], accs[-1])}): {steps}.")
    depths = sorted({model_depth(m) for m in groups if model_depth(m)})
    for first, second in pairs():  # each family's pairing in the study (ResNet, PlainNet)
        gaps = []
        for depth in depths:
            if f"{first.prefix}{depth}" in groups and f"{second.prefix}{depth}" in groups:
                gap = (mean_std([r.test_acc for r in groups[f"{first.prefix}{depth}"]])[0]
                       - mean_std([r.test_acc for r in groups[f"{second.prefix}{depth}"]])[0])
                gaps.append(f"{gap:+.2f} at depth {depth}")
        if gaps:
            lines.append(f"{first.label} minus {second.label} test accuracy: " + ", ".join(gaps)
                         + " (points).")
    for model, group in groups.items():  # models of fixed depth: the baseline CNN
        if model_depth(model) is None:
            train_acc = mean_std([r.train_acc for r in group])[0]
            test_acc = mean_std([r.test_acc for r in group])[0]
            lines.append(f"The {display_name(model)} reaches {train_acc:.2f}% on its training "
                         f"data and {test_acc:.2f}% on test data (a gap of "
                         f"{train_acc - test_acc:.2f} points).")
    if sharpness:
        for first, second in pairs():
            lines += _sharpness_observations(sharpness, depths, first, second)
    if flatness:
        flat_depths = sorted(set(depths) | {model_depth(r.model) for r, _ in flatness
                                            if model_depth(r.model)})
        for first, second in pairs():
            lines += flatness_observations(flatness, flat_depths, first, second)
    return lines


def _sharpness_observations(sharpness, depths, first, second) -> list[str]:
    """``first`` vs ``second`` (ResNet vs PlainNet) at each depth, per end of the Hessian's
    spectrum, from converged numbers only: a pair with an end that did not converge is named
    as not resolved."""
    from depthscape.analysis.sharpness import UNCONVERGED_MARK

    by_model: dict[str, list] = {}
    for run, result in sharpness:
        by_model.setdefault(run.model, []).append(result)
    lines = []
    for end, what in (("largest", "Largest Hessian eigenvalue (higher = sharper)"),
                      ("smallest", "Smallest Hessian eigenvalue (negative = the loss still "
                                   "descends along some direction)")):
        pairs, resolved, unresolved, steps = [], 0, [], set()
        for depth in depths:
            models = (f"{first.prefix}{depth}", f"{second.prefix}{depth}")
            r, p = by_model.get(models[0]), by_model.get(models[1])
            if not (r and p):
                continue
            open_ = [(m, g) for m, g in zip(models, (r, p))
                     if not all(x.end_converged(end) for x in g)]
            if open_:
                names = [display_name(m) for m, _ in open_]
                used = {x.eigen_steps for _, g in open_ for x in g if not x.end_converged(end)}
                unresolved += names
                steps |= used
                pairs.append(f"depth {depth}: not resolved ({' and '.join(names)} did not "
                             f"converge in {_steps(used)} Lanczos steps)")
                continue
            resolved += 1
            text = (f"depth {depth}: {first.label} "
                    f"{np.mean([getattr(x, f'{end}_eigenvalue') for x in r]):.3g} vs "
                    f"{second.label} "
                    f"{np.mean([getattr(x, f'{end}_eigenvalue') for x in p]):.3g}")
            if len(r) == 1 and len(p) == 1:  # one seed each: its draws' intervals, if any
                half = [getattr(g[0], f"{end}_ci") for g in (r, p)]
                if all(h is not None for h in half):
                    level = r[0].confidence or 0.95
                    verdict = compare_intervals(
                        (getattr(r[0], f"{end}_eigenvalue"), half[0]),
                        (getattr(p[0], f"{end}_eigenvalue"), half[1]), level)
                    if verdict:
                        text = (f"depth {depth}: {first.label} "
                                f"{_ci_text(getattr(r[0], f'{end}_eigenvalue'), half[0])} vs "
                                f"{second.label} "
                                f"{_ci_text(getattr(p[0], f'{end}_eigenvalue'), half[1])} "
                                f"({verdict})")
            pairs.append(text)
        mark = f"Numbers marked {UNCONVERGED_MARK} in the sharpness table did not converge."
        if resolved:
            lines.append(f"{what} at each depth: " + "; ".join(pairs) + "."
                         + (f" {mark}" if unresolved else ""))
        elif unresolved:
            lines.append(f"{what}: not resolved at any depth: {_steps(steps)} Lanczos steps did "
                         f"not converge for {', '.join(unresolved)}. {mark}")
    return lines


def _steps(steps: set[int]) -> str:
    ordered = sorted(steps)
    return str(ordered[0]) if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"


# ---------------------------------------------------------------------------------------
# Building the report


def build_blocks(result, budget, settings: dict) -> list:
    """The report's content, in order, from a :class:`depthscape.study.runner.StudyResult`."""
    from depthscape.analysis.sharpness import sharpness_table

    out = Path(result.out_dir)
    blocks: list = [Heading("depthscape study report", 1)]
    metrics = result.metrics
    seeds = settings.get("seeds", 1)
    sizes = ""
    if metrics:
        sizes = (f" Table 1 evaluates {metrics[0].train_size} training and "
                 f"{metrics[0].test_size} test images per model.")
    blocks.append(Paragraph(
        f"Budget `{budget.name}` ({budget.description}): ResNet/PlainNet trained for "
        f"{budget.iterations('resnet20')}, the CNN for {budget.iterations('cnn')}, on "
        f"{budget.train_subset or 'all'} training images; {seeds} seed(s) per model; dataset "
        f"`{settings.get('dataset')}`.{sizes} Generated {time.strftime('%Y-%m-%d %H:%M')}."))
    facts = observations(metrics, result.sharpness, getattr(result, "flatness", None))
    if facts:
        blocks += [Heading("Observations"), Bullets(facts)]
    if budget.name != "paper":
        blocks.append(Paragraph(
            "These numbers come from a shortened schedule: absolute accuracies are far below "
            "the spec's 64,000-iteration results; compare models with each other, not with "
            "the paper's tables."))
    if metrics:
        blocks += [Heading("Table 1: final training vs. test performance"),
                   TableBlock(table1(metrics), "Evaluated from each final checkpoint in eval "
                              "mode, without augmentation.")]
        blocks += [Heading("Table 2: generalization by depth and training time"),
                   TableBlock(table2(metrics), "Time: training wall-clock; ratio: relative to "
                              "the shallowest depth of the family; gain: test-accuracy points "
                              "over it.")]
    if result.sharpness:
        blocks += [Heading("Sharpness of the minima"),
                   TableBlock(sharpness_table(result.sharpness),
                              f"Hessian of the training loss on {budget.sharpness_subset} "
                              "training images, BatchNorm in eval mode: the largest and the "
                              "smallest (algebraic) eigenvalue by Lanczos, the trace by "
                              "Hutchinson's estimator.")]
    figures = {f.key: f for f in result.figures}
    curve_blocks = []
    for family in families():  # the spec's Figures 1-3, then any other family's
        number = f"Figure {family.figure}: " if family.figure else ""
        caption = (f"{number}{family.plural_label} at every depth" if family.has_depth else
                   f"{number}baseline {family.label}, training vs validation")
        if family.prefix in figures:
            curve_blocks.append(_figure(figures[family.prefix], caption))
    for first, second in pairs():
        prefix = f"{first.prefix}_vs_{second.prefix}_"
        for key in sorted((k for k in figures if k.startswith(prefix)
                           and k[len(prefix):].isdigit()), key=lambda k: int(k[len(prefix):])):
            curve_blocks.append(_figure(figures[key], figures[key].title))
    per_run = [_figure(f, f.title) for key, f in figures.items() if key.startswith("run_")]
    if curve_blocks or per_run:
        blocks += [Heading("Training curves"), Paragraph(
            "Exponential-moving-average smoothed; epochs for the CNN, iterations for the "
            "ResNets and PlainNets."), *curve_blocks]
    if per_run:
        blocks += [Heading("Every model on its own (raw values faint, smoothed bold)", 3),
                   FigureGrid(per_run)]
    if result.landscapes:
        contours = [FigureBlock(p, display_name(ls.model)) for ls in result.landscapes
                    if (p := ls.plot("contour"))]
        surfaces = [FigureBlock(p, display_name(ls.model)) for ls in result.landscapes
                    if (p := ls.plot("surface3d"))]
        blocks += [Heading("Loss landscapes"), Paragraph(
            f"log10 of the test loss on {budget.landscape_subset or 'all'} test images over a "
            f"{budget.landscape_resolution}x{budget.landscape_resolution} grid of "
            "filter-normalised random directions, alpha and beta in [-1, 1], BatchNorm "
            "parameters left unperturbed.")]
        if contours:
            blocks += [Heading("Figure 4: 2-D loss contours", 3), FigureGrid(contours)]
        if surfaces:
            blocks += [Heading("Figure 5: 3-D loss surfaces", 3), FigureGrid(surfaces)]
        blocks.append(Heading("Interactive 3-D surfaces", 3))
        blocks += [SurfaceBlock(ls, display_name(ls.model)) for ls in result.landscapes]
    blocks += _view_blocks(result, budget)
    blocks += _spectrum_blocks(result, budget)
    for note in result.notes:
        blocks.append(Paragraph(f"Note: {note}"))
    blocks += [Heading("How this report was made"), _budget_table(budget)]
    if result.timings:
        steps = ", ".join(f"{k} {format_duration(v)}" for k, v in result.timings.items()
                          if k != "report")
        blocks.append(Paragraph(f"Time spent by this call of the study: {steps} (steps already "
                                "done by an earlier call are reused, not repeated)."))
    blocks.append(Paragraph(f"Everything lies under `{out}`: `logs/` (CSV training logs), "
                            "`models/` (checkpoints), `plots/`, `tables/` (Markdown and CSV), "
                            "`landscapes/` (HDF5 surfaces, interactive pages), `sharpness/` "
                            "(with the densities), `flatness/`."))
    return blocks


def _view_blocks(result, budget) -> list:
    """Optimization trajectories (ResNet | PlainNet per depth) and the curvature maps."""
    blocks: list = []
    drawn = getattr(result, "trajectory_pairs", [])
    if drawn:
        blocks += [Heading("Optimization trajectories"), Paragraph(
            f"Each run's weights were kept about {budget.snapshots} times during training; the "
            "path is projected on the two principal directions of the snapshots' differences to "
            "the final weights (explained variance in the axis labels), over log10 of the test "
            f"loss on {budget.trajectory_subset or 'all'} test images "
            f"({budget.trajectory_resolution}x{budget.trajectory_resolution} grid over the span "
            "of the path). Square: start; star: final weights.")]
        titles = getattr(result, "trajectory_titles", {})
        blocks += [FigureBlock(png, titles.get(png, f"depth {depth}")) for depth, png in drawn]
    grid = getattr(result, "curvature_grid", None)
    if grid is not None and Path(grid).exists():
        blocks += [Heading("Curvature maps"), Paragraph(
            f"|λmin/λmax| of the Hessian of the training loss on {budget.curvature_subset} "
            f"training images at each point of a {budget.curvature_resolution}x"
            f"{budget.curvature_resolution} grid over the landscape's plane ({budget.curvature_iters} "
            "Lanczos steps per point, BatchNorm in eval mode), on one colour scale: dark = "
            "locally convex, bright = strong negative curvature. Titles give the share of the "
            "grid that is locally convex (λmin ≥ -1% of λmax)."),
            FigureBlock(Path(grid), "Curvature maps, one colour scale")]
    return blocks


def _spectrum_blocks(result, budget) -> list:
    """The eigenvalue density (ResNet vs PlainNet per depth) and flatness with error bars."""
    from depthscape.analysis.landscape.flatness import flatness_table

    blocks: list = []
    pairs = [(depth, png) for depth, png in getattr(result, "density_pairs", [])
             if Path(png).exists()]
    if pairs:
        blocks += [Heading("Hessian eigenvalue density"), Paragraph(
            f"Stochastic Lanczos quadrature (Ghorbani et al. 2019): {budget.density_runs} "
            f"Lanczos run(s) of {budget.density_steps} steps from random starts on the "
            f"Hessian of the training loss on {budget.sharpness_subset} training images "
            "(BatchNorm in eval mode), Gaussian-broadened, on a log density axis; seed 0. "
            "Mass far from zero: directions of strong curvature (right: upward, left: the "
            "loss still descends). Few steps resolve the outliers and the bulk's outline, "
            "not the bulk's detail."),
            FigureGrid([FigureBlock(Path(png), f"ResNet-{depth} vs PlainNet-{depth}")
                        for depth, png in pairs])]
    flatness = getattr(result, "flatness", [])
    if flatness:
        first = flatness[0][1]
        level = round(100 * first.confidence)
        blocks += [Heading("Flatness with error bars"), Paragraph(
            f"{budget.flatness_directions} filter-normalised random directions per model "
            f"(BatchNorm and biases untouched), the test loss on "
            f"{budget.flatness_subset or 'all'} test images at {budget.flatness_points} steps "
            f"over [-1, 1] (plus ±{first.radius:g}) along each. Loss rise: the mean of the loss "
            f"at ±{first.radius:g} minus the minimum's; doubling radius: the step where the "
            f"loss first reaches twice the minimum's. Each is the mean ± the {level}% "
            "Student-t interval over the directions: a ResNet/PlainNet difference is real "
            "only where the intervals do not overlap."),
            TableBlock(flatness_table(flatness))]
        figure = getattr(result, "flatness_figure", None)
        if figure is not None and Path(figure).exists():
            blocks.append(FigureBlock(Path(figure), "Both measures by depth, mean ± "
                                      f"{level}% CI over the directions"))
        bands = [FigureBlock(png, display_name(run.model)) for run, _ in flatness
                 if getattr(run, "seed", 0) == 0 and (png := Path(result.out_dir) / "flatness"
                                                      / f"{run.paths.run_name}.flatness.png"
                                                      ).exists()]
        if bands:
            blocks += [Heading("The slices of each model (band: mean ± CI, and min to max)", 3),
                       FigureGrid(bands)]
    return blocks


def _figure(figure, caption: str) -> FigureBlock:
    png = next(p for p in figure.paths if p.suffix == ".png")
    others = [(p.suffix[1:].upper(), p) for p in figure.paths if p.suffix != ".png"]
    return FigureBlock(png, caption, others)


def _budget_table(budget) -> TableBlock:
    rows = [
        ["ResNet/PlainNet training", f"{budget.iterations('resnet20')} (scale {budget.scale:g} "
                                     "of the spec's 64,000)"],
        ["CNN training", f"{budget.iterations('cnn')} (scale {budget.cnn_scale:g} of 50)"],
        ["training images", str(budget.train_subset or "all")],
        ["test images during training", str(budget.test_subset or "all")],
        ["Table 1 images (train / test)", f"{budget.table_train_limit or 'all'} / "
                                          f"{budget.table_test_limit or 'all'}"],
        ["landscape grid", f"{budget.landscape_resolution}x{budget.landscape_resolution} on "
                           f"{budget.landscape_subset or 'all'} test images"],
        ["sharpness", f"{budget.sharpness_subset} training images, <= "
                      f"{budget.sharpness_power_iters} Lanczos steps, <= "
                      f"{budget.sharpness_trace_samples} Hutchinson probes"],
    ]
    if getattr(budget, "density_runs", 0) and getattr(budget, "density_steps", 0):
        rows.append(["eigenvalue density", f"{budget.density_runs} Lanczos runs x "
                     f"{budget.density_steps} steps on the sharpness images"])
    if getattr(budget, "flatness_directions", 0):
        rows.append(["flatness", f"{budget.flatness_directions} random 1-D slices x "
                     f"{budget.flatness_points} points on "
                     f"{budget.flatness_subset or 'all'} test images"])
    table = Table("Budget", ["Setting", f"{budget.name}"], rows, ["setting", "value"], rows)
    return TableBlock(table)


# ---------------------------------------------------------------------------------------
# Markdown


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def render_markdown(blocks: Sequence, base: Path) -> str:
    """The blocks as GitHub-flavoured Markdown; figures linked relative to ``base``."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, TableBlock):
            parts.append(block.table.markdown().rstrip()
                         + (f"\n\n*{block.caption}*" if block.caption else ""))
        elif isinstance(block, FigureBlock):
            parts.append(_md_figure(block, base))
        elif isinstance(block, FigureGrid):
            parts.append("\n\n".join(_md_figure(f, base) for f in block.figures))
        elif isinstance(block, SurfaceBlock):
            ls = block.landscape
            link = f"[interactive 3-D page]({_rel(ls.html, base)})" if ls.html else ""
            parts.append(f"- {block.caption}: {link} (surface data: `{_rel(ls.surface, base)}`)")
    return "\n\n".join(parts) + "\n"


def _md_figure(block: FigureBlock, base: Path) -> str:
    extra = "".join(f" ([{name}]({_rel(path, base)}))" for name, path in block.links)
    return f"![{block.caption}]({_rel(block.path, base)})\n\n*{block.caption}*{extra}"


# ---------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#1d2330;background:#fff;line-height:1.5}
h1{border-bottom:2px solid #1d2330;padding-bottom:.3rem}
h2{margin-top:2.2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ccd;padding:.3rem .6rem;text-align:right}
th{background:#eef0f6}td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #e3e5ea}
figcaption{font-style:italic;color:#445}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:1rem}
.surface{height:520px;border:1px solid #e3e5ea}
code{background:#f2f3f7;padding:0 .2rem;border-radius:3px}
.caption{font-style:italic;color:#445;margin-top:0}
.note{font-size:.88rem;color:#445;margin:.2rem 0}
"""


def _inline(text: str) -> str:
    """Escape ``text`` and turn `code` spans into <code>."""
    pieces = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                   for i, p in enumerate(pieces))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _html_table(block: TableBlock) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.table.header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in block.table.rows)
    notes = "".join(f'<p class="note">{_inline(note)}</p>' for note in block.table.notes)
    caption = f'<p class="caption">{_inline(block.caption)}</p>' if block.caption else ""
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{notes}"
            f"{caption}")


def _html_figure(block: FigureBlock) -> str:
    return (f'<figure><img alt="{html.escape(block.caption)}" src="{_data_uri(block.path)}">'
            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")


def surface_figure_json(surface: dict, title: str) -> dict:
    """A plotly figure (as JSON-able dict) of a 2-D surface's log10 loss, or a 1-D curve."""
    loss = np.array(surface["loss"], dtype=np.float64)
    finite = np.isfinite(loss)
    loss[~finite] = np.nanmax(loss[finite]) if finite.any() else 1.0
    loss = np.log10(np.maximum(loss, 1e-12))  # the loss spans many orders of magnitude
    x = np.asarray(surface["x"], dtype=np.float64).tolist()
    if surface.get("dims", 2) == 2 and surface.get("y") is not None:
        data = [{"type": "surface", "x": x, "y": np.asarray(surface["y"], dtype=np.float64).tolist(),
                 "z": loss.tolist(), "colorscale": "Viridis",
                 "colorbar": {"title": {"text": f"log10 {surface.get('split', 'test')} loss"}}}]
        layout = {"scene": {"xaxis": {"title": {"text": "alpha"}},
                            "yaxis": {"title": {"text": "beta"}},
                            "zaxis": {"title": {"text": "log10 loss"}}}}
    else:
        data = [{"type": "scatter", "x": x, "y": loss.tolist(), "mode": "lines+markers"}]
        layout = {"xaxis": {"title": {"text": "alpha"}}, "yaxis": {"title": {"text": "log10 loss"}}}
    layout.update({"title": {"text": title}, "margin": {"l": 0, "r": 0, "t": 40, "b": 0},
                   "template": None})
    return {"data": data, "layout": layout}


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_html(blocks: Sequence, title: str = "depthscape study report") -> str:
    """The blocks as one self-contained HTML page (figures inline, plotly.js inline once)."""
    from depthscape.analysis.landscape import read_surface

    body, scripts = [], []
    surfaces = 0
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            body.append(_html_table(block))
        elif isinstance(block, FigureBlock):
            body.append(_html_figure(block))
        elif isinstance(block, FigureGrid):
            body.append('<div class="grid">' + "".join(_html_figure(f) for f in block.figures)
                        + "</div>")
        elif isinstance(block, SurfaceBlock):
            surfaces += 1
            div = f"surface-{surfaces}"
            figure = surface_figure_json(read_surface(block.landscape.surface), block.caption)
            body.append(f'<div id="{div}" class="surface" data-model="'
                        f'{html.escape(block.landscape.model)}"></div>')
            scripts.append(f"draw({json.dumps(div)}, {_json(figure)});")
    script = ""
    if scripts:
        script = (f"<script>{_plotly_js()}</script>\n<script>\n"
                  "function draw(id, fig) {\n"
                  "  Plotly.newPlot(id, fig.data, fig.layout, {responsive: true});\n"
                  "}\n" + "\n".join(scripts) + "\n</script>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n{script}\n</body></html>\n")


def _json(value) -> str:
    """JSON safe to put inside a <script> element."""
    text = json.dumps(value, allow_nan=False, default=_finite)
    return text.replace("</", "<\\/")


def _finite(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot encode {type(value).__name__}")


def write_report(result, budget, settings: dict) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a study result; returns both paths."""
    blocks = build_blocks(result, budget, settings)
    out = Path(result.out_dir)
    atomic_write_text(result.report_md, render_markdown(blocks, out))
    atomic_write_text(result.report_html, render_html(blocks))
    return result.report_md, result.report_html
