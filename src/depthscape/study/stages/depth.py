"""Where in depth: each ResNet-D / PlainNet-D pair's gradient flow (the layer files training
writes), drawn and compared, so the report tests the spec's "vanishing gradients" (8.5-8.6)
instead of repeating it. The numbers: :mod:`depthscape.analysis.gradient_flow`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from depthscape.analysis.gradient_flow import WINDOW, FlowRow, flow_rows
from depthscape.analysis.layer_curves import layer_file_for, load_layer_flow, plot_layer_flows
from depthscape.analysis.stats import format_ci
from depthscape.analysis.tables import Table
from depthscape.core.models import model_info, present_pairs
from depthscape.study.blocks import Bullets, FigureBlock, Heading, Paragraph, TableBlock
from depthscape.study.observations import compare_intervals
from depthscape.study.stages.base import Stage, is_fresh


@dataclass
class PairFlow:
    """One depth's pair: the figure (seed 0) and each model's rows (every seed)."""

    depth: int
    labels: tuple[str, str]
    png: Path
    rows: tuple[list[FlowRow], list[FlowRow]]


class DepthStage(Stage):
    name = "depth"
    order = 25  # after the training and its curves; it reads the layer files only
    report_order = 35  # after the training curves
    skip_help = "skip the gradient-flow figures and comparison (where in depth)"
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

    def blocks(self, result, budget) -> list:
        if not result.gradient_flow:
            return []
        blocks: list = [Heading("Where in depth: gradient flow"), Paragraph(
            "Training recorded each layer's gradient norm, averaged over the steps between "
            "log rows (`logs/<run>_layers.csv`; docs/depth.md). The heatmaps show log10 of it, "
            "input at the top; the profile shows it against relative depth at the first log "
            "row, the last before each learning-rate decay and the last. The table compares "
            "the early layers (the stem and the first stage; geometric mean of their norms) "
            "and the late ones (the last stage and the head) as log10, each the mean over "
            f"{WINDOW} log rows at that point, with its 95% interval over the seeds, or over "
            "those rows where there is one seed (correlated rows: narrower than a seed's "
            "interval would be). A difference is called significant only where the "
            "intervals do not overlap.")]
        for pair in result.gradient_flow:
            blocks.append(FigureBlock(pair.png, f"Gradient flow, {pair.labels[0]} vs "
                                                f"{pair.labels[1]}"))
        blocks.append(TableBlock(flow_table(result.gradient_flow)))
        return blocks + [Bullets(flow_observations(result.gradient_flow))]


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


STAGE = DepthStage()
