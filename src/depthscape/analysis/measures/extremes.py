"""The Hessian's largest and smallest (algebraic) eigenvalue, by Lanczos.

Stopped when each end's residual bound is under ``power_tol`` times its own magnitude
(:func:`~depthscape.analysis.hessian.ritz_converged`) or after ``power_iters`` steps (one
step is one Hessian-vector product). The largest says how sharp the sharpest direction
is; a negative smallest says the point is not a minimum of the measured loss.
"""

from __future__ import annotations

from depthscape.analysis.measures.base import Draw, Estimate, Measure, finite_or_none
from depthscape.core.argtypes import float_in, int_in

_ENDS = ("largest", "smallest")


class Extremes(Measure):
    name = "extremes"
    order = 10
    quantities = _ENDS
    settings = {"power_iters": (int, 20),  # most Lanczos steps (products) for both ends
                "power_tol": (float, 1e-3)}  # converged: residual bound under this x |value|

    def add_arguments(self, parser) -> None:
        parser.add_argument("--power-iters", type=int_in(1, 10**6), default=20,
                            help="most Lanczos steps (Hessian-vector products) for the largest "
                                 "and smallest eigenvalue (default 20)")
        parser.add_argument("--power-tol", type=float_in(0.0, 1.0, lo_open=True), default=1e-3,
                            help="a Lanczos value is converged when its residual bound is under "
                                 "this x its own magnitude (floor: 1e-3 of the largest; "
                                 "default 1e-3)")

    def estimate(self, draw: Draw) -> dict[str, Estimate]:
        ends, _ = draw.lanczos()
        return {end: Estimate(getattr(ends, end), getattr(ends, f"{end}_converged"),
                              details={"steps": ends.iterations,
                                       "run_converged": ends.converged,
                                       "change": getattr(ends, f"{end}_change"),
                                       "residual": getattr(ends, f"{end}_residual")})
                for end in _ENDS}

    def to_flat(self, estimates) -> dict:
        flat = {}
        for end in _ENDS:
            e = estimates[end]
            flat.update({f"{end}_eigenvalue": e.value, f"{end}_converged": e.converged,
                         f"{end}_change": e.details.get("change"),
                         f"{end}_residual": e.details.get("residual"), f"{end}_ci": e.ci})
        first = estimates["largest"].details
        flat.update(eigen_steps=first["steps"], eigen_converged=first["run_converged"])
        return flat

    def from_flat(self, data) -> dict[str, Estimate]:
        return {end: Estimate(data[f"{end}_eigenvalue"], data.get(f"{end}_converged"),
                              data.get(f"{end}_ci"),
                              {"steps": data["eigen_steps"],
                               "run_converged": data["eigen_converged"],
                               "change": data.get(f"{end}_change"),
                               "residual": data.get(f"{end}_residual")})
                for end in _ENDS}

    def headers(self, layout) -> list[str]:
        return ["Largest eigenvalue", "Smallest eigenvalue"]

    def cells(self, group, layout) -> list[str]:
        return [group.cell(end) for end in _ENDS]

    def csv_fields(self, group, layout) -> dict:
        fields = {}
        for end in _ENDS:
            mean, std, _ = group.mean_std(end)
            fields.update({f"{end}_eigenvalue_mean": mean, f"{end}_eigenvalue_std": std,
                           f"all_{end}_converged": group.ok(end),
                           f"{end}_eigenvalue_ci": group.interval(end),
                           f"{end}_residual_max": group.worst(end, "residual")})
        fields["eigen_steps_max"] = group.worst("largest", "steps")
        fields["all_eigen_converged"] = all(r["largest"].details["run_converged"]
                                            for r in group.results)
        return fields

    def details(self, result, quantity: str) -> str | None:
        if result.converged(quantity):
            return None
        e = result[quantity]
        steps = e.details["steps"]
        parts = [f"{steps} Lanczos step{'s' * (steps != 1)}"]
        for label, name in (("last change", "change"), ("residual", "residual")):
            value = finite_or_none(e.details.get(name))
            if value is not None:
                parts.append(f"{label} {value:.3g}")
        if finite_or_none(e.value) is None:
            parts.append("no finite value (the Hessian overflowed)")
        return ", ".join(parts)

    def shown(self, quantity: str) -> str:
        return f"{quantity} eigenvalue"


MEASURE = Extremes()
