"""Optimization trajectories: each run's (seed 0) path over its contour, and ResNet | PlainNet
at each depth. The snapshots they need are kept by the training (``budget.training.snapshots``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from depthscape.analysis.trajectory import MIN_SNAPSHOTS, TrajectoryConfig, compute_trajectory
from depthscape.analysis.trajectory_plots import plot_trajectory, plot_trajectory_pair
from depthscape.core.models import model_info, present_pairs
from depthscape.study.blocks import FigureBlock, Heading, Paragraph, View
from depthscape.study.stages.base import Stage, is_fresh
from depthscape.training.snapshots import read_snapshot_steps, snapshot_path


class TrajectoriesStage(Stage):
    name = "trajectories"
    per_model = True
    order = 60
    report_order = 50
    budgets = {"paper": TrajectoryConfig(resolution=25, subset=None),
               # quick: the trajectories and curvature maps sized to ~5 min together (docs/study.md)
               "quick": TrajectoryConfig(resolution=7, subset=100),
               "smoke": TrajectoryConfig(resolution=3, subset=32)}
    numbers = {"trajectory_resolution": "resolution", "trajectory_subset": "subset"}
    skip_help = "keep no weight snapshots and skip the optimization trajectories"
    folders = ("plots/trajectories", "trajectories")

    def wanted(self, study) -> bool:
        return super().wanted(study) and bool(study.budget.training.snapshots)

    def run(self, study) -> None:
        by_model = {}
        for run in study.finished_runs(first_seed_only=True):
            view = self._one(study, run)
            if view is not None:
                study.result.trajectories.append(view)
                by_model[run.model] = view
        self._pairs(study, by_model)

    def _one(self, study, run) -> View | None:
        """The run's trajectory surface and its drawing (None: no snapshots or too few)."""
        budget, config = study.budget, study.config
        if not snapshot_path(run.paths.final).exists():
            return None
        kept = len(read_snapshot_steps(snapshot_path(run.paths.final)))
        if kept < MIN_SNAPSHOTS:
            # the study chose the snapshot interval, so its user has no option to change:
            # say so in the report and go on (the budgets are sized to keep enough)
            note = (f"no trajectory for {run.paths.run_name}: the {budget.name} budget kept "
                    f"{kept} weight snapshot(s) of its {budget.iterations(run.model)}, and a "
                    f"trajectory needs at least {MIN_SNAPSHOTS}")
            study.say(note)
            study.result.notes.append(note)
            return None
        grid = budget.trajectories
        study.say(f"trajectory of {run.paths.run_name} ({grid.resolution}x{grid.resolution})")
        surface = Path(compute_trajectory(
            run.paths.final, replace(grid, device=config.device, precision=config.landscape_precision),
            output=study.out / "trajectories" / f"{run.paths.run_name}.h5", dataset=study.dataset,
            progress=config.progress))
        plot_dir = study.out / "plots" / "trajectories"
        png = plot_dir / f"{surface.stem}_path.png"
        if not is_fresh(png, [surface]):
            plot_trajectory(surface, plot_dir)
        return View(run.model, run.paths.run_name, surface, png)

    def _pairs(self, study, by_model: dict) -> None:
        """ResNet | PlainNet side by side at each depth where both have a trajectory."""
        result = study.result
        plot_dir = study.out / "plots" / "trajectories"
        for found in present_pairs(by_model):  # the families' pairings (ResNet | PlainNet)
            pair = [by_model[n] for n in found.names]
            labels = [model_info(n).display_name for n in found.names]
            png = plot_dir / f"{found.stem}_path.png"
            if not is_fresh(png, [v.data for v in pair]):
                plot_trajectory_pair([v.data for v in pair], png.with_suffix(""), titles=labels)
            result.trajectory_pairs.append((found.depth, png))
            result.trajectory_titles[png] = f"{labels[0]} (left) vs {labels[1]} (right)"

    def blocks(self, result, budget) -> list:
        if not result.trajectory_pairs:
            return []
        grid = budget.trajectories
        blocks: list = [Heading("Optimization trajectories"), Paragraph(
            f"Each run's weights were kept about {budget.training.snapshots} times during "
            "training; the path is projected on the two principal directions of the snapshots' "
            "differences to the final weights (explained variance in the axis labels), over "
            f"log10 of the test loss on {grid.subset or 'all'} test images "
            f"({grid.resolution}x{grid.resolution} grid over the span "
            "of the path). Square: start; star: final weights.")]
        titles = result.trajectory_titles
        return blocks + [FigureBlock(png, titles.get(png, f"depth {depth}"))
                         for depth, png in result.trajectory_pairs]


STAGE = TrajectoriesStage()
