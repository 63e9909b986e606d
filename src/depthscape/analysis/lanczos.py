"""Lanczos runs on a symmetric operator (a Hessian's products), the engine of the spectrum.

:func:`lanczos` runs at most ``steps`` fully reorthogonalised Lanczos steps and returns the
tridiagonal's eigenpairs as a quadrature rule (:class:`LanczosRun`): the top-k
(:mod:`depthscape.analysis.spectrum`) reads its outer Ritz values, the density
(:mod:`depthscape.analysis.density`) its nodes and weights. :func:`run_seed` is the start
of each of several independent runs (and of each draw of a sharpness measure).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

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


def flat_operator(operator: Callable, params: Sequence[torch.Tensor]):
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def apply(flat: torch.Tensor) -> torch.Tensor:
        product = operator([t.view(shape) for t, shape in zip(flat.split(sizes), shapes)])
        return torch.cat([h.reshape(-1) for h in product])

    return apply, sum(sizes)


def tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> torch.Tensor:
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
    apply, size = flat_operator(operator, params)
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
            ritz, vectors = torch.linalg.eigh(tridiagonal(alphas, betas))
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


def run_seed(seed: int, run: int) -> int:
    """The Lanczos start of run ``run`` under ``seed`` (run 0 is ``seed`` itself)."""
    return seed + 1_000_003 * run


