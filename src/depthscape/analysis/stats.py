"""Confidence intervals: Student's t, with no dependency beyond the standard library.

:func:`mean_ci` is what every error bar of depthscape's flatness measures reports: the
mean of ``n`` independent draws and the half-width of its two-sided Student-t confidence
interval, ``t_{(1+c)/2, n-1} * s / sqrt(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The confidence level of every interval depthscape reports.
CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t with ``df`` degrees of freedom (bisection)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE
            ) -> tuple[float, float, int]:
    """Mean, half-width of its two-sided Student-t interval, and count of the finite values.

    The half-width is nan for one value (no spread is known) and the mean nan for none.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(finite) / n
    if n == 1:
        return mean, math.nan, 1
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    return mean, student_t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n), n


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error, ``s / sqrt(n)`` (inf for one value):
    Hutchinson's trace and every block trace over the same probes."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
                  if n > 1 else math.inf)


def format_ci(mean: float, half: float, n: int, digits: int = 4,
              places: int | None = None) -> str:
    """``12.3 ± 0.4`` (``n`` > 1), ``12.3`` (one draw, or no half-width known), ``-`` (none):
    ``digits`` significant digits (the half-width 2), or ``places`` decimals for both."""
    if n == 0 or not math.isfinite(mean):
        return "-"
    shown, shown_half = (f".{digits}g", ".2g") if places is None else (f".{places}f",) * 2
    if n == 1 or not math.isfinite(half):
        return f"{mean:{shown}}"
    return f"{mean:{shown}} ± {half:{shown_half}}"
