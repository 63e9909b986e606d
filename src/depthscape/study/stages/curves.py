"""Training curves: the spec's Figures 1-3, each ResNet/PlainNet pair and each run alone."""

from __future__ import annotations

from depthscape.analysis.curves import standard_figures
from depthscape.core.models import families, pairs
from depthscape.study.blocks import FigureGrid, Heading, Paragraph, figure_block
from depthscape.study.stages.base import Stage


class CurvesStage(Stage):
    name = "curves"
    order = 20
    report_order = 30

    def run(self, study) -> None:
        out = study.out
        study.result.figures = standard_figures(out, out / "plots", models=study.models, seed=0,
                                                dataset=study.dataset.name, reuse=True)

    def blocks(self, result, budget) -> list:
        figures = {f.key: f for f in result.figures}
        curve_blocks = []
        for family in families():  # the spec's Figures 1-3, then any other family's
            number = f"Figure {family.figure}: " if family.figure else ""
            caption = (f"{number}{family.plural_label} at every depth" if family.has_depth else
                       f"{number}baseline {family.label}, training vs validation")
            if family.prefix in figures:
                curve_blocks.append(figure_block(figures[family.prefix], caption))
        for first, second in pairs():
            prefix = f"{first.prefix}_vs_{second.prefix}_"
            for key in sorted((k for k in figures if k.startswith(prefix)
                               and k[len(prefix):].isdigit()), key=lambda k: int(k[len(prefix):])):
                curve_blocks.append(figure_block(figures[key], figures[key].title))
        per_run = [figure_block(f, f.title) for key, f in figures.items() if key.startswith("run_")]
        blocks: list = []
        if curve_blocks or per_run:
            blocks += [Heading("Training curves"), Paragraph(
                "Exponential-moving-average smoothed; epochs for the CNN, iterations for the "
                "ResNets and PlainNets."), *curve_blocks]
        if per_run:
            blocks += [Heading("Every model on its own (raw values faint, smoothed bold)", 3),
                       FigureGrid(per_run)]
        return blocks


STAGE = CurvesStage()
