"""What an SLQ density's nodes say about the spectrum: its bulk, the Gaussian broadening
that bulk sets, its outliers, its grid and its mass below a threshold (issue 31).

Every rule reads the quadrature rules of the density's ``m`` independent Lanczos runs,
pooled: each run's nodes ``theta_rj`` with its weights ``w_rj / m`` (so the pooled weights
sum to 1, the density's mass):

* **The bulk** (:func:`bulk_range`): the central 90 % of the pooled weight, from its 5 %
  to its 95 % weighted quantile (:data:`BULK_QUANTILES`). A few outlying eigenvalues hold
  a few ``1/n`` of the weight, so they never move it, where they set the span.
* **The broadening** (:func:`bulk_sigma`): Silverman's rule of thumb for a kernel density's
  bandwidth on the bulk's nodes, ``sigma = 0.9 * s * N^(-1/5)``, with ``s`` the bulk's
  width over a Gaussian's (``(q95 - q05) / 3.29``: a standard deviation that no outlier
  inflates) and ``N`` the nodes inside the bulk (more runs and steps, a narrower Gaussian).
  The older rule, ``width x`` the span of all nodes (:data:`SPAN_WIDTH` = 0.005), is wider
  than the whole bulk where one outlier sets the span; it stays for an explicit width.
* **Outliers** (:func:`outlier_fences`): nodes farther beyond the bulk than
  :data:`OUTLIER_FENCE` (10) times its width.
* **Negative mass**: each run's weight of the nodes below ``-eps``,
  ``eps = NEGATIVE_EPS * `` the largest node magnitude (:data:`NEGATIVE_EPS` = 0.01).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: The weighted quantiles that bound the bulk: its central 90 % of the quadrature weight.
BULK_QUANTILES = (0.05, 0.95)
#: ``q95 - q05`` of a Gaussian, in standard deviations (2 x 1.6449).
GAUSS_CENTRAL_90 = 3.2897
#: An outlier lies farther beyond the bulk than this many times the bulk's width.
OUTLIER_FENCE = 10.0
#: The negative mass counts the nodes below ``-NEGATIVE_EPS x`` the largest |node|.
NEGATIVE_EPS = 0.01
#: The older rule's fraction: sigma = SPAN_WIDTH x the span of the nodes (the CLI's
#: ``--density-width`` default), used where the bulk has no width.
SPAN_WIDTH = 0.005

#: Which rule set a density's sigma (``SpectralDensity.broadening``).
BULK = "bulk"  # bulk_sigma: the default
SPAN = "span"  # an explicit width x the span (and every density stored before the bulk rule)
SPAN_FALLBACK = "span (the bulk has no width)"  # SPAN_WIDTH x the span: bulk_sigma was None
#: The bulk rule's name in the key of every stored density it broadened, so densities of
#: another rule are measured again (a new rule: a new name).
BULK_RULE = "bulk-central90-silverman"


def pooled(nodes: Sequence[Sequence[float]], weights: Sequence[Sequence[float]]
           ) -> list[tuple[float, float]]:
    """Every run's ``(node, weight / m)``, ascending by node (the weights sum to 1)."""
    m = max(len(nodes), 1)
    return sorted((float(t), float(w) / m) for run_nodes, run_weights in zip(nodes, weights)
                  for t, w in zip(run_nodes, run_weights))


def weighted_quantile(pairs: Sequence[tuple[float, float]], q: float) -> float:
    """The smallest node whose cumulative weight reaches ``q`` (``pairs`` ascending)."""
    total = 0.0
    for node, weight in pairs:
        total += weight
        if total >= q:
            return node
    return pairs[-1][0]


def bulk_range(nodes, weights) -> tuple[float, float]:
    """The bulk: the pooled weight's :data:`BULK_QUANTILES` (nan, nan where no node)."""
    pairs = pooled(nodes, weights)
    if not pairs:
        return math.nan, math.nan
    return tuple(weighted_quantile(pairs, q) for q in BULK_QUANTILES)


def bulk_sigma(nodes, weights) -> float | None:
    """Silverman's bandwidth of the bulk's nodes, ``0.9 * (q95 - q05) / 3.29 * N^(-1/5)``;
    None where the bulk has no width (one node holds 90 % of the weight, or none)."""
    pairs = pooled(nodes, weights)
    if not pairs:
        return None
    low, high = bulk_range(nodes, weights)
    radius = max(abs(pairs[0][0]), abs(pairs[-1][0]))
    if not high - low > 1e-12 * radius:
        return None
    count = sum(1 for node, _ in pairs if low <= node <= high)
    return 0.9 * (high - low) / GAUSS_CENTRAL_90 * count ** -0.2


def outlier_fences(low: float, high: float) -> tuple[float, float]:
    """Beyond these a node is an outlier: :data:`OUTLIER_FENCE` bulk widths beyond the bulk."""
    width = high - low
    return low - OUTLIER_FENCE * width, high + OUTLIER_FENCE * width


def merged(values: Sequence[float], within: float) -> list[float]:
    """``values`` (ascending) with each run of neighbours closer than ``within`` replaced by
    its mean: the same outlier as each run found it, once."""
    groups: list[list[float]] = []
    for value in values:
        if groups and value - groups[-1][-1] <= within:
            groups[-1].append(value)
        else:
            groups.append([value])
    return [sum(group) / len(group) for group in groups]


def support_grid(nodes: Sequence[float], sigma: float, pad: float, points: int
                 ) -> torch.Tensor:
    """``points`` points (float64, ascending) spread evenly over the union of the intervals
    ``node +- pad * sigma``, both ends included.

    The broadened density is below ``exp(-pad^2 / 2)`` of every node's peak outside them,
    so the grid holds its mass, and its step is the union's length over ``points``, not the
    span's: a narrow bulk far from an outlier is drawn with most of the points, not a few.
    """
    reach = pad * sigma
    spans: list[list[float]] = []
    for node in sorted(nodes):
        if spans and node - reach <= spans[-1][1]:
            spans[-1][1] = node + reach
        else:
            spans.append([node - reach, node + reach])
    starts = torch.tensor([s for s, _ in spans], dtype=torch.float64)
    lengths = torch.tensor([e - s for s, e in spans], dtype=torch.float64)
    offsets = torch.cumsum(lengths, 0) - lengths  # where each interval begins along the union
    along = torch.linspace(0.0, float(lengths.sum()), points, dtype=torch.float64)
    index = (torch.searchsorted(offsets, along, right=True) - 1).clamp(0, len(spans) - 1)
    grid = starts[index] + (along - offsets[index])
    grid[-1] = spans[-1][1]
    return grid


def mass_below(nodes, weights, sigma: float, threshold: float) -> float:
    """The broadened density's mass below ``threshold``: the mean over runs of
    ``sum_j w_j Phi((threshold - theta_j) / sigma)`` (exact, no grid)."""
    pairs = pooled(nodes, weights)
    return sum(w * 0.5 * math.erfc((t - threshold) / (sigma * math.sqrt(2))) for t, w in pairs)
