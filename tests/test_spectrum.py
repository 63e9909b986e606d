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
    run_seed,
    spectral_density,
    top_eigenvalues,
)
from depthscape.analysis.spectrum_plots import plot_densities


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
        assert abs(density.moment(k).value - exact) < 4 * error, (k, density.moment(k), exact,
                                                                  error)
    # the broadened density has the quadrature's mean, and its second moment plus sigma^2
    scale = float(eigenvalues.abs().max())
    assert density.density_moment(1) == pytest.approx(density.moment(1).value,
                                                      abs=1e-6 * scale)
    assert density.density_moment(2) == pytest.approx(
        density.moment(2).value + density.sigma ** 2, rel=1e-6)
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
    assert density.settings == {"runs": 2, "steps": 6, "width": None, "points": 1000,
                                "pad": 6.0, "seed": 0}
    assert density.broadening == "bulk"
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
    top = top_eigenvalues(lambda v: [spectrum * v[0]], params, k=3, iters=20, tol=1e-8)
    assert top.iterations == 20 and not top.all_converged
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
    # the settings, sigma, its rule, products, parameters; the outer nodes' tolerance, flags,
    # residuals; the summary (bulk, outliers, negative threshold, mass and interval, confidence)
    assert text.count("\n") == 1000 + 1 + len(density.settings) + 4 + 3 + 6
    assert "# broadening: bulk\n" in text and "# negative_mass: " in text
    assert "# outer_converged: [[" in text and "# tol: 0.001\n" in text
    assert run_seed(4, 0) == 4 and run_seed(4, 1) != run_seed(5, 0)
    path = plot_densities([("a", density), ("b", density)], tmp_path / "d.png", title="t")
    assert path.stat().st_size > 1000


# ---------------------------------------------------------------------------------------
# Error bars on sharpness, and the command line


def test_draws_are_disjoint_and_combined_with_intervals(setup):
    from depthscape.analysis.sharpness import (
        SharpnessConfig,
        combine_draws,
        draw_subsets,
        model_sharpness,
    )
    from depthscape.analysis.stats import mean_ci
    from depthscape.core.data import Split
    from depthscape.core.errors import UserError

    split = Split(torch.arange(20).view(20, 1, 1, 1).to(torch.uint8), torch.arange(20) % 3)
    parts = draw_subsets(split, 6, 3, seed=1)
    seen = [set(p.images.flatten().tolist()) for p in parts]
    assert all(len(s) == 6 for s in seen) and not (seen[0] & seen[1] or seen[1] & seen[2])
    assert torch.equal(parts[0].images, split.subset(6, seed=1).images)  # draw 0: as before
    assert len(draw_subsets(split, None, 2, 0)) == 2
    with pytest.raises(UserError, match="disjoint subsets"):
        draw_subsets(split, 8, 3, 0)

    model, inputs, labels, _, eigenvalues = setup
    config = SharpnessConfig(power_iters=60, power_tol=1e-8, trace_samples=5, trace_tol=0.0,
                             top_k=3)
    draws = [model_sharpness(model, inputs[i::2], labels[i::2], config, seed=i)
             for i in range(2)]
    combined = combine_draws(draws, [0, 1])
    assert combined.draws == 2 and combined.confidence == 0.95
    largest = mean_ci([d.largest_eigenvalue for d in draws])
    assert combined.largest_eigenvalue == pytest.approx(largest[0])
    assert combined.largest_ci == pytest.approx(largest[1])
    assert len(combined.top_eigenvalues) == 3 and len(combined.top_ci) == 3
    assert combined.top_eigenvalues[0] == pytest.approx(combined.largest_eigenvalue, rel=1e-6)
    assert combined.eigen_steps == max(d.eigen_steps for d in draws)
    assert [v["seed"] for v in combined.draw_values] == [0, 1]
    # one unconverged draw leaves the combined end unconverged (the dagger stays)
    bad = type(draws[0]).from_dict({**draws[0].to_dict(), "largest_converged": False,
                                    "eigen_converged": False})
    assert not combine_draws([bad, draws[1]]).end_converged("largest")
    assert combine_draws([draws[0]]) is draws[0]


def test_table_shows_intervals_over_draws():
    from depthscape.analysis.sharpness import SharpnessResult, sharpness_table
    from depthscape.core.runs import RunInfo, run_paths

    run = RunInfo("resnet20", 0, "cifar10", run_paths(".", "resnet20", 0))
    result = SharpnessResult.from_fields(500.0, -3.0, 20, True, 90.0, 2.0, 10, True, 128, 1000,
                             True, True, top_eigenvalues=[500.0, 300.0],
                             top_converged=[True, False], draws=4, confidence=0.95,
                             largest_ci=40.0, smallest_ci=1.5, trace_ci=8.0, top_ci=[40.0, 9.0])
    table = sharpness_table([(run, result)])
    assert table.header[-2:] == ["Top eigenvalues", "Draws"]
    assert table.rows[0] == ["ResNet-20", "500 ± 40", "-3 ± 1.5", "90 ± 8", "0.09 ± 0.008",
                             "500 ± 40, 300 ± 9†", "4"]
    assert "95% Student-t confidence interval" in table.notes[0]
    csv = dict(zip(table.csv_header, table.csv_rows[0]))
    assert csv["draws"] == 4 and csv["largest_eigenvalue_ci"] == 40.0
    assert csv["top_eigenvalues"] == "500;300" and csv["all_top_converged"] is False


def test_sharpness_cli_density_top_k_and_draws(tmp_path, tiny_data, cache_dir, capsys):
    import json

    from _study_tools import write_fake_run

    from depthscape.cli import main

    write_fake_run(tmp_path, "resnet8", dataset="tinydata0")
    code = main(["sharpness", "--run-dir", str(tmp_path), "--dataset", str(tiny_data),
                 "--subset", "8", "--power-iters", "4", "--trace-samples", "2", "--top-k", "2",
                 "--draws", "3", "--density", "--density-runs", "2", "--density-steps", "5",
                 "--density-points", "200", "--no-progress"])
    assert code == 0
    out = tmp_path / "sharpness"
    stored = json.loads((out / "resnet8_tinydata0.json").read_text())
    assert stored["key"]["settings"]["draws"] == 3 and stored["result"]["draws"] == 3
    assert len(stored["result"]["draw_values"]) == 3
    density = json.loads((out / "resnet8_tinydata0.density.json").read_text())
    settings = density["key"]["settings"]
    assert settings["runs"] == 2 and settings["steps"] == 5 and settings["subset"] == 8
    assert density["result"]["products"] == 10 and len(density["result"]["grid"]) == 200
    assert (out / "resnet8_tinydata0.density.csv").read_text().startswith("# runs: 2\n")
    assert (out / "resnet8_tinydata0.density.png").exists() and (out / "density.png").exists()
    printed = capsys.readouterr().out
    assert "Draws" in printed and "Top eigenvalues" in printed and "density.png" in printed
    # the 72 training images hold 9 disjoint subsets of 8: 25 draws do not fit
    assert main(["sharpness", "--run-dir", str(tmp_path), "--dataset", str(tiny_data),
                 "--subset", "8", "--draws", "25", "--no-progress"]) == 2
    assert "disjoint subsets" in capsys.readouterr().err
