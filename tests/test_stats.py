"""Student-t confidence intervals against tabulated quantiles."""

from __future__ import annotations

import math

import pytest

from depthscape.analysis.stats import format_ci, mean_ci, student_t_cdf, student_t_quantile


@pytest.mark.parametrize("df,want", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622),
                                     (29, 2.0452), (1000, 1.9623)])
def test_t_quantiles_match_the_tables(df, want):
    assert student_t_quantile(0.975, df) == pytest.approx(want, abs=1e-4)
    assert student_t_quantile(0.025, df) == pytest.approx(-want, abs=1e-4)
    assert student_t_cdf(want, df) == pytest.approx(0.975, abs=1e-5)


def test_mean_ci():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, math.nan])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.3027 * 1.0 / math.sqrt(3), rel=1e-4)
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert mean_ci([])[2] == 0
    assert format_ci(2.0, half, 3) == "2 ± 2.5" and format_ci(5.0, math.nan, 1) == "5"
    assert format_ci(math.nan, math.nan, 0) == "-"
