"""Issue 31 item 4: the SLQ density's broadening from the bulk, its outliers, its negative mass
and its moments' intervals, against the exact Hessian of a small CNN with BatchNorm (float64,
``torch.autograd.functional.hessian``, ``eigvalsh``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_sharpness import exact_hessian
from torch import nn

from depthscape.analysis import broadening
from depthscape.analysis.density import SpectralDensity, spectral_density
from depthscape.analysis.hessian import UNCONVERGED_MARK, HessianOperator
from depthscape.analysis.spectrum_plots import density_figure


def small_cnn_data(train_steps: int):
    """Conv-BN-ReLU twice, pooled, linear (272 parameters), after ``train_steps`` SGD steps
    on 64 images of 6 x 6 whose class shifts a horizontal ramp: trained (300 steps), a few
    outliers stand over a bulk within +-0.01 lambda_max, as in the issue's CNN; early (30),
    3.7 % of the eigenvalues lie below -0.01 lambda_max."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4)).double()
    inputs = torch.randn(64, 1, 6, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (64,))
    ramp = torch.linspace(-1, 1, 6, dtype=torch.float64).view(1, 1, 1, 6)
    inputs = inputs + 0.8 * labels.view(-1, 1, 1, 1) * ramp
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(train_steps):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model, inputs, labels, torch.linalg.eigvalsh(exact_hessian(model, inputs, labels))


def small_cnn(train_steps: int):
    """:func:`small_cnn_data`'s Hessian operator and exact eigenvalues."""
    model, inputs, labels, eigenvalues = small_cnn_data(train_steps)
    return HessianOperator(model, inputs, labels), eigenvalues


@pytest.fixture(scope="module")
def trained():
    return small_cnn(300)


@pytest.fixture(scope="module")
def early():
    return small_cnn(30)


def _bulk_moments(density: SpectralDensity, low: float, high: float):
    """Mass and standard deviation of the broadened density over [low, high] (on its grid)."""
    grid = torch.tensor(density.grid, dtype=torch.float64)
    values = torch.tensor(density.density, dtype=torch.float64)
    inside = (grid >= low) & (grid <= high)
    mass, first, second = (float(torch.trapezoid(values[inside] * grid[inside] ** k,
                                                 grid[inside])) for k in range(3))
    return mass, math.sqrt(second / mass - (first / mass) ** 2)


def test_the_bulk_broadening_shows_the_bulk_that_the_span_broadening_smears(trained):
    operator, eigenvalues = trained
    top = float(eigenvalues[-1])
    threshold = -0.01 * top
    assert float(eigenvalues[0]) > threshold and top > 30 * float(eigenvalues[-3])  # outliers
    inside = eigenvalues[eigenvalues.abs() <= -threshold]
    exact_mass, exact_spread = len(inside) / len(eigenvalues), float(inside.std())
    for seed in range(3):
        new = spectral_density(operator, operator.params, runs=10, steps=40, seed=seed)
        old = spectral_density(operator, operator.params, runs=10, steps=40, seed=seed,
                               width=0.005)
        assert (new.broadening, old.broadening) == ("bulk", "span")
        assert new.settings["width"] is None and new.sigma < old.sigma / 5
        # the failure: the span's Gaussian puts 2 % of the mass below -0.01
        # lambda_max where no eigenvalue lies; the bulk's puts none there
        assert old.mass_below(threshold) > 0.01 and new.mass_below(threshold) < 1e-6
        assert new.negative_threshold() == pytest.approx(threshold, rel=1e-6)
        assert new.negative_mass() == (0.0, 0.0, 10)
        # the bulk's moments: the span's Gaussian is 4x wider than the bulk itself
        mass, spread = _bulk_moments(new, threshold, -threshold)
        old_mass, old_spread = _bulk_moments(old, threshold, -threshold)
        assert mass == pytest.approx(exact_mass, abs=0.02)
        assert spread == pytest.approx(exact_spread, rel=0.2)
        assert old_spread > 3 * exact_spread and old_mass < exact_mass - 0.04
        assert new.mass() == pytest.approx(1.0, abs=1e-6)
        # the outliers are the two top eigenvalues, found by every run
        outliers = new.outliers()
        assert len(outliers) == 2
        torch.testing.assert_close(torch.tensor(outliers, dtype=torch.float64),
                                   eigenvalues[-2:], rtol=1e-8, atol=0)


