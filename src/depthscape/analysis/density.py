"""The Hessian's eigenvalue density by stochastic Lanczos quadrature (SLQ).

SLQ (Ghorbani, Krishnan and Xiao, "An Investigation into Neural Net Optimization via
Hessian Eigenvalue Density", ICML 2019; PyHessian's ``density``): ``m`` Lanczos runs of ``s``
steps (:func:`~depthscape.analysis.lanczos.lanczos`), each from a random unit vector ``v``;
the eigenpairs ``(theta_j, u_j)`` of each run's ``s x s`` tridiagonal give a Gauss
quadrature rule, nodes ``theta_j`` (Ritz values) and weights ``u_j[0]**2`` (summing to 1),
that reproduces ``v^T H^k v`` exactly for ``k < 2s``. Averaged over the runs and broadened
by a Gaussian of standard deviation ``sigma`` it estimates ``phi(t) = (1/n) sum_i N(t;
lambda_i, sigma^2)``. ``E[v^T H^k v] = tr(H^k) / n`` for ``v`` uniform on the sphere, so the
density's mass is 1, its mean ``tr(H)/n`` and its second moment ``tr(H^2)/n + sigma^2``.

The Monte-Carlo error is that of ``m`` draws of ``v^T A v`` (``A = H^k``): each has variance
``2/(n+2) (tr(A^2)/n - (tr A/n)^2)``, so relative to the moment ``tr(A)/n`` the error of the
mean is about ``sqrt(2/m) ||A||_F / tr A``, which does **not** shrink with ``n``: a few
outliers make ``||H||_F`` comparable to ``tr H`` (30-53 % at ``m = 3``, issue 31). So each
per-run quantity comes with its Student-t interval over the runs (:class:`RunMean`).

The broadening, the bulk, the outliers and the negative mass are
:mod:`depthscape.analysis.broadening`'s rules. Cost: ``m * s`` Hessian-vector products.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from depthscape.analysis import broadening as rules
from depthscape.analysis.hessian import UNCONVERGED_MARK, ritz_converged
from depthscape.analysis.lanczos import LanczosRun, lanczos, run_seed
from depthscape.analysis.spectrum_plots import density_figure, plot_densities
from depthscape.analysis.stats import CONFIDENCE, format_ci, mean_ci


class RunMean(NamedTuple):
    """A mean over a density's independent Lanczos runs and its Monte-Carlo uncertainty."""

    value: float
    ci: float  # half-width of the two-sided 95 % Student-t interval over the runs (nan: one run)
    runs: int

    def __str__(self) -> str:
        return format_ci(self.value, self.ci, self.runs)


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


def _run_mean(values: Sequence[float]) -> RunMean:
    return RunMean(*mean_ci(values, CONFIDENCE))


