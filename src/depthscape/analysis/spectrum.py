"""The Hessian's whole spectrum: its eigenvalue density and its top-k eigenvalues.

Both come from Lanczos runs on Hessian-vector products (:mod:`depthscape.analysis.hessian`),
fully reorthogonalised as :func:`~depthscape.analysis.hessian.extreme_eigenvalues` is:

* :func:`spectral_density`: stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan and Xiao,
  "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019;
  PyHessian's ``density``). ``m`` Lanczos runs of ``s`` steps, each from a random unit
  vector ``v``; the eigenpairs ``(theta_j, u_j)`` of each run's ``s x s`` tridiagonal
  matrix give a Gauss quadrature rule with nodes ``theta_j`` (the Ritz values) and
  weights ``u_j[0]**2`` (they sum to 1) that reproduces ``v^T H^k v`` exactly for
  ``k < 2s``. Averaged over the runs and broadened by a Gaussian of standard deviation
  ``sigma`` it estimates the density ``phi(t) = (1/n) sum_i N(t; lambda_i, sigma^2)`` of
  the ``n`` eigenvalues. ``E[v^T H^k v] = tr(H^k) / n`` for ``v`` uniform on the sphere,
  so the density's mass is 1, its mean ``tr(H)/n`` and its second moment
  ``tr(H^2)/n + sigma^2``, up to a Monte-Carlo error of about
  ``sqrt(2 var / ((n + 2) m))`` (``var``: the variance of ``lambda^k`` over the spectrum).
  Cost: ``m * s`` Hessian-vector products.
* :func:`top_eigenvalues`: the ``k`` largest Ritz values of one Lanczos run, stopped when
  all ``k`` pass :func:`~depthscape.analysis.hessian.ritz_converged` (their residual bound
  under ``tol`` times their own magnitude); :func:`extremes_and_top` also the smallest,
  from the same run, so the ends and the top-k are one consistent set. One start vector
  sees one copy of a repeated eigenvalue (a block method would see its multiplicity).
  Cost: at most ``iters`` products.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from depthscape.analysis.hessian import (
    UNCONVERGED_MARK,
    EigenExtremes,
    held,
    hold_steps,
    ritz_converged,
)
from depthscape.core.limits import check_basis_fits


@dataclass(frozen=True)
class LanczosRun:
    """One Lanczos run: its tridiagonal's Ritz values (ascending) and quadrature weights."""

    nodes: list[float]  # Ritz values, ascending
    weights: list[float]  # squared first components of the tridiagonal's eigenvectors
    residuals: list[float]  # per node: Ritz residual ||H u - theta u|| (0 where exact)
    steps: int  # Hessian-vector products used
    exact: bool = False  # stopped at an invariant subspace: the nodes are eigenvalues
    finite: bool = True  # False where the Hessian overflowed (no nodes then)


def _flat_operator(operator: Callable, params: Sequence[torch.Tensor]):
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def apply(flat: torch.Tensor) -> torch.Tensor:
        product = operator([t.view(shape) for t, shape in zip(flat.split(sizes), shapes)])
        return torch.cat([h.reshape(-1) for h in product])

    return apply, sum(sizes)


def _tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> torch.Tensor:
    a = torch.tensor(alphas, dtype=torch.float64)
    b = torch.tensor(betas, dtype=torch.float64)
    return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)


