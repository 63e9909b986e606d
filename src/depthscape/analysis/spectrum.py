"""The Hessian's whole spectrum: its eigenvalue density and its top-k eigenvalues.

Both come from Lanczos runs on Hessian-vector products (:mod:`depthscape.analysis.hessian`),
fully reorthogonalised as :func:`~depthscape.analysis.hessian.extreme_eigenvalues` is:

* :func:`spectral_density` (:mod:`depthscape.analysis.density`, importable from here):
  stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan and Xiao, ICML 2019): ``m`` runs
  of :func:`~depthscape.analysis.lanczos.lanczos` from random starts, their quadrature rules
  averaged and Gaussian-broadened by a width the bulk of the nodes sets
  (:mod:`depthscape.analysis.broadening`). Cost: ``m * s`` Hessian-vector products.
* :func:`top_eigenvalues`: the ``k`` largest Ritz values of one Lanczos run, stopped when
  all ``k`` pass :func:`~depthscape.analysis.hessian.ritz_converged` (their residual bound
  under ``tol`` times their own magnitude); :func:`extremes_and_top` also the smallest,
  from the same run, so the ends and the top-k are one consistent set. One start vector
  sees one copy of a repeated eigenvalue (a block method would see its multiplicity).
  Cost: at most ``iters`` products.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from depthscape.analysis.density import (  # noqa: F401  (the density: importable from here)
    SpectralDensity,
    gaussian_density,
    spectral_density,
)
from depthscape.analysis.hessian import (
    UNCONVERGED_MARK,
    EigenExtremes,
    held,
    hold_steps,
    ritz_converged,
)
from depthscape.analysis.lanczos import LanczosRun, lanczos, run_seed  # noqa: F401

# ---------------------------------------------------------------------------------------
# Top-k


@dataclass(frozen=True)
class TopEigenvalues:
    """The ``k`` largest eigenvalues (descending) and how their Lanczos run ended.

    Each value has its own flag by :func:`~depthscape.analysis.hessian.ritz_converged`
    (its residual bound under ``tol`` times its own magnitude, or the run was exact) and
    the residual it judged. The ``repr`` marks every value that did not converge with a
    dagger.
    """

    values: list[float]  # descending; fewer than k where the space (or the budget) is smaller
    iterations: int  # Hessian-vector products used
    converged: list[bool]  # per value: its residual bound passed (or the run was exact)
    changes: list[float | None]  # per value: how far the last step moved it (None: unknown)
    residuals: list[float]  # per value: residual bound ||H u - theta u|| (0 where exact)
    k: int | None = None  # the number asked for (None: not recorded)
    exact: bool = False  # stopped at an invariant subspace: every value is an eigenvalue

    @property
    def all_converged(self) -> bool:
        """Every value converged, and there are ``k`` of them (or the space has fewer)."""
        complete = self.k is None or self.exact or len(self.values) >= self.k
        return bool(self.values) and complete and all(self.converged)

    def __repr__(self) -> str:
        shown = ", ".join(f"{v:.6g}" + ("" if ok else UNCONVERGED_MARK)
                          for v, ok in zip(self.values, self.converged))
        return (f"TopEigenvalues(values=[{shown}], iterations={self.iterations}, "
                f"all_converged={self.all_converged})")


def _judged_run(operator: Callable, params: Sequence[torch.Tensor], k: int, iters: int,
                tol: float, seed: int, bottom: bool) -> tuple[EigenExtremes, TopEigenvalues]:
    """One Lanczos run, stopped once each of its ``k`` largest Ritz values (and, with
    ``bottom``, its smallest) passes :func:`ritz_converged` and held its place for
    :func:`hold_steps` ``(k)`` steps; both ends and the top-k read from its last
    tridiagonal."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if not tol >= 0:
        raise ValueError(f"tol must be at least 0, got {tol}")
    state: dict = {"previous": None, "changes": None, "flags": None}
    history: list[tuple[list[float], list[bool]]] = []  # per step: values, passed the rule
    hold = hold_steps(k)

    def judge(ritz: torch.Tensor, residuals: torch.Tensor) -> list[bool]:
        scale = max(float(ritz.abs().max()), 1e-30)
        return [ritz_converged(v, r, tol, scale)
                for v, r in zip(ritz.tolist(), residuals.tolist())]

    def monitor(step: int, ritz: torch.Tensor, residuals: torch.Tensor) -> bool:
        previous = state["previous"]
        current = ritz.tolist()
        # each value's change since the last step, matched from the top (and the bottom's)
        state["changes"] = (None if previous is None else
                            ([abs(a - b) for a, b in zip(current[::-1], previous[::-1])],
                             abs(current[0] - previous[0])))
        state["previous"] = current
        passed = judge(ritz, residuals)
        history.append((current, passed))
        scale = max(abs(current[0]), abs(current[-1]))
        def flag(i: int, hold: int) -> bool:  # i: the place, from the bottom (0) or top (< 0)
            before = history[step - hold] if step >= hold else ([], [])
            return (passed[i] and -len(before[0]) <= i < len(before[0]) and before[1][i]
                    and held(current[i], before[0][i], tol, scale))

        # per place, ascending: passed now, passed ``hold`` steps ago, moved within tol since
        state["flags"] = flags = [flag(i - len(current), hold) for i in range(len(current))]
        flags[0] = flag(0, hold_steps())  # the smallest: an end, by its place from the bottom
        return len(flags) >= k and all(flags[-k:]) and (flags[0] or not bottom)

    run = lanczos(operator, params, iters, seed, monitor)
    if not run.finite:
        nan = [math.nan] * k
        return (EigenExtremes(math.nan, math.nan, run.steps, False, False, False),
                TopEigenvalues(nan, run.steps, [False] * k, [None] * k, nan, k))
    ok = [True] * len(run.nodes) if run.exact else state["flags"]
    changes = state["changes"]
    top_changes = ([None] * len(ok) if changes is None else changes[0] + [None] * len(ok))
    values = run.nodes[::-1][:k]
    top = TopEigenvalues(values, run.steps, ok[::-1][:k], top_changes[:len(values)],
                         run.residuals[::-1][:k], k, run.exact)
    ends = EigenExtremes(run.nodes[-1], run.nodes[0], run.steps, ok[0] and ok[-1], ok[-1],
                         ok[0], top_changes[0], None if changes is None else changes[1],
                         run.residuals[-1], run.residuals[0])
    return ends, top