@dataclass(repr=False)
class SpectralDensity:
    """An SLQ estimate of the Hessian's eigenvalue density, with every setting it used.

    ``grid``/``density``: the broadened density (per unit eigenvalue) on a grid over the
    nodes' support (:func:`~depthscape.analysis.broadening.support_grid`; densities stored
    before it: even over the span), reaching ``pad`` standard deviations beyond every node,
    so it holds the whole mass. ``nodes``/``weights``: each run's quadrature rule.
    ``sigma``: the Gaussian's standard deviation, set by the rule ``broadening`` names
    (``"bulk"``: from the bulk's nodes; ``"span"``: ``width`` times the nodes' span).
    ``outer_converged`` / ``outer_residuals``: per run, its lowest and highest node's flag by
    :func:`~depthscape.analysis.hessian.ritz_converged` at ``tol`` and its residual bound
    (the inner nodes are quadrature nodes, not eigenvalue estimates; None: not recorded).
    The ``repr`` marks an outer node that did not converge with a dagger.
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
    broadening: str = rules.SPAN  # the rule that set sigma (stored before it: the span's)

    def _per_run(self, value: Callable[[list[float], list[float]], float]) -> RunMean:
        return _run_mean([value(n, w) for n, w in zip(self.nodes, self.weights)])

    def moment(self, k: int) -> RunMean:
        """The quadrature's ``k``-th moment, ``sum_j w_j theta_j^k`` averaged over the runs
        (each estimates ``tr(H^k) / n`` without bias, exactly for ``k < 2 steps``), with its
        interval over the runs (the broadened density adds the Gaussian's moments)."""
        return self._per_run(lambda n, ws: sum(w * t ** k for t, w in zip(n, ws)))

    def radius(self) -> float:
        """The largest node magnitude (the spectral radius, as the runs estimate it)."""
        return max((abs(t) for run in self.nodes for t in run), default=math.nan)

    def negative_threshold(self, eps: float = rules.NEGATIVE_EPS) -> float:
        """``-eps`` times the largest node magnitude: what counts as negative curvature."""
        return -eps * self.radius()

    def negative_mass(self, eps: float = rules.NEGATIVE_EPS) -> RunMean:
        """The share of the eigenvalues below :meth:`negative_threshold` ``(eps)``: each
        run's weight of the nodes there, averaged, with its interval over the runs."""
        threshold = self.negative_threshold(eps)
        return self._per_run(lambda n, ws: sum(w for t, w in zip(n, ws) if t < threshold))

    def mass_below(self, threshold: float) -> float:
        """The broadened density's mass below ``threshold`` (what its plot shows there)."""
        return rules.mass_below(self.nodes, self.weights, self.sigma, threshold)

    def bulk(self) -> tuple[float, float]:
        """The central 90 % of the quadrature weight (:func:`~depthscape.analysis.
        broadening.bulk_range`)."""
        return rules.bulk_range(self.nodes, self.weights)

    def outliers(self) -> list[float]:
        """The nodes beyond :func:`~depthscape.analysis.broadening.outlier_fences` (10 bulk
        widths beyond the bulk), ascending, the runs' copies of one merged (within sigma)."""
        if not self.nodes:
            return []
        low, high = rules.outlier_fences(*self.bulk())
        found = sorted(t for run in self.nodes for t in run if t < low or t > high)
        return rules.merged(found, self.sigma)

    def mass(self) -> float:
        """The density's integral over its grid (trapezoid rule): 1 up to the grid's error."""
        return float(torch.trapezoid(torch.tensor(self.density, dtype=torch.float64),
                                     torch.tensor(self.grid, dtype=torch.float64)))

    def density_moment(self, k: int) -> float:
        """The ``k``-th moment of the broadened density on its grid (trapezoid rule)."""
        grid = torch.tensor(self.grid, dtype=torch.float64)
        values = torch.tensor(self.density, dtype=torch.float64) * grid ** k
        return float(torch.trapezoid(values, grid))

    def summary(self) -> dict:
        """What the nodes say, as stored beside them: the bulk, the outliers, the negative
        mass with its interval and threshold, the confidence of the intervals."""
        if not self.nodes:
            return {}
        negative = self.negative_mass()
        return {"bulk": list(self.bulk()), "outliers": self.outliers(),
                "negative_threshold": self.negative_threshold(),
                "negative_mass": negative.value, "negative_mass_ci": negative.ci,
                "confidence": CONFIDENCE}

    def to_dict(self) -> dict:
        """Every field, and the :meth:`summary` under ``"summary"``."""
        return {**asdict(self), "summary": self.summary()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "SpectralDensity":
        """A density from :meth:`to_dict` (its summary is recomputed) or as stored before."""
        return cls(**{k: v for k, v in data.items() if k != "summary"})

    def to_csv(self) -> str:
        """``eigenvalue,density`` rows, after ``# key: value`` lines with every setting."""
        out = io.StringIO()
        judged = {} if self.outer_converged is None else {
            "tol": self.tol, "outer_converged": self.outer_converged,
            "outer_residuals": [[float(f"{r:.3g}") for r in pair]
                                for pair in self.outer_residuals or []]}
        for key, value in {**self.settings, "sigma": self.sigma, "broadening": self.broadening,
                           "products": self.products, "num_parameters": self.num_parameters,
                           **judged, **self.summary()}.items():
            out.write(f"# {key}: {value}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["eigenvalue", "density"])
        writer.writerows([f"{x:.10g}", f"{d:.10g}"] for x, d in zip(self.grid, self.density))
        return out.getvalue()

    def plot(self, path=None, *, label: str = "SLQ", title: str | None = None,
             log_scale: bool = True):
        """The density drawn as :func:`~depthscape.analysis.spectrum_plots.plot_densities`
        draws it: written to ``path`` (its suffix picks the format; returns the path), or
        without ``path`` a matplotlib ``Figure`` (not shown, not saved)."""
        if path is None:
            return density_figure([(label, self)], title, log_scale=log_scale)
        return plot_densities([(label, self)], path, title, log_scale=log_scale)

    def _end(self, end: int) -> str:
        """The lowest (``end`` 0) or highest (1) node of all runs, daggered if unconverged."""
        place = 0 if end == 0 else -1
        pick = min if end == 0 else max
        run = pick(range(len(self.nodes)), key=lambda r: self.nodes[r][place])
        ok = self.outer_converged is None or self.outer_converged[run][end]
        return f"{self.nodes[run][place]:.4g}" + ("" if ok else UNCONVERGED_MARK)

    def __repr__(self) -> str:
        if not self.nodes:
            return f"SpectralDensity(no finite run, products={self.products})"
        negative = self.negative_mass()
        return (f"SpectralDensity(runs={len(self.nodes)}, nodes=[{self._end(0)} .. "
                f"{self._end(1)}], sigma={self.sigma:.3g} ({self.broadening}), "
                f"mean={self.moment(1)}, outliers={[float(f'{t:.4g}') for t in self.outliers()]}, "
                f"negative_mass={negative} below {self.negative_threshold():.3g}, "
                f"products={self.products})")


def _sigma(finite: Sequence[LanczosRun], width: float | None) -> tuple[float, str]:
    """The broadening: ``width`` times the nodes' span where a width is given, else the
    bulk's (:func:`~depthscape.analysis.broadening.bulk_sigma`; the span's at
    :data:`~depthscape.analysis.broadening.SPAN_WIDTH` where the bulk has no width)."""
    low = min(min(r.nodes) for r in finite)
    high = max(max(r.nodes) for r in finite)
    span = max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
    if width is not None:
        return width * span, rules.SPAN
    sigma = rules.bulk_sigma([r.nodes for r in finite], [r.weights for r in finite])
    if sigma is None:
        return rules.SPAN_WIDTH * span, rules.SPAN_FALLBACK
    return sigma, rules.BULK


def spectral_density(operator: Callable, params: Sequence[torch.Tensor], runs: int = 3,
                     steps: int = 80, width: float | None = None, points: int = 1000,
                     pad: float = 6.0, seed: int = 0, tol: float = 1e-3) -> SpectralDensity:
    """The eigenvalue density of the symmetric ``operator`` by stochastic Lanczos quadrature.

    ``runs`` Lanczos runs of ``steps`` steps (run ``r`` starts from seed
    :func:`~depthscape.analysis.lanczos.run_seed` ``(seed, r)``), broadened by a Gaussian
    whose standard deviation the bulk of the nodes sets (``width`` None: Silverman's rule on
    the central 90 % of the quadrature weight, :mod:`~depthscape.analysis.broadening`) or,
    with a ``width``, ``width`` times the span of all nodes (the older rule), on ``points``
    grid points over the nodes' support. Each run's outer nodes (its estimates of the
    spectrum's ends) are judged by the rule of every Lanczos value,
    :func:`~depthscape.analysis.hessian.ritz_converged` at ``tol`` (flagged, never a reason
    to stop: the quadrature wants its ``steps``). Cost: ``runs * steps`` Hessian-vector
    products (fewer where a run ends exact).
    """
    if runs < 1 or steps < 1 or points < 2 or not pad > 0 or not (width is None or width > 0):
        raise ValueError("runs, steps (>= 1), points (>= 2), pad (> 0) and a width > 0 (or "
                         "None: from the bulk) are needed")
    results = [lanczos(operator, params, steps, run_seed(seed, r)) for r in range(runs)]
    settings = {"runs": runs, "steps": steps, "width": width, "points": points, "pad": pad,
                "seed": seed}
    products = sum(r.steps for r in results)
    size = sum(p.numel() for p in params)
    finite = [r for r in results if r.finite and r.nodes]
    if not finite:
        return SpectralDensity([], [], [], [], math.nan, settings, products, size, False,
                               broadening=rules.BULK if width is None else rules.SPAN)
    sigma, rule = _sigma(finite, width)
    grid = rules.support_grid([t for r in finite for t in r.nodes], sigma, pad, points)
    density = gaussian_density(finite, grid, sigma)
    outer = [[0, len(r.nodes) - 1] for r in finite]
    scales = [max(abs(r.nodes[0]), abs(r.nodes[-1]), 1e-30) for r in finite]
    return SpectralDensity(grid.tolist(), density.tolist(), [r.nodes for r in finite],
                           [r.weights for r in finite], sigma, settings, products, size,
                           len(finite) == len(results),
                           [[ritz_converged(r.nodes[i], r.residuals[i], tol, scale) for i in ends]
                            for r, ends, scale in zip(finite, outer, scales)],
                           [[r.residuals[i] for i in ends] for r, ends in zip(finite, outer)],
                           tol, rule)
