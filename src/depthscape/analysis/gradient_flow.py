"""How large the early layers' gradients are, ResNet-D against PlainNet-D, with intervals:
the numbers behind the report's "Where in depth" (the figure is
:func:`depthscape.analysis.layer_curves.plot_layer_flows`).

For one run (its :class:`~depthscape.analysis.layer_curves.LayerFlow`) and one log row, the
**early gradient** is the geometric mean of the gradient norms of the early layers (the
stem and the first stage: ``stem`` and ``layer1`` of a ResNet or PlainNet), the **late
gradient** that of the last stage and the head. Both are compared as ``log10``, so a
difference of ``d`` is a ratio of ``10**d``.

Each is read at the profile's iterations (the first log row, the last before each
learning-rate decay, the last), as the mean over a window of ``WINDOW`` log rows ending
there (starting there for the first). Its interval is the Student-t interval over the
**seeds** where there are several, else over the window's **rows** of the one run: rows
next to each other are correlated, so that interval is narrower than a seed's would be,
and the table says which it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from depthscape.analysis.layer_curves import LayerFlow
from depthscape.analysis.stats import mean_ci

#: log rows each value averages (ending at the iteration read; starting at the first row)
WINDOW = 5


def early_late_stages(stages: Sequence[str]) -> tuple[set[str], set[str]]:
    """The stages counted as early (the stem and the first stage after it) and late (the
    last stage before the head, and the head), from a layer file's stage column."""
    order = list(dict.fromkeys(stages))
    body = [s for s in order if s not in ("stem", "head")]
    early = {s for s in order if s == "stem"} | set(body[:1])
    late = set(body[-1:]) | {s for s in order if s == "head"}
    return early, late


def _log_gmean(grad: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per row: log10 of the geometric mean of ``grad`` over ``columns``."""
    return np.log10(np.maximum(grad[:, columns], 1e-30)).mean(axis=1)


def phases(flow: LayerFlow) -> list[tuple[str, int]]:
    """The profile's iterations, named: ``start``, ``before decay k``, ``end``."""
    shown = flow.profile_iterations()
    names = ["start"] + [f"before decay {k}" for k in range(1, len(shown) - 1)] + ["end"]
    return list(zip(names, shown)) if len(shown) > 1 else [("end", shown[0])]


def window_values(flow: LayerFlow, iteration: int) -> tuple[np.ndarray, np.ndarray]:
    """The early and late log10 gradients of the ``WINDOW`` rows at ``iteration``."""
    early, late = early_late_stages(flow.stages)
    stage = np.array(flow.stages)
    row = int(np.searchsorted(flow.iterations, iteration))
    rows = slice(0, WINDOW) if row == 0 else slice(max(0, row - WINDOW + 1), row + 1)
    grad = flow.grad[rows]
    return (_log_gmean(grad, np.isin(stage, list(early))),
            _log_gmean(grad, np.isin(stage, list(late))))


@dataclass(frozen=True)
class Interval:
    """A mean of log10 gradient norms, its half-width (nan: none known) and what it is over."""

    mean: float
    half: float
    n: int
    over: str  # "seeds" or "log rows"


def _interval(per_run: list[np.ndarray]) -> Interval:
    if len(per_run) > 1:
        return Interval(*mean_ci([float(v.mean()) for v in per_run]), "seeds")
    return Interval(*mean_ci([float(v) for v in per_run[0]]), "log rows")


@dataclass(frozen=True)
class FlowRow:
    """One model at one phase: its early and late log10 gradient norms."""

    model: str
    phase: str
    iteration: int
    early: Interval
    late: Interval


def flow_rows(model: str, flows: Sequence[LayerFlow]) -> list[FlowRow]:
    """The rows of one model's runs (its seeds: the phases of the first run, each run read
    at its nearest log row)."""
    rows = []
    for phase, iteration in phases(flows[0]):
        values = [window_values(flow, iteration) for flow in flows]
        rows.append(FlowRow(model, phase, iteration, _interval([v[0] for v in values]),
                            _interval([v[1] for v in values])))
    return rows
