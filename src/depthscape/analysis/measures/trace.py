"""The Hessian's trace, by Hutchinson's estimator ``E[v^T H v]`` with Rademacher ``v``.

Stopped when the running mean's standard error falls under ``trace_tol`` times its
magnitude (after at least ``min_trace_samples`` probes) or after ``trace_samples`` probes.
The table also shows it per parameter (the mean curvature of one coordinate).
"""

from __future__ import annotations

import math

from depthscape.analysis.measures.base import Draw, Estimate, Measure, mark_unconverged
from depthscape.analysis.stats import CONFIDENCE, format_ci, student_t_quantile
from depthscape.core.argtypes import float_in, int_in


class Trace(Measure):
    name = "trace"
    order = 20
    quantities = ("trace",)
    settings = {"trace_samples": (int, 50),  # most Hutchinson probe vectors
                "trace_tol": (float, 1e-2),  # stop when stderr is under this fraction of |mean|
                "min_trace_samples": (int, 5)}  # probes before the trace may stop early

    def add_arguments(self, parser) -> None:
        parser.add_argument("--trace-samples", type=int_in(1, 10**6), default=50,
                            help="most Hutchinson probe vectors (default 50)")
        parser.add_argument("--trace-tol", type=float_in(0.0, 1e3, lo_open=True), default=1e-2,
                            help="standard error / |trace| that ends Hutchinson early "
                                 "(default 0.01)")

    def estimate(self, draw: Draw) -> dict[str, Estimate]:
        (value, stderr, count, ok), _ = draw.trace()  # the block traces read its probes
        return {"trace": Estimate(value, ok, details={"stderr": stderr, "samples": count})}

    def to_flat(self, estimates) -> dict:
        e = estimates["trace"]
        return {"trace": e.value, "trace_stderr": e.details["stderr"],
                "trace_samples": e.details["samples"], "trace_converged": e.converged,
                "trace_ci": e.ci}

    def from_flat(self, data) -> dict[str, Estimate]:
        return {"trace": Estimate(data["trace"], data["trace_converged"], data.get("trace_ci"),
                                  {"stderr": data["trace_stderr"],
                                   "samples": data["trace_samples"]})}

    def headers(self, layout) -> list[str]:
        return ["Trace", "Trace / parameters"]

    def cells(self, group, layout) -> list[str]:
        if not _over_probes(layout):
            return [group.cell("trace"), group.cell("trace", per_parameter=True)]
        # one seed, one draw: the interval of Hutchinson's mean over its probes
        one = group.one
        half, n = probe_interval(one["trace"]), one["trace"].details["samples"]
        return [mark_unconverged(format_ci(one["trace"].value, half, n), group.ok("trace")),
                mark_unconverged(format_ci(one["trace"].value / one.num_parameters,
                                           half / one.num_parameters, n), group.ok("trace"))]

    def csv_fields(self, group, layout) -> dict:
        mean, std, _ = group.mean_std("trace")
        return {"trace_mean": mean, "trace_std": std,
                "trace_stderr_max": group.worst("trace", "stderr"),
                "all_trace_converged": group.ok("trace"), "trace_ci": group.interval("trace"),
                "trace_probe_ci": probe_interval(group.one["trace"])
                if _over_probes(layout) else None}

    def notes(self, layout) -> list[str]:
        if not _over_probes(layout):
            return []
        level = round(100 * CONFIDENCE)
        return [f"Trace ± (one draw): the {level}% Student-t interval of Hutchinson's mean "
                "over its probes (their randomness alone, on the one data subset measured)."]

    def details(self, result, quantity: str) -> str | None:
        e = result["trace"]
        if e.converged:
            return None
        samples = e.details["samples"]
        return (f"{samples} Hutchinson probe{'s' * (samples != 1)}, "
                f"standard error {e.details['stderr']:.3g}")


def probe_interval(estimate: Estimate) -> float:
    """Half-width of the Student-t interval of Hutchinson's mean over its probes
    (``t * standard error``; nan for one probe)."""
    n, stderr = estimate.details["samples"], estimate.details["stderr"]
    if n < 2 or stderr is None or not math.isfinite(stderr):
        return math.nan
    return student_t_quantile((1 + CONFIDENCE) / 2, n - 1) * stderr


def _over_probes(layout) -> bool:
    """± is over the probes: every model one seed measured in one draw."""
    return not layout.several and not layout.with_draws


MEASURE = Trace()
