"""Sharpness: the Hessian's extreme eigenvalues and trace at every finished minimum."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from depthscape.analysis.sharpness import (
    SharpnessConfig,
    measure_files,
    measure_sharpness,
    sharpness_table,
)
from depthscape.analysis.tables import write_table
from depthscape.core.models import present_pairs
from depthscape.study.blocks import Heading, TableBlock
from depthscape.study.stages.base import Stage, is_fresh


def _measure(subset: int, power_iters: int, trace_samples: int, power_tol: float = 1e-3,
             trace_tol: float = 0.05) -> SharpnessConfig:
    """The study's measurement: on ``subset`` training images, at most ``power_iters``
    Lanczos steps and ``trace_samples`` Hutchinson probes."""
    return SharpnessConfig(
        split="train", subset=subset,
        batch_size=min(subset, 512),  # bounds the double-backward's memory
        power_iters=power_iters, power_tol=power_tol, trace_samples=trace_samples,
        trace_tol=trace_tol, min_trace_samples=min(5, trace_samples), seed=0)


def measurement(study) -> SharpnessConfig:
    """The budget's sharpness settings on the study's device (the density's data, too)."""
    return replace(study.budget.sharpness, device=study.config.device)


def run_measurement(study, model: str) -> SharpnessConfig:
    """:func:`measurement`, with per-stage blocks (``--blocks stage``: stem, stage 1-3, head)
    for the models of a depth pairing while the depth stage is on: the block traces come
    from the trace's own Hutchinson probes, each block's λmax from Lanczos on its H_bb
    (the "Where in depth" curvature profiles, :mod:`depthscape.study.stages.depth`)."""
    config = measurement(study)
    if study.switched_on("depth") and any(model in pair.names
                                          for pair in present_pairs(study.models)):
        return replace(config, blocks="stage")
    return config


class SharpnessStage(Stage):
    name = "sharpness"
    per_model = True
    order = 50
    report_order = 20
    budgets = {"paper": _measure(2000, 50, 100, trace_tol=0.02),
               "quick": _measure(128, 40, 6, power_tol=1e-2, trace_tol=0.1),
               "smoke": _measure(16, 2, 2, power_tol=1e-2, trace_tol=0.5)}
    numbers = {"sharpness_subset": "subset", "sharpness_power_iters": "power_iters",
               "sharpness_trace_samples": "trace_samples", "sharpness_power_tol": "power_tol",
               "sharpness_trace_tol": "trace_tol"}
    recomputes = True  # measure_sharpness keys each stored result by its settings
    skip_help = "skip the Hessian sharpness"
    folders = ("sharpness",)

    def run(self, study) -> None:
        out = study.out
        results = study.result.sharpness
        for run in tqdm(study.finished_runs(), desc="sharpness", unit="run",
                        disable=not study.config.progress, dynamic_ncols=True):
            config = run_measurement(study, run.model)
            output = out / "sharpness" / f"{run.paths.run_name}.json"
            result = measure_sharpness(run.paths.final, config, study.dataset, output)
            if config.blocks and not is_fresh(blocks_path(output), [output]):
                measure_files(config, result, output.with_suffix(""))  # <run>.blocks.json/.csv
            results.append((run, result))
        if results and not study.partial:  # the table of every run: a whole study's
            write_table(sharpness_table(results), out / "sharpness", "sharpness")

    def blocks(self, result, budget) -> list:
        if not result.sharpness:
            return []
        return [Heading("Sharpness of the minima"),
                TableBlock(sharpness_table(result.sharpness),
                           f"Hessian of the training loss on {budget.sharpness.subset} "
                           "training images, BatchNorm in eval mode: the largest and the "
                           "smallest (algebraic) eigenvalue by Lanczos, the trace by "
                           "Hutchinson's estimator.")]

    def budget_rows(self, budget) -> list[list[str]]:
        sharp = budget.sharpness
        return [["sharpness", f"{sharp.subset} training images, <= {sharp.power_iters} "
                              f"Lanczos steps, <= {sharp.trace_samples} Hutchinson probes; "
                              "paired models also per stage (the trace's probes, <= "
                              f"{sharp.power_iters} Lanczos steps per stage)"]]


def blocks_path(output: Path) -> Path:
    """The per-block rows written beside a sharpness result ``<run>.json``."""
    return output.with_name(f"{output.stem}.blocks.json")


STAGE = SharpnessStage()
