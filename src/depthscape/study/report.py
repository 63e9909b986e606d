"""The study's report, as Markdown (``report.md``) and one self-contained page (``report.html``).

:func:`build_blocks` puts it together: the summary and the observations, then each stage's
section (``Stage.blocks``, in ``Stage.report_order``), the notes, and how the report was
made (the budget's numbers, each stage's rows). Both formats are rendered from that one
list of blocks (:mod:`depthscape.study.render`), so they always say the same thing.
"""

from __future__ import annotations

import time
from pathlib import Path

from depthscape.analysis.tables import Table, format_duration
from depthscape.core.atomic import atomic_write_text
from depthscape.core.runtime import caveat_of

# the report's parts, importable from here as before
from depthscape.study.blocks import (  # noqa: F401
    Bullets,
    FigureBlock,
    FigureGrid,
    Heading,
    Landscape,
    Paragraph,
    SurfaceBlock,
    TableBlock,
    View,
)
from depthscape.study.observations import (  # noqa: F401
    compare_intervals,
    describe_change,
    describe_trend,
    flatness_observations,
    observations,
)
from depthscape.study.render import render_html, render_markdown, surface_figure_json  # noqa: F401
from depthscape.study.stages import all_stages


def build_blocks(result, budget, settings: dict, stages=None) -> list:
    """The report's content, in order, from a :class:`depthscape.study.runner.StudyResult`;
    ``stages`` defaults to every stage of the study."""
    if stages is None:
        stages = all_stages()
    blocks: list = [Heading("depthscape study report", 1), _summary(result, budget, settings)]
    facts = observations(result.metrics, result.sharpness, result.flatness)
    if facts:
        blocks += [Heading("Observations"), Bullets(facts)]
    if budget.name != "paper":
        blocks.append(Paragraph(
            "These numbers come from a shortened schedule: absolute accuracies are far below "
            "the spec's 64,000-iteration results; compare models with each other, not with "
            "the paper's tables."))
    for stage in sorted((s for s in stages if s.report_order is not None),
                        key=lambda s: s.report_order):
        blocks += stage.blocks(result, budget)
    for note in result.notes:
        blocks.append(Paragraph(f"Note: {note}"))
    return blocks + _how_it_was_made(result, budget, stages)


def _summary(result, budget, settings: dict) -> Paragraph:
    metrics = result.metrics
    sizes = ""
    if metrics:
        sizes = (f" Table 1 evaluates {metrics[0].train_size} training and "
                 f"{metrics[0].test_size} test images per model.")
    return Paragraph(
        f"Budget `{budget.name}` ({budget.description}): ResNet/PlainNet trained for "
        f"{budget.iterations('resnet20')}, the CNN for {budget.iterations('cnn')}, on "
        f"{budget.training.train_subset or 'all'} training images; {settings.get('seeds', 1)} "
        f"seed(s) per model; dataset `{settings.get('dataset')}`.{sizes}"
        f"{_arithmetic(result, budget)} Generated {time.strftime('%Y-%m-%d %H:%M')}.")


def _arithmetic(result, budget) -> str:
    """The sentence saying which arithmetic the runs and the landscapes used ("" if none
    is known)."""
    training = result.arithmetic.get("training") or {}
    parts = []
    kinds = sorted(set(training.values()))
    if len(kinds) == 1:
        parts.append(f"training {kinds[0]} (every run)")
    elif kinds:
        parts.append("training " + "; ".join(
            f"{kind} ({', '.join(n for n, k in training.items() if k == kind)})" for kind in kinds))
    landscapes = result.arithmetic.get("landscapes")
    shown = landscapes if landscapes and (result.landscapes or result.trajectories) else None
    if shown:
        parts.append(f"landscapes and trajectories {shown}")
    if not parts:
        return ""
    text = f" Arithmetic: {', '.join(parts)}."
    # what each inexact precision the sentence names means (its record's caveat), and who
    # chose it for each part (runner._arithmetic's chosen_by)
    chosen_by = result.arithmetic.get("chosen_by") or {}
    caveats = {"precision": {caveat_of(kind) for kind in kinds} - {None},
               "landscape_precision": {caveat_of(shown)} - {None}}
    sources = {chosen_by.get(key, "unknown") for key, found in caveats.items() if found}
    if sources:
        text += " " + "; ".join(sorted(set().union(*caveats.values())))
        if "budget" in sources:
            text += (f"; the `{budget.name}` budget uses it on a CPU with native bf16 to finish "
                     "in time, `--precision fp32 --landscape-precision fp32` with a new `--out` "
                     "computes in float32")
        if "asked" in sources:
            text += "; asked for with `--precision` or `--landscape-precision`"
        text += "."
    return text


def _how_it_was_made(result, budget, stages) -> list:
    rows = [row for stage in stages for row in stage.budget_rows(budget)]
    blocks: list = [Heading("How this report was made"),
                    TableBlock(Table("Budget", ["Setting", f"{budget.name}"], rows,
                                     ["setting", "value"], rows))]
    if result.timings:
        steps = ", ".join(f"{k} {format_duration(v)}" for k, v in result.timings.items()
                          if k != "report")
        blocks.append(Paragraph(f"Time spent by this call of the study: {steps} (steps already "
                                "done by an earlier call are reused, not repeated)."))
    blocks.append(Paragraph(f"Everything lies under `{Path(result.out_dir)}`: `logs/` (CSV "
                            "training logs), `models/` (checkpoints), `plots/`, `tables/` "
                            "(Markdown and CSV), `landscapes/` (HDF5 surfaces, interactive "
                            "pages), `sharpness/` (with the densities), `flatness/`."))
    return blocks


def write_report(result, budget, settings: dict) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a study result; returns both paths."""
    blocks = build_blocks(result, budget, settings)
    out = Path(result.out_dir)
    atomic_write_text(result.report_md, render_markdown(blocks, out))
    atomic_write_text(result.report_html, render_html(blocks))
    return result.report_md, result.report_html
