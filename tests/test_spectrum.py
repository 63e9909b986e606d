"""The Hessian's spectrum (SLQ density, top-k) against the exact Hessian of a tiny network."""

from __future__ import annotations

import math

import pytest
import torch
from _landscape_tools import TinyNet  # noqa: E402  (tests/ is on sys.path, as conftest is)
from test_sharpness import exact_hessian

from depthscape.analysis.hessian import HessianOperator
from depthscape.analysis.spectrum import (
    SpectralDensity,
    lanczos,
    plot_densities,
    run_seed,
    spectral_density,
    top_eigenvalues,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyNet().double()
    model.train()
    inputs = torch.randn(12, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            model(inputs + 0.5)
    labels = torch.randint(0, 3, (12,))
    hessian = exact_hessian(model, inputs, labels)
    return model, inputs, labels, hessian, torch.linalg.eigvalsh(hessian)


def test_quadrature_reproduces_the_start_vectors_moments(setup):
    """Gauss quadrature from s Lanczos steps is exact for v^T H^k v, k < 2s."""
    model, inputs, labels, hessian, _ = setup
    operator = HessianOperator(model, inputs, labels)
    run = lanczos(operator, operator.params, steps=6, seed=3)
    assert run.steps == 6 and sum(run.weights) == pytest.approx(1.0, abs=1e-12)
    start = torch.randn(hessian.shape[0], generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    v = start / start.norm()
    power = v.clone()
    for k in range(1, 12):
        power = hessian @ power
        exact = float(v @ power)
        quadrature = sum(w * t ** k for t, w in zip(run.nodes, run.weights))
        assert quadrature == pytest.approx(exact, rel=1e-7, abs=1e-10)


def test_density_mass_and_moments_match_the_exact_spectrum(setup):
    model, inputs, labels, hessian, eigenvalues = setup
    n = len(eigenvalues)
    operator = HessianOperator(model, inputs, labels)
    m = 20
    density = spectral_density(operator, operator.params, runs=m, steps=30, width=0.01,
                               points=4000, seed=0)
    assert density.products == m * 30 and density.finite and len(density.nodes) == m
    assert density.mass() == pytest.approx(1.0, abs=1e-6)
    # Monte-Carlo error of SLQ: for v uniform on the unit sphere of R^n,
    # Var(v^T A v) = 2 / (n + 2) * (tr(A^2)/n - (tr(A)/n)^2), so the mean over m runs has
    # standard error sqrt(2 var / ((n + 2) m)), ~1/sqrt(m n). We allow 4 of them.
    for k in (1, 2):
        lam_k = eigenvalues ** k
        exact = float(lam_k.mean())
        error = math.sqrt(2 * float(lam_k.var(unbiased=False)) / ((n + 2) * m))
        assert abs(density.moment(k) - exact) < 4 * error, (k, density.moment(k), exact, error)
    # the broadened density has the quadrature's mean, and its second moment plus sigma^2
    scale = float(eigenvalues.abs().max())
    assert density.density_moment(1) == pytest.approx(density.moment(1), abs=1e-6 * scale)
    assert density.density_moment(2) == pytest.approx(density.moment(2) + density.sigma ** 2,
                                                      rel=1e-6)
    assert density.density_moment(1) == pytest.approx(float(torch.trace(hessian)) / n,
                                                      abs=4 * math.sqrt(
                                                          2 * float(eigenvalues.var()) / (n * m)))


def test_a_full_run_finds_every_distinct_eigenvalue():
    spectrum = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0, 10.0], dtype=torch.float64)
    params = [torch.zeros(6, dtype=torch.float64)]
    run = lanczos(lambda v: [spectrum * v[0]], params, steps=50)
    assert run.steps == 6 and run.exact
    torch.testing.assert_close(torch.tensor(run.nodes, dtype=torch.float64), spectrum)
    density = spectral_density(lambda v: [spectrum * v[0]], params, runs=2, steps=6)
    assert density.settings == {"runs": 2, "steps": 6, "width": 0.005, "points": 1000,
                                "pad": 6.0, "seed": 0}
    assert density.mass() == pytest.approx(1.0, abs=1e-3)  # 1000 points, 6 narrow peaks


def test_top_k_match_the_exact_top_k(setup):
    model, inputs, labels, _, eigenvalues = setup
    operator = HessianOperator(model, inputs, labels)
    exact = eigenvalues.flip(0)[:5]
    assert bool((exact[:-1] - exact[1:] > 1e-6).all())  # distinct: one start sees them all
    top = top_eigenvalues(operator, operator.params, k=5, iters=len(eigenvalues), tol=1e-10)
    assert top.all_converged and top.iterations < len(eigenvalues)
    scale = float(eigenvalues.abs().max())
    for value, want in zip(top.values, exact.tolist()):
        assert value == pytest.approx(want, abs=1e-7 * scale)
    assert all(r < 1e-3 * scale for r in top.residuals)


def test_top_k_reports_what_did_not_settle():
    spectrum = torch.cat([torch.tensor([100.0, 50.0]), torch.linspace(-1, 1, 198)]).double()
    params = [torch.zeros(200, dtype=torch.float64)]
    top = top_eigenvalues(lambda v: [spectrum * v[0]], params, k=3, iters=8, tol=1e-8)
    assert top.iterations == 8 and not top.all_converged
    assert top.converged[:2] == [True, True] and not top.converged[2]
    assert top.values[0] == pytest.approx(100.0) and top.values[1] == pytest.approx(50.0)
    assert top.values[2] <= 1.0  # approached from inside


def test_overflow_gives_no_density_and_nan_top_k():
    params = [torch.zeros(5)]
    density = spectral_density(lambda v: [v[0] * math.inf], params, runs=2, steps=3)
    assert not density.finite and density.density == [] and density.products == 2
    top = top_eigenvalues(lambda v: [v[0] * math.nan], params, k=2, iters=3)
    assert all(math.isnan(v) for v in top.values) and not top.all_converged


def test_density_stores_every_setting_and_plots(tmp_path):
    spectrum = torch.linspace(0, 5, 40).double()
    params = [torch.zeros(40, dtype=torch.float64)]
    density = spectral_density(lambda v: [spectrum * v[0]], params, runs=2, steps=10, seed=4)
    again = SpectralDensity.from_dict(__import__("json").loads(density.to_json()))
    assert again == density
    text = density.to_csv()
    assert "# runs: 2\n" in text and "# seed: 4\n" in text and "# sigma: " in text
    assert text.count("\n") == 1000 + 1 + len(density.settings) + 3
    assert run_seed(4, 0) == 4 and run_seed(4, 1) != run_seed(5, 0)
    path = plot_densities([("a", density), ("b", density)], tmp_path / "d.png", title="t")
    assert path.stat().st_size > 1000
