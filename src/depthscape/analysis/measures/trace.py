"""The Hessian's trace, by Hutchinson's estimator ``E[v^T H v]`` with Rademacher ``v``.

Stopped when the running mean's standard error falls under ``trace_tol`` times its
magnitude (after at least ``min_trace_samples`` probes) or after ``trace_samples`` probes.
The table also shows it per parameter (the mean curvature of one coordinate).
"""

from __future__ import annotations

from depthscape.analysis.hessian import hessian_trace
from depthscape.analysis.measures.base import Draw, Estimate, Measure
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
        config = draw.config
        value, stderr, count, ok = hessian_trace(draw.operator, draw.params,
                                                 config.trace_samples, config.trace_tol,
                                                 config.min_trace_samples, draw.seed)
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
        return [group.cell("trace"), group.cell("trace", per_parameter=True)]

    def csv_fields(self, group, layout) -> dict:
        mean, std, _ = group.mean_std("trace")
        return {"trace_mean": mean, "trace_std": std,
                "trace_stderr_max": group.worst("trace", "stderr"),
                "all_trace_converged": group.ok("trace"), "trace_ci": group.interval("trace")}

    def details(self, result, quantity: str) -> str | None:
        e = result["trace"]
        if e.converged:
            return None
        samples = e.details["samples"]
        return (f"{samples} Hutchinson probe{'s' * (samples != 1)}, "
                f"standard error {e.details['stderr']:.3g}")


MEASURE = Trace()
