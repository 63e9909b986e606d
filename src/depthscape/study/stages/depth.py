"""Where in depth: each ResNet-D / PlainNet-D pair's gradient flow (the layer files training
writes) and curvature per stage (the block traces and block λmax the sharpness stage
measured with ``blocks="stage"``), drawn and compared, so the report tests the spec's
"vanishing gradients" and "high-curvature regions" (8.5-8.6) instead of repeating them.
The numbers: :mod:`depthscape.analysis.gradient_flow`, :mod:`depthscape.analysis.
block_profiles`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from depthscape.analysis.block_profiles import (
    BlockProfileRow,
    block_profile,
    has_blocks,
    plot_block_profiles,
)
from depthscape.analysis.gradient_flow import WINDOW, FlowRow, flow_rows
from depthscape.analysis.hessian import UNCONVERGED_MARK
from depthscape.analysis.layer_curves import layer_file_for, load_layer_flow, plot_layer_flows
from depthscape.analysis.measures.base import mark_unconverged
from depthscape.analysis.stats import format_ci
from depthscape.analysis.tables import Table, write_table
from depthscape.core.models import model_info, present_pairs
from depthscape.study.blocks import Bullets, FigureBlock, Heading, Paragraph, TableBlock
from depthscape.study.observations import compare_intervals
from depthscape.study.stages.base import Stage, is_fresh
from depthscape.study.stages.sharpness import blocks_path


@dataclass
class PairFlow:
    """One depth's pair: the figure (seed 0) and each model's rows (every seed)."""

    depth: int
    labels: tuple[str, str]
    png: Path
    rows: tuple[list[FlowRow], list[FlowRow]]


@dataclass
class PairBlocks:
    """One depth's pair: the curvature-per-stage figure and each model's block rows (the
    mean over its seeds)."""

    depth: int
    labels: tuple[str, str]
    png: Path
    rows: tuple[list[BlockProfileRow], list[BlockProfileRow]]


class DepthStage(Stage):
    name = "depth"
    # after the sharpness stage: the layer files, and the block rows it measured
    order = 55
    report_order = 35  # after the training curves
    skip_help = ("skip the gradient-flow and per-stage curvature figures and comparison "
                 "(where in depth; the sharpness is then measured without per-stage blocks)")
    folders = ("plots/depth",)

    def run(self, study) -> None:
        by_model: dict[str, list] = {}
        for run in study.finished_runs():
            if layer_file_for(run.paths.log).is_file():
                by_model.setdefault(run.model, []).append(run)
        for found in present_pairs(by_model):
            runs = [by_model[name] for name in found.names]
            flows = [[load_layer_flow(run.paths.log) for run in group] for group in runs]
            png = study.out / "plots" / "depth" / f"{found.stem}_layers.png"
            if not is_fresh(png, [layer_file_for(group[0].paths.log) for group in runs]):
                plot_layer_flows([group[0] for group in flows], png.with_suffix(""), ("png",))
            labels = tuple(model_info(name).display_name for name in found.names)
            study.result.gradient_flow.append(PairFlow(
                found.depth, labels, png,
                tuple(flow_rows(name, group) for name, group in zip(found.names, flows))))
        self._block_profiles(study)

    @staticmethod
    def _block_profiles(study) -> None:
        """Each pair's curvature per stage, from the sharpness stage's block rows."""
        by_model: dict[str, list] = {}
        for run, result in study.result.sharpness:
            if has_blocks(result):
                by_model.setdefault(run.model, []).append((run, result))
        for found in present_pairs(by_model):
            groups = [by_model[name] for name in found.names]
            rows = tuple(block_profile(name, [r for _, r in group])
                         for name, group in zip(found.names, groups))
            if [r.block for r in rows[0]] != [r.block for r in rows[1]]:
                continue  # not the same stages: nothing to compare block by block
            labels = tuple(model_info(name).display_name for name in found.names)
            png = study.out / "plots" / "depth" / f"{found.stem}_blocks.png"
            sources = [blocks_path(study.out / "sharpness" / f"{run.paths.run_name}.json")
                       for group in groups for run, _ in group]
            if not is_fresh(png, [s for s in sources if s.exists()]):
                plot_block_profiles(labels, rows, png.with_suffix(""), ("png",))
            study.result.block_profiles.append(PairBlocks(found.depth, labels, png, rows))
        if study.result.block_profiles:
            write_table(block_table(study.result.block_profiles), study.out / "plots" / "depth",
                        "blocks")

    def blocks(self, result, budget) -> list:
        return self._flow_blocks(result) + self._curvature_blocks(result)

    @staticmethod
    def _curvature_blocks(result) -> list:
        return _section("Where in depth: curvature per stage", (
            "The sharpness stage also measured the Hessian's diagonal blocks H_bb of each "
            "stage (stem, the three stages, the head; `sharpness/<run>.blocks.json`; "
            "docs/depth.md): the block trace tr(H_bb) from the whole trace's own Hutchinson "
            "probes and the block's largest eigenvalue by Lanczos on H_bb. The trace's 95% "
            "interval is over the seeds, or over the probes where there is one seed; λmax's "
            "is over the seeds, and with one seed it has none (no bar, not compared). A "
            "difference is called significant only where the intervals do not overlap."),
            result.block_profiles, "Curvature per stage", block_table, block_observations)

    @staticmethod
    def _flow_blocks(result) -> list:
        return _section("Where in depth: gradient flow", (
            "Training recorded each layer's gradient norm, averaged over the steps between "
            "log rows (`logs/<run>_layers.csv`; docs/depth.md). The heatmaps show log10 of it, "
            "input at the top; the profile shows it against relative depth at the first log "
            "row, the last before each learning-rate decay and the last. The table compares "
            "the early layers (the stem and the first stage; geometric mean of their norms) "
            "and the late ones (the last stage and the head) as log10, each the mean over "
            f"{WINDOW} log rows at that point, with its 95% interval over the seeds, or over "
            "those rows where there is one seed (correlated rows: narrower than a seed's "
            "interval would be). A difference is called significant only where the "
            "intervals do not overlap."),
            result.gradient_flow, "Gradient flow", flow_table, flow_observations)


def _section(title: str, text: str, pairs: list, caption: str, table, observations) -> list:
    """One "Where in depth" section: its heading and text, each pair's figure, the table
    and the observations of ``pairs`` (nothing where there is no pair)."""
    if not pairs:
        return []
    figures = [FigureBlock(pair.png, f"{caption}, {pair.labels[0]} vs {pair.labels[1]}")
               for pair in pairs]
    return [Heading(title), Paragraph(text), *figures, TableBlock(table(pairs)),
            Bullets(observations(pairs))]


def _log_text(interval) -> str:
    return format_ci(interval.mean, interval.half, interval.n, places=2)


def _compared(pair: PairFlow) -> list[tuple[FlowRow, FlowRow, float, str]]:
    """Each phase of ``pair``: both models' rows, the second's early gradient over the
    first's and whether their intervals separate them (:func:`compare_intervals`; "" where
    either has none)."""
    return [(a, b, 10 ** (b.early.mean - a.early.mean),
             compare_intervals((a.early.mean, a.early.half), (b.early.mean, b.early.half)))
            for a, b in zip(*pair.rows)]


def flow_table(pairs: list[PairFlow]) -> Table:
    """Each depth and phase: both networks' early and late log10 gradient norms, the ratio
    of their early gradients, and whether the intervals separate them."""
    header = ["Depth", "Phase (iteration)", "ResNet early", "PlainNet early",
              "PlainNet / ResNet (early)", "ResNet early / late", "PlainNet early / late",
              "Difference", "Interval over"]
    csv_header = ["depth", "phase", "iteration", "first_model", "second_model",
                  "first_early_log10", "first_early_half", "second_early_log10",
                  "second_early_half", "first_late_log10", "second_late_log10", "n", "over"]
    rows, csv_rows = [], []
    for pair in pairs:
        for a, b, ratio, verdict in _compared(pair):
            rows.append([str(pair.depth), f"{a.phase} ({a.iteration})", _log_text(a.early),
                         _log_text(b.early), f"{ratio:.3g}x",
                         f"{10 ** (a.early.mean - a.late.mean):.3g}x",
                         f"{10 ** (b.early.mean - b.late.mean):.3g}x", verdict or "no interval",
                         f"{a.early.n} {a.early.over}"])
            csv_rows.append([pair.depth, a.phase, a.iteration, a.model, b.model, a.early.mean,
                             a.early.half, b.early.mean, b.early.half, a.late.mean, b.late.mean,
                             a.early.n, a.early.over])
    title = "Early-layer gradient norms (log10), ResNet-D against PlainNet-D"
    return Table(title, header, rows, csv_header, csv_rows, align_left=2)


def flow_observations(pairs: list[PairFlow]) -> list[str]:
    """At each depth and phase, whether PlainNet-D's early layers receive smaller gradients
    than ResNet-D's, and by how much: said as a difference only where the intervals
    separate the two."""
    lines = []
    for pair in pairs:
        first, second = pair.labels
        for a, _, ratio, verdict in _compared(pair):
            where = (a.phase if a.phase.startswith("before") else f"at the {a.phase}") + \
                f" (iteration {a.iteration})"
            if verdict.startswith("significant"):
                size = "smaller" if ratio < 1 else "larger"
                lines.append(f"{second}'s early layers receive {size} gradients than {first}'s "
                             f"{where}: {ratio:.3g}x ({verdict}).")
            elif verdict:
                lines.append(f"{second}'s and {first}'s early-layer gradients do not differ "
                             f"{where} beyond noise ({ratio:.3g}x; {verdict}).")
            else:
                lines.append(f"{second}'s early-layer gradients are {ratio:.3g}x {first}'s "
                             f"{where} (no interval: one log row).")
    return lines


def _value_text(interval) -> str:
    return f"{interval.mean:.4g} ± {interval.half:.2g}" if interval.half == interval.half \
        else f"{interval.mean:.4g}"


def _factor(first: float, second: float) -> str:
    """``second`` against ``first``: a ratio where both are positive, else the difference."""
    if first > 0 and second > 0:
        return f"{second / first:.3g}x"
    return f"{second - first:+.3g}"


def block_table(pairs: list[PairBlocks]) -> Table:
    """Each depth and stage: both networks' block trace and block λmax with their
    intervals, PlainNet's against ResNet's, and whether the intervals separate them."""
    header = ["Depth", "Stage", "ResNet trace", "PlainNet trace", "PlainNet / ResNet (trace)",
              "Trace difference", "ResNet λmax", "PlainNet λmax", "PlainNet / ResNet (λmax)",
              "λmax difference", "Trace interval over"]
    csv_header = ["depth", "stage", "first_model", "second_model", "first_trace",
                  "first_trace_half", "second_trace", "second_trace_half", "first_lambda_max",
                  "first_lambda_max_half", "second_lambda_max", "second_lambda_max_half",
                  "trace_over", "lambda_max_over", "first_lambda_max_converged",
                  "second_lambda_max_converged"]
    rows, csv_rows = [], []
    for pair in pairs:
        for a, b in zip(*pair.rows):
            rows.append([str(pair.depth), a.block, _value_text(a.trace), _value_text(b.trace),
                         _factor(a.trace.mean, b.trace.mean), _verdict(a.trace, b.trace),
                         _top_text(a), _top_text(b),
                         _factor(a.lambda_max.mean, b.lambda_max.mean),
                         _verdict(a.lambda_max, b.lambda_max) if _converged(a, b)
                         else "not converged",
                         f"{a.trace.n} {a.trace.over}"])
            csv_rows.append([pair.depth, a.block, a.model, b.model, a.trace.mean, a.trace.half,
                             b.trace.mean, b.trace.half, a.lambda_max.mean, a.lambda_max.half,
                             b.lambda_max.mean, b.lambda_max.half, a.trace.over,
                             a.lambda_max.over, a.lambda_max_converged,
                             b.lambda_max_converged])
    title = "Curvature per stage (Hessian diagonal blocks), ResNet-D against PlainNet-D"
    notes = [] if all(_converged(a, b) for pair in pairs for a, b in zip(*pair.rows)) else [
        f"{UNCONVERGED_MARK} Lanczos on H_bb did not converge within the budget's steps (for a "
        "seed at least), so not a result and not compared; steps and residuals are in "
        "sharpness/<run>.blocks.csv."]
    return Table(title, header, rows, csv_header, csv_rows, align_left=2, notes=notes)


def _converged(*rows: BlockProfileRow) -> bool:
    return all(row.lambda_max_converged for row in rows)


def _top_text(row: BlockProfileRow) -> str:
    return mark_unconverged(_value_text(row.lambda_max), row.lambda_max_converged)


def _verdict(first, second) -> str:
    return compare_intervals((first.mean, first.half), (second.mean, second.half)) \
        or "no interval"


def block_observations(pairs: list[PairBlocks]) -> list[str]:
    """At each depth, where (which stage) PlainNet-D's block trace and block λmax are larger
    or smaller than ResNet-D's and by what factor: stated only where the intervals separate
    the two; the stages within noise, and a quantity without intervals, said as such."""
    lines = []
    for pair in pairs:
        first, second = pair.labels
        for what, name, names in (("trace", "block trace", "block traces"),
                                  ("lambda_max", "block λmax", "block λmax")):
            noise, none, open_ = [], [], []
            for a, b in zip(*pair.rows):
                x, y = getattr(a, what), getattr(b, what)
                verdict = compare_intervals((x.mean, x.half), (y.mean, y.half))
                if what == "lambda_max" and not _converged(a, b):
                    open_.append(a.block)  # not a result: not compared
                elif verdict.startswith("significant"):
                    size = "larger" if y.mean > x.mean else "smaller"
                    lines.append(f"{second}'s {name} in {a.block} is {size} than {first}'s: "
                                 f"{_factor(x.mean, y.mean)} ({_value_text(y)} against "
                                 f"{_value_text(x)}; {verdict}).")
                else:
                    (noise if verdict else none).append(a.block)
            if noise:
                lines.append(f"{second}'s and {first}'s {names} do not differ beyond noise in "
                             f"{', '.join(noise)} (the 95% intervals overlap).")
            if none:
                over = "one seed" if what == "lambda_max" else "one probe"
                lines.append(f"{second}'s and {first}'s {names} in {', '.join(none)} are not "
                             f"compared: no interval ({over}; see the table).")
            if open_:
                lines.append(f"{second}'s and {first}'s {names} in {', '.join(open_)} are not "
                             "compared: Lanczos on H_bb did not converge within the budget "
                             f"({UNCONVERGED_MARK} in the table).")
    return lines


STAGE = DepthStage()
