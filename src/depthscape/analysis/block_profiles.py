"""Where in depth the curvature is, ResNet-D against PlainNet-D: each stage's block trace
``tr(H_bb)`` and block ``lambda_max`` (the sharpness results' per-block rows,
:mod:`depthscape.analysis.measures.blocks`), with intervals, and their figure.

A model's value per block is the mean over its seeds. The **trace's** interval is the
Student-t interval over the seeds where there are several, else over the one run's
Hutchinson probes (``t * standard error``, :func:`~depthscape.analysis.measures.trace.
probe_interval`). The **lambda_max's** interval is over the seeds; with one seed it
has none (Lanczos gives no error bar). Both are :class:`~depthscape.analysis.
gradient_flow.Interval`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depthscape.analysis.curves import _pyplot
from depthscape.analysis.gradient_flow import Interval
from depthscape.analysis.measures import Estimate
from depthscape.analysis.measures.base import padded_flags
from depthscape.analysis.measures.trace import probe_interval
from depthscape.analysis.stats import mean_ci
from depthscape.core.atomic import save_figure


@dataclass(frozen=True)
class BlockProfileRow:
    """One model's block: its trace and largest eigenvalue, each with its interval."""

    model: str
    block: str
    trace: Interval
    lambda_max: Interval
    #: every seed's Lanczos on H_bb converged (else the λmax is not a result: marked, not
    #: compared)
    lambda_max_converged: bool = True


def has_blocks(result) -> bool:
    """Whether a sharpness result holds per-block rows (``--blocks``)."""
    return "block_trace" in result and "block_largest" in result


def block_profile(model: str, results: Sequence) -> list[BlockProfileRow]:
    """The rows of one model's sharpness results (its seeds, each with per-block rows),
    one per block in the first result's order."""
    first = results[0]["block_trace"].details
    rows = []
    for i, name in enumerate(first["names"]):
        traces = [r["block_trace"].value[i] for r in results]
        tops = [r["block_largest"].value[i] for r in results]
        if len(results) > 1:
            trace = Interval(*mean_ci(traces), "seeds")
        else:
            details = results[0]["block_trace"].details
            probes = Estimate(traces[0], details={"stderr": details["stderr"][i],
                                                  "samples": details["samples"] or 0})
            trace = Interval(traces[0], probe_interval(probes), probes.details["samples"],
                             "probes")
        top = (Interval(*mean_ci(tops), "seeds") if len(results) > 1
               else Interval(tops[0], math.nan, 1, "one seed"))
        converged = all(padded_flags(r["block_largest"])[i] for r in results)
        rows.append(BlockProfileRow(model, name, trace, top, converged))
    return rows


def _scale(ax, values: list[float]) -> None:
    """Log axis where every value is positive, else symmetric log (a negative trace)."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
    elif finite:
        ax.set_yscale("symlog", linthresh=max(1e-6, min(abs(v) for v in finite if v) or 1e-6))


def plot_block_profiles(labels: Sequence[str], profiles: Sequence[Sequence[BlockProfileRow]],
                        out_stem: str | os.PathLike, formats: Sequence[str] = ("png",)
                        ) -> list[Path]:
    """Block trace and block lambda_max against the block (stem to head), one line per
    model with its error bars (none where there is no interval); the paths written."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    names = [row.block for row in profiles[0]]
    x = np.arange(len(names))
    for ax, what, title in ((axes[0], "trace", "block trace tr(H_bb)"),
                            (axes[1], "lambda_max", "block λmax (Lanczos on H_bb)")):
        shown, bars = [], False
        for k, (label, rows) in enumerate(zip(labels, profiles)):
            values = [getattr(r, what) for r in rows]
            bars = bars or any(math.isfinite(v.half) for v in values)
            means = np.array([v.mean for v in values], dtype=float)
            halves = np.array([v.half if math.isfinite(v.half) else 0.0 for v in values])
            ax.errorbar(x + 0.06 * (k - 0.5), means, yerr=halves, marker="o", capsize=3,
                        linestyle="-" if k == 0 else "--", label=label)
            shown += list(means - halves) + list(means + halves)
        _scale(ax, shown)
        ax.set_xticks(x, names)
        ax.set_xlabel("block (input left)")
        ax.set_title(title if bars else f"{title}\nno error bars: one seed")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.suptitle("Curvature per stage: " + " vs ".join(labels))
    fig.tight_layout()
    try:
        return save_figure(fig, out_stem, formats, dpi=120)
    finally:
        plt.close(fig)