def lanczos(operator: Callable, params: Sequence[torch.Tensor], steps: int, seed: int = 0,
            monitor: Callable[[int, torch.Tensor, torch.Tensor], bool] | None = None
            ) -> LanczosRun:
    """At most ``steps`` Lanczos steps on the symmetric ``operator`` from a seeded Gaussian
    start (drawn in float64 on the CPU: the same start on every device).

    The Krylov basis is fully reorthogonalised (twice per step; it keeps ``steps`` vectors of
    the parameters' size), so no eigenvalue appears twice among the Ritz values. Stops early
    at an invariant subspace (its Ritz values are then exact eigenvalues) or when
    ``monitor(step, ritz, residuals)`` (called after every step with the ascending Ritz
    values and their residual bounds ``|beta_j s_ij|``) returns True.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    apply, size = _flat_operator(operator, params)
    like = params[0]
    steps = min(steps, size)  # n steps span the whole space
    generator = torch.Generator().manual_seed(seed)
    check_basis_fits(steps, size, like)
    start = torch.randn(size, generator=generator, dtype=torch.float64)
    basis = torch.zeros(steps, size, dtype=like.dtype, device=like.device)
    basis[0] = (start / start.norm()).to(basis)
    alphas: list[float] = []
    betas: list[float] = []
    for step in range(steps):
        w = apply(basis[step])
        alphas.append(float(w.double() @ basis[step].double()))
        if not math.isfinite(alphas[-1]) or not bool(torch.isfinite(w).all()):
            return LanczosRun([], [], [], step + 1, finite=False)
        done = basis[:step + 1]
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w = w - done.T @ (done @ w)
        try:
            ritz, vectors = torch.linalg.eigh(_tridiagonal(alphas, betas))
        except torch.linalg.LinAlgError:  # a tridiagonal LAPACK cannot diagonalise
            return LanczosRun([], [], [], step + 1, finite=False)
        beta = float(w.norm())
        scale = max(float(ritz.abs().max()), 1e-30)
        exact = beta <= 1e-10 * scale or step + 1 == size
        # the residual bound of each Ritz pair: beta times the last entry of its eigenvector
        residuals = torch.zeros_like(ritz) if exact else beta * vectors[-1].abs()
        stop = monitor(step, ritz, residuals) if monitor is not None else False
        if exact or stop or step + 1 == steps:
            return LanczosRun(ritz.tolist(), (vectors[0] ** 2).tolist(), residuals.tolist(),
                              step + 1, exact)
        betas.append(beta)
        basis[step + 1] = w / beta
    raise AssertionError("unreachable: the loop returns at its last step")  # pragma: no cover


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


# ---------------------------------------------------------------------------------------
# Density (stochastic Lanczos quadrature)


def run_seed(seed: int, run: int) -> int:
    """The Lanczos start of run ``run`` under ``seed`` (run 0 is ``seed`` itself)."""
    return seed + 1_000_003 * run


def gaussian_density(runs: Sequence[LanczosRun], grid: torch.Tensor, sigma: float
                     ) -> torch.Tensor:
    """``(1/m) sum_r sum_j w_rj N(grid; theta_rj, sigma^2)`` over the finite runs (float64)."""
    total = torch.zeros_like(grid, dtype=torch.float64)
    used = [r for r in runs if r.finite and r.nodes]
    for run in used:
        nodes = torch.tensor(run.nodes, dtype=torch.float64)
        weights = torch.tensor(run.weights, dtype=torch.float64)
        z = (grid.double()[:, None] - nodes[None, :]) / sigma
        total += (torch.exp(-0.5 * z * z) * weights[None, :]).sum(1)
    return total / (max(len(used), 1) * sigma * math.sqrt(2 * math.pi))


@dataclass
class SpectralDensity:
    """An SLQ estimate of the Hessian's eigenvalue density, with every setting it used.

    ``grid``/``density``: the broadened density (per unit eigenvalue) on an even grid that
    reaches ``pad`` standard deviations beyond the outermost nodes, so it holds its whole
    mass. ``nodes``/``weights``: each run's quadrature rule. ``sigma``: the Gaussian's
    standard deviation, ``width`` times the nodes' span. ``outer_converged`` /
    ``outer_residuals``: per run, its lowest and highest node's flag by
    :func:`~depthscape.analysis.hessian.ritz_converged` at ``tol`` and its residual bound
    (the inner nodes are quadrature nodes, not eigenvalue estimates; None: not recorded).
    """

    grid: list[float]
    density: list[float]
    nodes: list[list[float]]
    weights: list[list[float]]
    sigma: float
    settings: dict = field(default_factory=dict)  # runs, steps, width, points, pad, seed
    products: int = 0  # Hessian-vector products spent
    num_parameters: int = 0
    finite: bool = True  # every run finite (no overflow)
    outer_converged: list[list[bool]] | None = None  # per run: [lowest, highest] node
    outer_residuals: list[list[float]] | None = None  # per run: [lowest, highest] node
    tol: float | None = None  # the tolerance the outer nodes were judged at

    def moment(self, k: int) -> float:
        """The quadrature's ``k``-th moment: mean over runs of ``sum_j w_j theta_j^k``
        (estimates ``tr(H^k) / n``; the broadened density adds the Gaussian's moments)."""
        values = [sum(w * t ** k for t, w in zip(n, ws)) for n, ws in zip(self.nodes, self.weights)]
        return sum(values) / len(values) if values else math.nan

    def mass(self) -> float:
        """The density's integral over its grid (trapezoid rule): 1 up to the grid's error."""
        return float(torch.trapezoid(torch.tensor(self.density, dtype=torch.float64),
                                     torch.tensor(self.grid, dtype=torch.float64)))

    def density_moment(self, k: int) -> float:
        """The ``k``-th moment of the broadened density on its grid (trapezoid rule)."""
        grid = torch.tensor(self.grid, dtype=torch.float64)
        values = torch.tensor(self.density, dtype=torch.float64) * grid ** k
        return float(torch.trapezoid(values, grid))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "SpectralDensity":
        return cls(**data)

    def to_csv(self) -> str:
        """``eigenvalue,density`` rows, after ``# key: value`` lines with every setting."""
        out = io.StringIO()
        judged = {} if self.outer_converged is None else {
            "tol": self.tol, "outer_converged": self.outer_converged,
            "outer_residuals": [[float(f"{r:.3g}") for r in pair]
                                for pair in self.outer_residuals or []]}
        for key, value in {**self.settings, "sigma": self.sigma, "products": self.products,
                           "num_parameters": self.num_parameters, **judged}.items():
            out.write(f"# {key}: {value}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["eigenvalue", "density"])
        writer.writerows([f"{x:.10g}", f"{d:.10g}"] for x, d in zip(self.grid, self.density))
        return out.getvalue()


def spectral_density(operator: Callable, params: Sequence[torch.Tensor], runs: int = 3,
                     steps: int = 80, width: float = 0.005, points: int = 1000,
                     pad: float = 6.0, seed: int = 0, tol: float = 1e-3) -> SpectralDensity:
    """The eigenvalue density of the symmetric ``operator`` by stochastic Lanczos quadrature.

    ``runs`` Lanczos runs of ``steps`` steps (run ``r`` starts from seed
    :func:`run_seed` ``(seed, r)``), broadened by a Gaussian of standard deviation
    ``width`` times the span of all nodes, on ``points`` grid points. Each run's outer
    nodes (its estimates of the spectrum's ends) are judged by the rule of every Lanczos
    value, :func:`~depthscape.analysis.hessian.ritz_converged` at ``tol`` (flagged, never a
    reason to stop: the quadrature wants its ``steps``). Cost: ``runs * steps``
    Hessian-vector products (fewer where a run ends exact).
    """
    if runs < 1 or steps < 1 or points < 2 or not width > 0 or not pad > 0:
        raise ValueError("runs, steps (>= 1), points (>= 2), width and pad (> 0) are needed")
    results = [lanczos(operator, params, steps, run_seed(seed, r)) for r in range(runs)]
    settings = {"runs": runs, "steps": steps, "width": width, "points": points, "pad": pad,
                "seed": seed}
    products = sum(r.steps for r in results)
    size = sum(p.numel() for p in params)
    finite = [r for r in results if r.finite and r.nodes]
    if not finite:
        return SpectralDensity([], [], [], [], math.nan, settings, products, size, False)
    low = min(min(r.nodes) for r in finite)
    high = max(max(r.nodes) for r in finite)
    sigma = width * max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
    grid = torch.linspace(low - pad * sigma, high + pad * sigma, points, dtype=torch.float64)
    density = gaussian_density(finite, grid, sigma)
    outer = [[0, len(r.nodes) - 1] for r in finite]
    scales = [max(abs(r.nodes[0]), abs(r.nodes[-1]), 1e-30) for r in finite]
    return SpectralDensity(grid.tolist(), density.tolist(), [r.nodes for r in finite],
                           [r.weights for r in finite], sigma, settings, products, size,
                           len(finite) == len(results),
                           [[ritz_converged(r.nodes[i], r.residuals[i], tol, scale) for i in ends]
                            for r, ends, scale in zip(finite, outer, scales)],
                           [[r.residuals[i] for i in ends] for r, ends in zip(finite, outer)],
                           tol)