def test_the_negative_mass_and_its_interval_against_the_exact_share(early):
    operator, eigenvalues = early
    covered = closer = 0
    for seed in range(8):
        new = spectral_density(operator, operator.params, runs=5, steps=30, seed=seed)
        old = spectral_density(operator, operator.params, runs=5, steps=30, seed=seed,
                               width=0.005)
        threshold = new.negative_threshold()
        exact = float((eigenvalues < threshold).double().mean())
        negative = new.negative_mass()
        assert negative.runs == 5 and negative.ci > 0 and 0.02 < exact < 0.05
        covered += abs(negative.value - exact) <= negative.ci
        closer += abs(new.mass_below(threshold) - exact) < abs(old.mass_below(threshold) - exact)
    assert covered >= 7 and closer >= 7


def test_the_moments_intervals_cover_the_exact_moments_in_most_seeds(early):
    operator, eigenvalues = early
    covered = {1: 0, 2: 0}
    seeds = range(12)
    for seed in seeds:
        density = spectral_density(operator, operator.params, runs=5, steps=20, seed=seed)
        for k in covered:
            moment = density.moment(k)
            assert moment.runs == 5 and moment.ci > 0
            covered[k] += abs(moment.value - float((eigenvalues ** k).mean())) <= moment.ci
    assert min(covered.values()) >= 9, covered  # 95 % intervals, heavy-tailed draws


def test_the_rules_on_spectra_of_known_shape():
    # a Gaussian bulk of 2,000 and two outliers: the bulk's Silverman width, both outliers
    spectrum = torch.cat([torch.randn(2000, generator=torch.Generator().manual_seed(0)),
                          torch.tensor([60.0, 200.0])]).double()
    params = [torch.zeros(len(spectrum), dtype=torch.float64)]
    density = spectral_density(lambda v: [spectrum * v[0]], params, runs=4, steps=60)
    low, high = density.bulk()
    assert low == pytest.approx(-1.645, abs=0.25) and high == pytest.approx(1.645, abs=0.25)
    count = sum(1 for run in density.nodes for t in run if low <= t <= high)
    assert density.sigma == pytest.approx(0.9 * (high - low) / 3.2897 * count ** -0.2)
    assert density.outliers() == pytest.approx([60.0, 200.0], rel=1e-9)
    assert broadening.outlier_fences(low, high)[1] == pytest.approx(high + 10 * (high - low))
    # one node holding the bulk: no bulk width, so the span's rule (and the record says so)
    single = spectral_density(lambda v: [2.0 * v[0]], params, runs=2, steps=5)
    assert single.broadening == broadening.SPAN_FALLBACK and len(single.nodes[0]) == 1
    assert single.sigma == pytest.approx(0.005 * 2e-12)  # the span's floor: 1e-12 x 2
    # the grid lies on the nodes' support: most points in the bulk, none in the gaps
    grid = torch.tensor(density.grid)
    reach = density.settings["pad"] * density.sigma
    assert len(grid) == 1000 and bool((grid.diff() > 0).all())
    assert not bool(((grid > high + 10 + reach) & (grid < 60 - reach)).any())
    assert float((grid.diff() < density.sigma / 2).double().mean()) > 0.99


def test_a_density_stores_its_rule_and_summary_and_old_ones_load(tmp_path):
    spectrum = torch.cat([torch.linspace(-1, 3, 60), torch.tensor([500.0])]).double()
    params = [torch.zeros(61, dtype=torch.float64)]
    density = spectral_density(lambda v: [spectrum * v[0]], params, runs=3, steps=12, seed=4)
    stored = json.loads(density.to_json())
    assert stored["broadening"] == "bulk" and stored["sigma"] == density.sigma
    summary = stored["summary"]
    assert summary["negative_mass"] == density.negative_mass().value
    assert summary["negative_mass_ci"] == density.negative_mass().ci
    assert summary["outliers"] == pytest.approx([500.0]) and summary["confidence"] == 0.95
    assert SpectralDensity.from_dict(stored) == density
    # stored before the rule had a name (and without a summary): the span's, as it was
    old = {k: v for k, v in stored.items() if k not in ("broadening", "summary")}
    assert SpectralDensity.from_dict(old).broadening == "span"
    text = density.to_csv()
    for line in ("# broadening: bulk\n", "# width: None\n", "# outliers: [",
                 f"# negative_threshold: {density.negative_threshold()}\n",
                 f"# negative_mass_ci: {density.negative_mass().ci}\n"):
        assert line in text
    path = density.plot(tmp_path / "d.png", label="line")
    assert path == tmp_path / "d.png" and path.stat().st_size > 1000


