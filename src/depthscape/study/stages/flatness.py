"""Flatness with error bars: K random 1-D slices through every finished minimum; the table,
each run's band and both measures by depth (issue 18)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from depthscape.analysis.curves import display_name
from depthscape.analysis.landscape.flatness import (
    FlatnessConfig,
    flatness_table,
    measure_run_flatness,
    plot_flatness_by_depth,
)
from depthscape.analysis.tables import write_table
from depthscape.study.blocks import FigureBlock, FigureGrid, Heading, Paragraph, TableBlock
from depthscape.study.stages.base import Stage, is_fresh


def _slices(directions: int, points: int, subset: int | None) -> FlatnessConfig:
    """``directions`` slices of ``points`` steps over [-1, 1] on ``subset`` test images."""
    return FlatnessConfig(directions=directions, points=points, split="test", subset=subset,
                          batch_size=min(subset or 1000, 1000), seed=0)


class FlatnessStage(Stage):
    name = "flatness"
    per_model = True
    order = 90
    report_order = 80
    # 0 directions: none; quick sized from the landscapes' measured cost (docs/study.md): ~1 min
    budgets = {"paper": _slices(10, 41, None), "quick": _slices(5, 11, 100),
               "smoke": _slices(2, 3, 32)}
    numbers = {"flatness_directions": "directions", "flatness_points": "points",
               "flatness_subset": "subset"}
    skip_help = "skip the random 1-D slices with error bars (flatness)"
    folders = ("plots/flatness", "flatness")

    def wanted(self, study) -> bool:
        return super().wanted(study) and bool(study.budget.flatness.directions)

    def run(self, study) -> None:
        out, result, slices = study.out, study.result, study.budget.flatness
        finished = study.finished_runs()
        if not finished:
            return
        study.say(f"flatness: {slices.directions} random 1-D slices of "
                  f"{slices.points} points per run")
        found = measure_run_flatness(out, out / "flatness", sorted({r.model for r in finished}),
                                     replace(slices, device=study.config.device),
                                     {"dataset": study.dataset}, progress=study.config.progress)
        wanted = {(r.model, r.seed) for r in finished}
        result.flatness = [(run, f) for run, f in found if (run.model, run.seed) in wanted]
        if not result.flatness or study.partial:  # the table and figure: a whole study's
            return
        write_table(flatness_table(result.flatness), out / "flatness", "flatness")
        png = out / "plots" / "flatness" / "flatness_by_depth.png"
        if not is_fresh(png, [out / "flatness" / f"{run.paths.run_name}.flatness.json"
                              for run, _ in result.flatness]):
            png.parent.mkdir(parents=True, exist_ok=True)
            plot_flatness_by_depth(result.flatness, png)
        result.flatness_figure = png

    def blocks(self, result, budget) -> list:
        flatness, slices = result.flatness, budget.flatness
        if not flatness:
            return []
        first = flatness[0][1]
        level = round(100 * first.confidence)
        blocks = [Heading("Flatness with error bars"), Paragraph(
            f"{slices.directions} filter-normalised random directions per model "
            f"(BatchNorm and biases untouched), the test loss on "
            f"{slices.subset or 'all'} test images at {slices.points} steps "
            f"over [-1, 1] (plus ±{first.radius:g}) along each. Loss rise: the mean of the loss "
            f"at ±{first.radius:g} minus the minimum's; doubling radius: the step where the "
            f"loss first reaches twice the minimum's. Each is the mean ± the {level}% "
            "Student-t interval over the directions: a ResNet/PlainNet difference is real "
            "only where the intervals do not overlap."),
            TableBlock(flatness_table(flatness))]
        figure = result.flatness_figure
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

    def budget_rows(self, budget) -> list[list[str]]:
        slices = budget.flatness
        if not slices.directions:
            return []
        return [["flatness", f"{slices.directions} random 1-D slices x {slices.points} points "
                             f"on {slices.subset or 'all'} test images"]]

    def describe(self, budget) -> str:
        return f"flatness {budget.flatness.directions} slices x {budget.flatness.points} points"


STAGE = FlatnessStage()
