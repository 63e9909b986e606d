"""Loss landscapes: each model's (seed 0) surface, its drawings and its interactive 3-D page."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from depthscape.analysis.curves import display_name
from depthscape.analysis.landscape import LandscapeConfig, plot_landscape
from depthscape.study.blocks import (
    FigureBlock,
    FigureGrid,
    Heading,
    Landscape,
    Paragraph,
    SurfaceBlock,
)
from depthscape.study.stages.base import Stage, is_fresh

#: The landscape drawings a study makes: the spec's contour (Figure 4) and 3-D surface
#: (Figure 5), plus filled contours. All of log10(loss): away from the minimum the loss
#: grows by many orders of magnitude (1e7 at the corners of a short-trained ResNet-110's
#: grid, 1e20 for PlainNet-110), which on a linear scale flattens every basin to one colour.
LANDSCAPE_KINDS = ("contour", "contourf", "surface3d")


def _grid(resolution: int, subset: int | None) -> LandscapeConfig:
    """The study's surfaces: ``resolution``² points of filter-normalised random directions
    over [-1, 1]², the test loss on ``subset`` images (None: all)."""
    return LandscapeConfig(resolution=resolution, xrange=(-1.0, 1.0), yrange=(-1.0, 1.0),
                           split="test", subset=subset, seed=0, norm="filter")


class LandscapesStage(Stage):
    name = "landscapes"
    per_model = True
    order = 40
    report_order = 40
    # paper: Li et al.'s 51x51 grid on the whole test set
    budgets = {"paper": _grid(51, None), "quick": _grid(11, 200), "smoke": _grid(5, 32)}
    numbers = {"landscape_resolution": "resolution", "landscape_subset": "subset"}
    skip_help = "skip the loss landscapes"
    folders = ("plots/landscapes", "landscapes")

    def run(self, study) -> None:
        try:
            from depthscape.analysis.landscape import (
                compute_landscape,
                write_interactive_html,
            )
        except ImportError as error:
            study.result.notes.append(
                f"loss landscapes skipped: the landscape module is unavailable ({error})")
            return
        out, config = study.out, study.config
        grid = study.budget.landscapes
        surface_config = replace(grid, device=config.device, precision=config.landscape_precision)
        for run in study.finished_runs(first_seed_only=True):
            study.say(f"landscape of {run.paths.run_name} "
                      f"({grid.resolution}x{grid.resolution})")
            surface = Path(compute_landscape(
                run.paths.final, surface_config, output=out / "landscapes" /
                f"{run.paths.run_name}.h5", dataset=study.dataset, progress=config.progress))
            plots = _drawings(surface, out / "plots" / "landscapes")
            html = out / "landscapes" / f"{run.paths.run_name}_3d.html"
            if not is_fresh(html, [surface]):
                write_interactive_html(surface, html, log_scale=True)
            study.result.landscapes.append(
                Landscape(run.model, run.paths.run_name, surface, plots, html))

    def blocks(self, result, budget) -> list:
        if not result.landscapes:
            return []
        grid = budget.landscapes
        contours = [FigureBlock(p, display_name(ls.model)) for ls in result.landscapes
                    if (p := ls.plot("contour"))]
        surfaces = [FigureBlock(p, display_name(ls.model)) for ls in result.landscapes
                    if (p := ls.plot("surface3d"))]
        blocks = [Heading("Loss landscapes"), Paragraph(
            f"log10 of the test loss on {grid.subset or 'all'} test images over a "
            f"{grid.resolution}x{grid.resolution} grid of "
            "filter-normalised random directions, alpha and beta in [-1, 1], BatchNorm "
            "parameters left unperturbed.")]
        if contours:
            blocks += [Heading("Figure 4: 2-D loss contours", 3), FigureGrid(contours)]
        if surfaces:
            blocks += [Heading("Figure 5: 3-D loss surfaces", 3), FigureGrid(surfaces)]
        blocks.append(Heading("Interactive 3-D surfaces", 3))
        blocks += [SurfaceBlock(ls, display_name(ls.model)) for ls in result.landscapes]
        return blocks

    def budget_rows(self, budget) -> list[list[str]]:
        grid = budget.landscapes
        return [["landscape grid", f"{grid.resolution}x{grid.resolution} on "
                                   f"{grid.subset or 'all'} test images"]]

    def describe(self, budget) -> str:
        grid = budget.landscapes
        return (f"landscape {grid.resolution}x{grid.resolution} on "
                f"{grid.subset or 'all'} test images")


def _drawings(surface: Path, plot_dir: Path) -> list[Path]:
    """The surface's drawings: those on disk where every kind's PNG is fresh, else drawn."""
    pngs = [plot_dir / f"{surface.stem}_loss_log_{kind}.png" for kind in LANDSCAPE_KINDS]
    if all(is_fresh(png, [surface]) for png in pngs):
        return [p for p in sorted(plot_dir.glob(f"{surface.stem}_loss_log_*"))
                if p.stem.rsplit("_", 1)[-1] in LANDSCAPE_KINDS]
    return [Path(p) for p in plot_landscape(surface, plot_dir, kinds=list(LANDSCAPE_KINDS),
                                            log_scale=True)]


STAGE = LandscapesStage()
