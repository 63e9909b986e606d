"""The report's "Where in depth" numbers (analysis/gradient_flow.py, study/stages/depth.py):
early vs late stages, the window means and their intervals (over seeds, else over log
rows), and a difference stated only where the intervals separate the networks."""

from __future__ import annotations

import numpy as np
import pytest

from depthscape.analysis.gradient_flow import WINDOW, early_late_stages, flow_rows, phases
from depthscape.analysis.layer_curves import LayerFlow
from depthscape.study.stages.depth import PairFlow, flow_observations, flow_table

STAGES = ["stem", "stem", "layer1", "layer1", "layer2", "layer2", "layer3", "layer3", "head"]


def _flow(seed: int, early_scale: float, noise: float = 0.05, rows: int = 20) -> LayerFlow:
    """A run whose early layers' gradients are ``early_scale`` x the others', with noise."""
    rng = np.random.default_rng(seed)
    base = np.where(np.isin(STAGES, ["stem", "layer1"]), early_scale, 1.0)
    grad = base * np.exp(noise * rng.standard_normal((rows, len(STAGES))))
    ones = np.ones_like(grad)
    return LayerFlow("x", f"run{seed}", np.arange(1, rows + 1) * 100,
                     [f"l{i}" for i in range(len(STAGES))], STAGES, grad, ones, ones,
                     milestones=(1000, 1500))


def test_early_and_late_stages_of_a_resnet_and_of_the_cnn():
    assert early_late_stages(STAGES) == ({"stem", "layer1"}, {"layer3", "head"})
    assert early_late_stages(["features", "features", "classifier"]) == ({"features"},
                                                                          {"classifier"})


def test_the_phases_are_the_profile_s_iterations():
    assert phases(_flow(0, 1.0)) == [("start", 100), ("before decay 1", 1000),
                                     ("before decay 2", 1500), ("end", 2000)]


def test_a_tenfold_smaller_early_gradient_is_found_and_called_significant():
    res = flow_rows("resnet56", [_flow(s, 1.0) for s in range(3)])
    plain = flow_rows("plain56", [_flow(10 + s, 0.1) for s in range(3)])
    assert all(r.early.over == "seeds" and r.early.n == 3 for r in res + plain)
    # early log10 gradient: 0 and -1 (the geometric mean of the stage's layers)
    assert all(abs(r.early.mean) < 0.05 and abs(p.early.mean + 1) < 0.05
               for r, p in zip(res, plain))
    pair = PairFlow(56, ("ResNet-56", "PlainNet-56"), None, (res, plain))
    table = flow_table([pair])
    ratios = [float(row[4].rstrip("x")) for row in table.rows]
    assert ratios == pytest.approx([0.1] * 4, rel=0.15)
    assert all(row[7].startswith("significant") for row in table.rows)
    lines = flow_observations([pair])
    assert len(lines) == 4 and all("receive smaller gradients" in line for line in lines)


def test_noise_alone_is_not_called_a_difference_and_one_seed_is_over_log_rows():
    res = flow_rows("resnet56", [_flow(1, 1.0, noise=0.5)])
    plain = flow_rows("plain56", [_flow(2, 1.0, noise=0.5)])
    assert all(r.early.over == "log rows" and r.early.n == WINDOW for r in res[1:])
    pair = PairFlow(56, ("ResNet-56", "PlainNet-56"), None, (res, plain))
    lines = flow_observations([pair])
    assert lines and all("do not differ" in line for line in lines), lines
    assert {row[8] for row in flow_table([pair]).rows} == {f"{WINDOW} log rows"}
