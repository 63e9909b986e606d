"""Training curves: EMA, reading logs, the x-axis unit, the spec's figures, the CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from _study_tools import write_fake_run

from depthscape.analysis.curves import ema, load_curve, resolve_runs, standard_figures
from depthscape.cli import main
from depthscape.core.errors import UserError

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_ema_matches_the_recurrence():
    values = [1.0, 2.0, 3.0, 5.0]
    smoothed = ema(values, 0.5)
    assert smoothed.tolist() == [1.0, 1.5, 2.25, 3.625]
    assert ema(values, 0.0).tolist() == values


def test_ema_skips_nan_without_moving():
    smoothed = ema([math.nan, 4.0, math.nan, 8.0], 0.5)
    assert math.isnan(smoothed[0]) and math.isnan(smoothed[2])
    assert smoothed[1] == 4.0 and smoothed[3] == 6.0


@pytest.mark.parametrize("factor", [-0.1, 1.0, 1.5])
def test_ema_rejects_bad_factor(factor):
    with pytest.raises(UserError, match="EMA factor"):
        ema([1.0], factor)


def test_cnn_curves_use_epochs_and_resnets_iterations(tmp_path):
    cnn = write_fake_run(tmp_path, "cnn", checkpoint=False)
    resnet = write_fake_run(tmp_path, "resnet20", checkpoint=False)
    cnn_curve, resnet_curve = load_curve(cnn.log), load_curve(resnet.log)
    assert cnn_curve.unit == "epoch" and cnn_curve.x.tolist() == [float(k) for k in range(1, 13)]
    assert resnet_curve.unit == "iteration" and resnet_curve.x[-1] == 1200
    assert resnet_curve.label == "ResNet-20"
    assert np.isnan(resnet_curve.series("test", "acc")[0])  # blank before the first eval


def test_resolve_runs_accepts_spellings(tmp_path):
    plain = write_fake_run(tmp_path, "plain110", dataset="cifar10", checkpoint=False)
    resnet = write_fake_run(tmp_path, "resnet56", dataset="cifar10", checkpoint=False)
    found = resolve_runs(["plainnet", "110", "resnet-56", str(resnet.log)], tmp_path)
    assert found == [plain.log, resnet.log, resnet.log]
    with pytest.raises(UserError, match="not found"):
        resolve_runs(["resnet20"], tmp_path)
    with pytest.raises(UserError, match="without a model"):
        resolve_runs(["56"], tmp_path)


def test_load_curve_rejects_a_non_log(tmp_path):
    bad = tmp_path / "x_log.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a depthscape training log"):
        load_curve(bad)
    empty = tmp_path / "resnet20_log.csv"
    empty.write_text(",".join(["iteration", "epoch"]) + "\n")
    with pytest.raises(UserError, match="no rows"):
        load_curve(empty)


def test_standard_figures_are_the_specs_set(tmp_path):
    for model in ("cnn", "resnet20", "resnet56", "plain20"):
        write_fake_run(tmp_path, model, checkpoint=False)
    figures = standard_figures(tmp_path, tmp_path / "plots", formats=("png",))
    keys = [f.key for f in figures]
    assert keys == ["cnn", "resnet", "plain", "resnet_vs_plain_20", "run_resnet20",
                    "run_resnet56", "run_plain20"]
    assert figures[1].title == "ResNet-20/56" and figures[3].title == "ResNet-20 vs PlainNet-20"
    for figure in figures:
        assert [p.suffix for p in figure.paths] == [".png"]
        assert figure.paths[0].stat().st_size > 5000
    # limiting the models limits the figures; PDF is the other default format
    only = standard_figures(tmp_path, tmp_path / "few", models=["resnet20"], per_run=False)
    assert [f.key for f in only] == ["resnet"]
    assert [p.name for p in only[0].paths] == ["resnet_depths_curves.png",
                                               "resnet_depths_curves.pdf"]
    assert only[0].paths[1].read_bytes().startswith(b"%PDF")


def test_curves_cli_and_bad_input(tmp_path, capsys):
    write_fake_run(tmp_path, "resnet20", dataset="cifar10", checkpoint=False)
    write_fake_run(tmp_path, "plain20", dataset="cifar10", checkpoint=False)
    out = tmp_path / "figs"
    code = main(["curves", "resnet", "20", "plainnet20", "--run-dir", str(tmp_path), "--out",
                 str(out), "--ema", "0.9", "--format", "png", "--compare"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "plainnet20_curves.png", "resnet20_curves.png", "resnet20_vs_plainnet20_curves.png"]
    capsys.readouterr()
    assert main(["curves", "resnet56", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("depthscape: error: training log not found") and "\n" not in err
    assert main(["curves", "--run-dir", str(tmp_path / "nothing")]) == 2


def test_plot_curves_entry_point(tmp_path, capsys):
    write_fake_run(tmp_path, "cnn", dataset="cifar10", checkpoint=False)
    done = subprocess.run([sys.executable, str(REPO / "plot_curves.py"), "cnn", "--run-dir",
                           str(tmp_path), "--format", "png"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plots" / "cnn_curves.png").exists()
    assert main(["curves", "resnet", "21", "--run-dir", str(tmp_path)]) == 2
    assert "6n+2" in capsys.readouterr().err