def test_the_plot_draws_a_log_axis_marks_the_outliers_and_states_the_negative_mass():
    spectrum = torch.cat([torch.linspace(-2, 3, 80), torch.tensor([500.0])]).double()
    params = [torch.zeros(81, dtype=torch.float64)]
    density = spectral_density(lambda v: [spectrum * v[0]], params, runs=3, steps=20)
    assert density.outliers() == pytest.approx([500.0])
    figure = density_figure([("toy", density)], title="t")
    whole, bulk = figure.axes
    assert whole.get_yscale() == "log" and bulk.get_yscale() == "log"
    markers = [line for line in whole.get_lines() if line.get_marker() == "v"]
    assert [list(m.get_xdata()) for m in markers] == [pytest.approx(density.outliers())]
    low, high = density.bulk()
    assert bulk.get_xlim() == pytest.approx((low - (high - low), high + (high - low)))
    negative = density.negative_mass()
    [label] = [t.get_text() for t in bulk.get_legend().get_texts()]
    assert f"{100 * negative.value:.2g} ± {100 * negative.ci:.2g} %" in label
    assert f"below {density.negative_threshold():.3g}" in label and "(bulk)" in label
    linear = density_figure([("toy", density)], log_scale=False)
    assert linear.axes[0].get_yscale() == "linear"


def test_the_repr_marks_an_outer_node_that_did_not_converge():
    spectrum = torch.cat([torch.tensor([100.0]), torch.linspace(-1, 1, 199)]).double()
    params = [torch.zeros(200, dtype=torch.float64)]
    density = spectral_density(lambda v: [spectrum * v[0]], params, runs=2, steps=8, tol=1e-6)
    text = repr(density)
    assert text.startswith("SpectralDensity(runs=2, nodes=[") and "(bulk)" in text
    low, high = text.split("nodes=[")[1].split("]")[0].split(" .. ")
    assert low.endswith(UNCONVERGED_MARK) and high == "100"  # the top converged, not -1
    assert "products=16" in text and "negative_mass=" in text


def test_stored_densities_of_another_rule_are_measured_again(tmp_path, tiny_data, cache_dir,
                                                             monkeypatch):
    from _study_tools import write_fake_run

    import depthscape.analysis.sharpness as sharpness
    from depthscape.core.data import load_dataset

    paths = write_fake_run(tmp_path, "resnet8", dataset="tinydata0")
    dataset = load_dataset(str(tiny_data), cache_dir=cache_dir)
    config = sharpness.SharpnessConfig(subset=8)
    span = sharpness.DensityConfig(runs=2, steps=4, points=50, width=0.005)  # the span's
    bulk = sharpness.DensityConfig(runs=2, steps=4, points=50, width=None)
    out = tmp_path / "run.density.json"
    sharpness.measure_density(paths.final, config, span, dataset, out)
    stored = json.loads(out.read_text())
    assert "broadening" not in stored["key"]["settings"]  # the span's key: as before
    assert stored["result"]["broadening"] == "span" and "negative_mass" in stored["result"]["summary"]
    # as stored before the rule had a name: reused by the span's rule, not by the bulk's
    for name in ("broadening", "summary"):
        del stored["result"][name]
    out.write_text(json.dumps(stored))
    measured = []
    engine = sharpness.spectral_density
    monkeypatch.setattr(sharpness, "spectral_density",
                        lambda *a, **k: measured.append(k) or engine(*a, **k))
    assert sharpness.measure_density(paths.final, config, span, dataset, out).broadening == "span"
    assert measured == []
    again = sharpness.measure_density(paths.final, config, bulk, dataset, out)
    assert len(measured) == 1 and again.broadening in ("bulk", broadening.SPAN_FALLBACK)
    stored = json.loads(out.read_text())
    assert stored["key"]["settings"]["broadening"] == broadening.BULK_RULE
    assert stored["key"]["settings"]["width"] is None
    assert out.with_suffix(".png").exists() and "# broadening: " in out.with_suffix(".csv").read_text()
