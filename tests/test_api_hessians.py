"""Issue 31 item 3: the whole spectrum of any model from Python (``ds.hessian_top_k``,
``ds.hessian_density``) and the trace's interval, against exact Hessians; bad input is one
line before any Hessian-vector product."""

from __future__ import annotations

import math

import pytest
import torch
from test_density import small_cnn_data
from torch import nn

import depthscape as ds
from depthscape.analysis.density import spectral_density
from depthscape.analysis.hessian import RESIDUAL_FLOOR, UNCONVERGED_MARK, HessianOperator
from depthscape.analysis.stats import student_t_quantile
from depthscape.core.errors import UserError


@pytest.fixture(scope="module")
def cnn():
    return small_cnn_data(300)


def test_top_k_values_flagged_converged_are_the_exact_eigenvalues(cnn):
    model, inputs, labels, eigenvalues = cnn
    exact = eigenvalues.flip(0)
    radius = float(eigenvalues.abs().max())
    for tol, iters in ((1e-3, None), (1e-6, 25)):
        top = ds.hessian_top_k(model, (inputs, labels), 8, tol=tol, iters=iters, batch_size=40)
        assert isinstance(top, ds.TopEigenvalues) and len(top.values) == 8 and top.k == 8
        assert top.iterations <= (iters or 50) and len(top.residuals) == 8
        converged = [i for i, ok in enumerate(top.converged) if ok]
        assert len(converged) >= 3 if iters is None else 3 >= len(converged) >= 2
        for i in converged:
            allowed = 2 * tol * max(abs(float(exact[i])), RESIDUAL_FLOOR * radius)
            assert abs(top.values[i] - float(exact[i])) <= allowed, (i, top.values[i])
        shown = repr(top)
        assert shown.count(UNCONVERGED_MARK) == 8 - len(converged)
    assert not top.all_converged  # 25 steps at tol 1e-6: the outliers alone converge


def test_the_density_is_the_engines_with_its_settings(cnn, tmp_path):
    model, inputs, labels, eigenvalues = cnn
    density = ds.hessian_density(model, (inputs, labels), runs=3, steps=25, seed=2)
    assert isinstance(density, ds.SpectralDensity) and density.broadening == "bulk"
    operator = HessianOperator(model, inputs, labels)
    direct = spectral_density(operator, operator.params, runs=3, steps=25, seed=2)
    for got, want in zip(density.nodes, direct.nodes):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-9, atol=1e-12)
    assert density.sigma == pytest.approx(direct.sigma, rel=1e-9)
    assert density.settings["samples"] == 64 and density.settings["loss"] == "cross_entropy"
    assert density.settings["model"] == "Sequential" and density.products == 75
    first = density.moment(1)
    assert first.runs == 3 and first.ci > 0
    assert density.to_csv().startswith("# runs: 3\n# steps: 25\n# width: None\n")
    assert density.plot(tmp_path / "d.png").stat().st_size > 1000
    assert len(density.plot().axes) == 2  # a Figure, not saved
    spanned = ds.hessian_density(model, (inputs, labels), runs=2, steps=10, width=0.005)
    assert spanned.broadening == "span" and spanned.settings["width"] == 0.005


def test_the_trace_gives_its_interval_and_keeps_its_four_fields():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    data = (torch.randn(30, 3, dtype=torch.float64), torch.arange(30) % 3)
    estimate = ds.hessian_trace(model, data, samples=40, tol=0.0)
    trace, stderr, samples, converged = estimate  # still the 4-tuple it was
    assert samples == 40 and not converged
    assert estimate.ci == pytest.approx(student_t_quantile(0.975, 39) * stderr)
    assert estimate.interval == pytest.approx((trace - estimate.ci, trace + estimate.ci))
    assert repr(estimate).startswith(f"TraceEstimate(trace={trace:.6g}{UNCONVERGED_MARK} ± ")
    one = ds.hessian_trace(model, data, samples=1, min_samples=1, tol=0.0)
    assert math.isnan(one.ci)


def _no_second_derivative(outputs, targets):
    return (outputs.argmax(1) == targets).double().mean()  # no graph at all


def _constant_gradient(outputs, targets):
    return outputs.sum()  # of a linear model: its gradient does not depend on the weights


@pytest.mark.parametrize("call, fragment", [
    (lambda m, d: ds.hessian_top_k(m, d, 0), "k must be a whole number in [1, 10000], got 0"),
    (lambda m, d: ds.hessian_top_k(m, d, 2.5), "k must be a whole number"),
    (lambda m, d: ds.hessian_top_k(m, d, True), "k must be a whole number"),
    (lambda m, d: ds.hessian_top_k(m, d, 3, tol=-1.0), "tol must be a finite number in [0, 1]"),
    (lambda m, d: ds.hessian_top_k(m, d, 3, tol=math.nan), "tol must be a finite number"),
    (lambda m, d: ds.hessian_top_k(m, d, 3, iters=0), "iters must be a whole number"),
    (lambda m, d: ds.hessian_top_k(m, d, 10, iters=5), "k = 10 needs at least 10 Lanczos steps"),
    (lambda m, d: ds.hessian_top_k(m, d, 40), "k = 40 is more eigenvalues than the Hessian has: "
                                              "the model has 15 trainable parameters"),
    (lambda m, d: ds.hessian_density(m, d, runs=0), "runs must be a whole number in [1, 10000]"),
    (lambda m, d: ds.hessian_density(m, d, steps=1.5), "steps must be a whole number"),
    (lambda m, d: ds.hessian_density(m, d, points=1), "points must be a whole number in [2, "),
    (lambda m, d: ds.hessian_density(m, d, width=1e-9), "width must be a finite number in [0.001"),
    (lambda m, d: ds.hessian_density(m, d, tol=math.inf), "tol must be a finite number"),
    (lambda m, d: ds.hessian_density(m, d, loss=_no_second_derivative),
     "the loss has no second derivative with respect to the model's trainable parameters"),
    (lambda m, d: ds.hessian_density(m, d, loss=_constant_gradient),
     "the loss has no second derivative"),
    (lambda m, d: ds.hessian_extremes(m, d, loss=_constant_gradient),
     "the loss has no second derivative"),
])
def test_bad_input_is_one_line_before_any_product(call, fragment, monkeypatch):
    model = nn.Linear(4, 3)  # 15 parameters
    data = (torch.randn(10, 4), torch.arange(10) % 3)

    def product(self, vector):
        raise AssertionError("a Hessian-vector product was taken")

    monkeypatch.setattr(HessianOperator, "__call__", product)
    with pytest.raises(UserError) as caught:
        call(model, data)
    message = str(caught.value)
    assert fragment in message and "\n" not in message
