"""The k largest Hessian eigenvalues: the Ritz values of the extremes' own Lanczos run.

With ``top_k`` the run that gives the largest and smallest eigenvalue goes on until each of
the k values passes the same convergence rule (its own residual bound under ``power_tol``
times its magnitude), at most ``power_iters`` steps
(:func:`~depthscape.analysis.spectrum.extremes_and_top`): the ends and the top-k are one
consistent set, and the top-k add no products where their values converge as fast.
"""

from __future__ import annotations

from depthscape.analysis.hessian import UNCONVERGED_MARK
from depthscape.analysis.measures.base import (
    Draw,
    Estimate,
    Measure,
    finite_or_none,
    padded_flags,
)
from depthscape.core.argtypes import int_in
from depthscape.core.errors import UserError


class TopK(Measure):
    name = "top_k"
    order = 30
    quantities = ("top",)
    settings = {"top_k": (int, 0)}  # also the k largest eigenvalues; 0: off
    added = {"top_k": 0}
    shown_with = "top"

    def enabled(self, config) -> bool:
        return config.top_k > 0

    def check(self, config, num_parameters: int) -> None:
        if config.top_k > num_parameters:
            raise UserError(f"--top-k {config.top_k} is more than the model's {num_parameters} "
                            f"trainable parameters (its Hessian has {num_parameters} "
                            "eigenvalues)")

    def check_options(self, config) -> None:
        # the command refuses what the API allows (the values the steps give: at most
        # power_iters), as it always has
        if config.top_k > config.power_iters:  # Ritz values of that one Lanczos run
            raise UserError(f"--top-k {config.top_k} needs at least as many Lanczos steps: "
                            f"raise --power-iters ({config.power_iters}) to {config.top_k} "
                            "or more")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--top-k", type=int_in(0, 10**4), default=0,
                            help="also the K largest eigenvalues (Ritz values of the extremes' "
                                 "own Lanczos run, at most --power-iters steps; default 0: off)")

    def estimate(self, draw: Draw) -> dict[str, Estimate]:
        _, top = draw.lanczos()
        return {"top": Estimate(top.values, top.converged,
                                details={"steps": top.iterations, "residuals": top.residuals})}

    def to_flat(self, estimates) -> dict:
        e = estimates.get("top")
        if e is None:
            return {"top_eigenvalues": None, "top_converged": None, "top_steps": None,
                    "top_ci": None, "top_residuals": None}
        return {"top_eigenvalues": e.value, "top_converged": e.converged,
                "top_steps": e.details.get("steps"), "top_ci": e.ci,
                "top_residuals": e.details.get("residuals")}

    def from_flat(self, data) -> dict[str, Estimate]:
        if data.get("top_eigenvalues") is None:
            return {}
        return {"top": Estimate(data["top_eigenvalues"], data.get("top_converged"),
                                data.get("top_ci"), {"steps": data.get("top_steps"),
                                                     "residuals": data.get("top_residuals")})}

    def headers(self, layout) -> list[str]:
        return ["Top eigenvalues"]

    def cells(self, group, layout) -> list[str]:
        # each value its own dagger: the top-k's values converge one by one
        return [", ".join(group.cells("top")) or "-"]

    def csv_fields(self, group, layout) -> dict:
        means = group.means("top")
        cis = group.interval("top")
        flags = group.flags("top")
        residuals = group.worst("top", "residuals")
        return {"top_eigenvalues": ";".join(f"{m:.6g}" for m in means),
                "top_eigenvalues_ci": ";".join(f"{c:.3g}" for c in cis) if cis else None,
                "all_top_converged": all(all((r["top"].converged if "top" in r else None)
                                             or [False]) for r in group.results),
                "top_converged": ";".join(str(f) for f in flags),
                "top_residuals_max": None if residuals is None else
                ";".join(f"{r:.3g}" for r in residuals)}

    def details(self, result, quantity: str) -> str | None:
        open_ = [i for i, ok in enumerate(_flags(result)) if not ok]
        if not open_:
            return None
        e = result["top"]
        residuals = e.details.get("residuals") or []
        steps = e.details.get("steps")
        if steps is None:
            steps = result["largest"].details["steps"]
        shown = ", ".join(f"{i + 1}" + (f" (residual {residuals[i]:.3g})"
                                        if i < len(residuals) and finite_or_none(residuals[i])
                                        is not None else "") for i in open_)
        return (f"{steps} Lanczos step{'s' * (steps != 1)}, value{'s' * (len(open_) != 1)} "
                f"{shown}")

    def shown(self, quantity: str) -> str:
        return "top eigenvalues"

    def notes(self, layout) -> list[str]:
        return ["Top eigenvalues: the largest Lanczos Ritz values, descending, from the "
                "Lanczos run that gives the largest and smallest (one start vector sees one "
                "copy of a repeated eigenvalue); each value that did not converge carries "
                f"{UNCONVERGED_MARK}."]


def _flags(result) -> list[bool]:
    """Per top-k value: converged (False where not recorded; none without a top-k)."""
    return padded_flags(result["top"]) if "top" in result else []


MEASURE = TopK()
