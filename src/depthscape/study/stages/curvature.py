"""Curvature maps: |λmin/λmax| over each landscape's plane, stored in its surface file, and
all of them on one colour scale."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from depthscape.analysis.landscape.curvature import (
    CurvatureConfig,
    compute_curvature,
    plot_curvature,
    plot_curvature_grid,
)
from depthscape.study.blocks import FigureBlock, Heading, Paragraph, View
from depthscape.study.stages.base import Stage, is_fresh


def _map(resolution: int, subset: int, iterations: int) -> CurvatureConfig:
    """``resolution``² points, the Hessian of the training loss on ``subset`` images, at most
    ``iterations`` Lanczos steps per point."""
    return CurvatureConfig(resolution=resolution, split="train", subset=subset,
                           iterations=iterations, batch_size=min(subset, 256))


class CurvatureStage(Stage):
    name = "curvature"
    per_model = True
    after = ("landscapes",)  # maps of the landscapes' planes
    order = 70
    report_order = 60
    # quick: sized with the trajectories to ~5 min together (docs/study.md)
    budgets = {"paper": _map(11, 1000, 20), "quick": _map(5, 16, 4), "smoke": _map(2, 8, 3)}
    numbers = {"curvature_resolution": "resolution", "curvature_subset": "subset",
               "curvature_iters": "iterations"}
    skip_help = "skip the curvature maps"
    folders = ("plots/curvature",)

    def wanted(self, study) -> bool:
        return super().wanted(study) and bool(study.result.landscapes)  # maps of their planes

    def planned(self, study) -> bool:  # before the landscapes ran: where they will
        return super().wanted(study) and study.switched_on("landscapes")

    def run(self, study) -> None:
        result, grid = study.result, study.budget.curvature
        finals = {run.paths.run_name: run.paths.final for run in study.runs}
        config = replace(grid, device=study.config.device)
        plot_dir = study.out / "plots" / "curvature"
        for landscape in result.landscapes:
            study.say(f"curvature map of {landscape.run_name} "
                      f"({grid.resolution}x{grid.resolution})")
            # the study owns its surface files: a map of other settings (an earlier version's,
            # another budget's) is recomputed, one with these settings kept or finished
            surface = Path(compute_curvature(landscape.surface, finals[landscape.run_name],
                                             config, study.dataset, progress=study.config.progress,
                                             overwrite="other-settings"))
            png = plot_dir / f"{surface.stem}_curvature.png"
            if not is_fresh(png, [surface]):
                plot_curvature(surface, plot_dir)
            result.curvature.append(View(landscape.model, landscape.run_name, surface, png))
        if result.curvature and not study.partial:  # all maps: a whole study's
            png = plot_dir / "curvature_maps.png"
            if not is_fresh(png, [v.data for v in result.curvature]):
                plot_curvature_grid([(v.model, v.data) for v in result.curvature],
                                    png.with_suffix(""))
            result.curvature_grid = png

    def blocks(self, result, budget) -> list:
        grid = result.curvature_grid
        if grid is None or not Path(grid).exists():
            return []
        maps = budget.curvature
        return [Heading("Curvature maps"), Paragraph(
            f"|λmin/λmax| of the Hessian of the training loss on {maps.subset} "
            f"training images at each point of a {maps.resolution}x"
            f"{maps.resolution} grid over the landscape's plane ({maps.iterations} "
            "Lanczos steps per point, BatchNorm in eval mode), on one colour scale: dark = "
            "locally convex, bright = strong negative curvature. Titles give the share of the "
            "grid that is locally convex (λmin ≥ -1% of λmax)."),
            FigureBlock(Path(grid), "Curvature maps, one colour scale")]


STAGE = CurvatureStage()