def top_eigenvalues(operator: Callable, params: Sequence[torch.Tensor], k: int,
                    iters: int = 50, tol: float = 1e-3, seed: int = 0) -> TopEigenvalues:
    """The ``k`` largest (algebraic) eigenvalues of ``operator``: Lanczos Ritz values.

    Stops once each of the ``k`` largest Ritz values passes
    :func:`~depthscape.analysis.hessian.ritz_converged` (its residual bound
    ``|beta_j s_ij|`` under ``tol * max(|theta_i|, RESIDUAL_FLOOR * |theta_max|)``) and
    held its place for :func:`~depthscape.analysis.hessian.hold_steps` ``(k)`` steps
    (passed then too, moved within that tolerance since), at an invariant subspace (exact),
    or after ``iters`` steps (each value that did not is flagged not converged). A
    converged value lies within its residual of an eigenvalue;
    Ritz values approach the top from inside: the ``i``-th is at most the true ``i``-th
    eigenvalue. Cost: at most ``iters`` Hessian-vector products.
    """
    return _judged_run(operator, params, k, iters, tol, seed, bottom=False)[1]


def extremes_and_top(operator: Callable, params: Sequence[torch.Tensor], k: int,
                     iters: int = 50, tol: float = 1e-3, seed: int = 0
                     ) -> tuple[EigenExtremes, TopEigenvalues]:
    """Both ends of the spectrum and its ``k`` largest eigenvalues from one Lanczos run.

    As :func:`top_eigenvalues`, and the run also goes on until the smallest Ritz value
    passes the same rule: the largest is the first top-k value, the smallest is at most
    every Ritz value of the run, so the numbers are one consistent set (two runs stopped at
    different steps need not be).
    """
    return _judged_run(operator, params, k, iters, tol, seed, bottom=True)
