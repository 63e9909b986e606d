"""The Hessian's eigenvalue density (SLQ) of each ResNet/PlainNet (seed 0) on the sharpness
images, and ResNet vs PlainNet on one axis at each depth (issue 18)."""

from __future__ import annotations

from pathlib import Path

from depthscape.analysis.curves import display_name
from depthscape.analysis.sharpness import DensityConfig, measure_density
from depthscape.analysis.spectrum_plots import plot_densities
from depthscape.core.models import model_depth, present_pairs
from depthscape.study.blocks import FigureBlock, FigureGrid, Heading, Paragraph
from depthscape.study.stages.base import Stage, is_fresh
from depthscape.study.stages.sharpness import measurement


class DensityStage(Stage):
    name = "density"
    per_model = True
    order = 80
    report_order = 70
    # runs x steps Hessian-vector products on the sharpness subset (0 runs: none); quick
    # sized from the sharpness stage's measured cost (docs/study.md): about 2.5 min; width
    # None: the Gaussian broadening from the bulk of the nodes (docs/spectrum.md)
    budgets = {"paper": DensityConfig(runs=3, steps=80, width=None),
               "quick": DensityConfig(runs=2, steps=8, width=None),
               "smoke": DensityConfig(runs=2, steps=3, width=None)}
    numbers = {"density_runs": "runs", "density_steps": "steps"}
    skip_help = "skip the Hessian's eigenvalue density (SLQ)"
    folders = ("plots/density",)

    def wanted(self, study) -> bool:
        density = study.budget.density
        return super().wanted(study) and bool(density.runs and density.steps)

    def run(self, study) -> None:
        density_config = study.budget.density
        by_model = {}
        for run in study.finished_runs(first_seed_only=True):
            # ResNets and PlainNets (a model of fixed depth, the CNN, has no pair to face)
            if model_depth(run.model) is None:
                continue
            study.say(f"eigenvalue density of {run.paths.run_name} "
                      f"({density_config.runs} x {density_config.steps} Lanczos steps)")
            density = measure_density(run.paths.final, measurement(study), density_config,
                                      study.dataset, _file(study.out, run),
                                      label=display_name(run.model))
            study.result.densities.append((run, density))
            by_model[run.model] = (run, density)
        self._pairs(study, by_model)

    def _pairs(self, study, by_model: dict) -> None:
        plot_dir = study.out / "plots" / "density"
        for found in present_pairs(by_model):  # a figure of a pairing needs both of its models
            pair = [by_model[m] for m in found.names]
            drawn = [(display_name(run.model), d) for run, d in pair if d.density]
            if not drawn:
                continue
            depth = found.depth
            png = plot_dir / f"{found.stem}_density.png"
            if not is_fresh(png, [_file(study.out, run) for run, _ in pair]):
                plot_dir.mkdir(parents=True, exist_ok=True)
                plot_densities(drawn, png, title=f"Hessian eigenvalue density at depth {depth}")
            study.result.density_pairs.append((depth, png))

    def blocks(self, result, budget) -> list:
        pairs = [(depth, png) for depth, png in result.density_pairs if Path(png).exists()]
        if not pairs:
            return []
        density = budget.density
        return [Heading("Hessian eigenvalue density"), Paragraph(
            f"Stochastic Lanczos quadrature (Ghorbani et al. 2019): {density.runs} "
            f"Lanczos run(s) of {density.steps} steps from random starts on the "
            f"Hessian of the training loss on {budget.sharpness.subset} training images "
            "(BatchNorm in eval mode), Gaussian-broadened by a width the bulk of the nodes "
            "sets, on a log density axis (right panel: the bulk alone, with the share of "
            "eigenvalues below -0.01 |lambda|max and its interval over the runs); seed 0. "
            "Mass far from zero: directions of strong curvature (right: upward, left: the "
            "loss still descends). Few steps resolve the outliers and the bulk's outline, "
            "not the bulk's detail."),
            FigureGrid([FigureBlock(Path(png), f"ResNet-{depth} vs PlainNet-{depth}")
                        for depth, png in pairs])]

    def budget_rows(self, budget) -> list[list[str]]:
        density = budget.density
        if not (density.runs and density.steps):
            return []
        return [["eigenvalue density", f"{density.runs} Lanczos runs x "
                                       f"{density.steps} steps on the sharpness images"]]

    def describe(self, budget) -> str:
        return f"density {budget.density.runs}x{budget.density.steps} Lanczos steps"


def _file(out: Path, run) -> Path:
    return out / "sharpness" / f"{run.paths.run_name}.density.json"


STAGE = DensityStage()
