"""Flatness with error bars along K random 1-D slices through a minimum."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _landscape_tools import PREPROCESS, calibrated_model, tiny_dataset

from depthscape.analysis.landscape.flatness import (
    doubling_radius,
    flatness_cells,
    plot_flatness,
    slice_coordinates,
    slice_flatness,
    summarize,
)
from depthscape.analysis.stats import mean_ci


def test_measures_of_known_parabolas(tmp_path):
    """L_k(a) = 1 + c_k a^2: rise at r is c_k r^2, the loss doubles at a = 1/sqrt(c_k)."""
    coordinates = slice_coordinates(2.0, 401, 0.3)
    assert 0.0 in coordinates and 0.3 in coordinates and -0.3 in coordinates
    curvatures = [1.0, 2.0, 4.0]
    losses = [[1 + c * a * a for a in coordinates] for c in curvatures]
    result = summarize(coordinates, losses, 0.3, {"span": 2.0})
    assert result.base_loss == 1.0
    assert result.rise == pytest.approx([c * 0.09 for c in curvatures])
    assert result.doubling == pytest.approx([1 / math.sqrt(c) for c in curvatures], rel=1e-3)
    assert (result.rise_mean, result.rise_ci) == pytest.approx(mean_ci(result.rise)[:2])
    assert result.doubling_reached == 3
    rise, doubling = flatness_cells(result)
    assert rise.startswith("0.21 ± ") and " of " not in doubling
    # a flat direction never doubles: counted apart, left out of the mean
    flat = summarize(coordinates, losses + [[1.0] * len(coordinates)], 0.3, {"span": 2.0})
    assert flat.doubling[-1] is None and flat.doubling_reached == 3
    assert flat.doubling_mean == pytest.approx(result.doubling_mean)
    assert flatness_cells(flat)[1].endswith("(3 of 4; the others > 2)")
    assert doubling_radius([-1, 0, 1], [2.0, 1.0, 1.5], 1.0) is None  # one side only
    assert plot_flatness(result, tmp_path / "band.png").stat().st_size > 1000


def test_slices_through_a_small_network():
    data = tiny_dataset()
    model = calibrated_model("resnet8", dataset=data, steps=5)
    result = slice_flatness(model, data.train, PREPROCESS, directions=3, radius=0.3, span=1.0,
                            points=5, seed=2)
    assert len(result.losses) == 3 and len(result.coordinates) == 7  # 5 + the two +-radius
    zero = result.coordinates.index(0.0)
    assert np.ptp([row[zero] for row in result.losses]) < 1e-9  # the same minimum each time
    assert all(math.isfinite(r) for r in result.rise) and math.isfinite(result.rise_ci)
    assert result.settings["directions"] == 3 and result.settings["seed"] == 2
    again = slice_flatness(model, data.train, PREPROCESS, directions=3, radius=0.3, span=1.0,
                           points=5, seed=2)
    assert again.losses == result.losses  # seeded: the same directions
    with pytest.raises(ValueError):
        slice_flatness(model, data.train, PREPROCESS, directions=1)


def test_flatness_cli(tmp_path, tiny_data, cache_dir, capsys):
    from _study_tools import write_fake_run

    from depthscape.cli import main

    write_fake_run(tmp_path, "resnet8", dataset="tinydata0")
    args = ["flatness", "--run-dir", str(tmp_path), "--dataset", str(tiny_data),
            "--directions", "2", "--points", "3", "--radius", "0.5", "--subset", "8",
            "--no-progress"]
    assert main(args) == 0
    out = tmp_path / "flatness"
    stored = json.loads((out / "resnet8_tinydata0.flatness.json").read_text())
    assert stored["key"]["settings"]["directions"] == 2
    assert len(stored["result"]["losses"]) == 2
    assert (out / "resnet8_tinydata0.flatness.png").exists()
    table = (out / "flatness.md").read_text()
    assert "ResNet-8" in table and "Loss rise at radius 0.5" in table
    assert "Student-t" in capsys.readouterr().out
    assert main(args) == 0  # cached
    with pytest.raises(SystemExit):
        main(args[:-1] + ["--directions", "1"])
    assert main(args[:3] + ["--radius", "2", "--no-progress"]) == 2
