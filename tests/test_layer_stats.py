"""Gradient flow recorded while training (issue 33 part 1): per-layer gradient and weight
norms and update ratios, averaged over each log row's steps, in logs/<run>_layers.csv."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import write_image_folder
from torch import nn

from depthscape.cli import main
from depthscape.core.layers import parameterised_layers, stages
from depthscape.core.models import get_model
from depthscape.training.graph import StateSnapshot
from depthscape.training.layerstats import LAYER_COLUMNS, LayerStats, layer_rows
from depthscape.training.step import MetricSums, make_train_step

ARGS = ["--scale", "0.0005", "--log-every", "4", "--checkpoint-every", "8", "--no-progress",
        "--device", "cpu"]  # 32 iterations of ResNet-8: 8 log rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("layers") / "d", train_per_class=16,
                              size=16)


def _train(data, out, *extra):
    return main(["train", "resnet", "8", "--dataset", str(data), "--out", str(out), *ARGS,
                 *extra])


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_layers_in_depth_order_with_their_stages():
    layers = parameterised_layers(get_model("resnet8", num_classes=3))
    assert [layer.name for layer in layers[:3]] == ["conv1", "bn1", "layer1.0.conv1"]
    assert stages(layers) == ["stem", "layer1", "layer2", "layer3", "head"]
    assert layers[-1].name == "fc" and layers[-1].kind == "Linear"
    assert [layer.index for layer in layers] == list(range(len(layers)))
    cnn = parameterised_layers(get_model("cnn", num_classes=3, in_channels=3, image_size=32))
    assert stages(cnn) == ["features", "classifier"]


def test_one_step_adds_each_layers_norms_and_update_ratio():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sums = MetricSums.on("cpu", layers=3)
    stats = LayerStats(model, sums.layers)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))

    def loss_fn(logits, labels):
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, loss.detach().double() * len(labels)

    before = [[p.detach().clone() for p in layer.params] for layer in stats.layers]
    make_train_step(model, optimizer, loss_fn, sums, layers=stats)(x, y)
    for i, layer in enumerate(stats.layers):
        grad = torch.cat([p.grad.reshape(-1) for p in layer.params]).double().norm()
        weight = torch.cat([p.detach().reshape(-1) for p in layer.params]).double().norm()
        moved = torch.cat([(b - p.detach()).reshape(-1) for b, p in
                           zip(before[i], layer.params)]).double().norm()
        assert torch.allclose(sums.layers[:, i], torch.stack([grad, weight, moved / weight]),
                              rtol=1e-6), layer.name
    rows = layer_rows(stats.layers, sums.layers * 2, steps=2, iteration=7)  # a 2-step mean
    assert [r[:4] for r in rows] == [[7, 0, "0", "0"], [7, 1, "1", "1"], [7, 2, "3", "3"]]
    assert rows[0][4] == pytest.approx(float(sums.layers[0, 0]))
    sums.zero_()
    assert not sums.layers.any()


def test_the_layer_file_has_a_row_per_layer_per_log_row_and_resumes_exactly(data, tmp_path):
    assert _train(data, tmp_path / "whole") == 0
    layers = tmp_path / "whole" / "logs" / "resnet8_d_layers.csv"
    rows = _rows(layers)
    assert tuple(rows[0]) == LAYER_COLUMNS and len(rows) == 1 + 8 * 15
    assert [r[0] for r in rows[1::15]] == [str(4 * k) for k in range(1, 9)]
    assert all(float(r[4]) > 0 and float(r[5]) > 0 and float(r[6]) > 0 for r in rows[1:])
    # stopped in the middle of a log window (its sums go into the checkpoint), resumed
    assert _train(data, tmp_path / "split", "--stop-after", "10") == 0
    assert len(_rows(tmp_path / "split" / "logs" / "resnet8_d_layers.csv")) == 1 + 2 * 15
    assert _train(data, tmp_path / "split", "--resume") == 0
    assert (tmp_path / "split" / "logs" / "resnet8_d_layers.csv").read_bytes() == \
        layers.read_bytes()


def test_no_layer_stats_writes_no_file_and_a_resumed_run_keeps_its_setting(data, tmp_path):
    out = tmp_path / "off"
    assert _train(data, out, "--no-layer-stats", "--stop-after", "10") == 0
    assert not (out / "logs" / "resnet8_d_layers.csv").exists()
    assert _train(data, out, "--resume") == 0  # started without: resumes without, no refusal
    assert not (out / "logs" / "resnet8_d_layers.csv").exists()
    assert len(_rows(out / "logs" / "resnet8_d_log.csv")) == 1 + 8


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_layer_file_is_refused_on_resume_in_one_line(data, tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert _train(data, out, "--stop-after", "10") == 0
    layers = out / "logs" / "resnet8_d_layers.csv"
    if damage == "truncated":
        layers.write_text("".join(layers.read_text().splitlines(keepends=True)[:-3]))
    else:
        layers.unlink()
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _train(data, out, "--resume") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer" in err[0] and "--overwrite" in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept


def test_a_captured_steps_warm_up_leaves_the_layer_sums_as_they_were():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sums = MetricSums.on("cpu", layers=1)
    sums.layers += 1.5
    snapshot = StateSnapshot.take(model, optimizer, sums, torch.device("cpu"))
    sums.layers += 10
    snapshot.restore(model, optimizer, sums)
    assert torch.equal(sums.layers, torch.full((3, 1), 1.5, dtype=torch.float64))


def test_curves_layers_draws_each_pair_and_refuses_a_run_without_a_layer_file(data, tmp_path,
                                                                              capsys):
    from depthscape.analysis.layer_curves import load_layer_flow

    out = tmp_path / "runs"
    assert _train(data, out) == 0
    assert main(["train", "plainnet", "8", "--dataset", str(data), "--out", str(out), *ARGS]) == 0
    flow = load_layer_flow(out / "logs" / "resnet8_d_log.csv")
    assert flow.grad.shape == (8, 15) and flow.layers[0] == "conv1" and flow.stages[-1] == "head"
    assert flow.profile_iterations()[0] == 4 and flow.profile_iterations()[-1] == 32
    capsys.readouterr()
    assert main(["curves", "--layers", "--run-dir", str(out), "--dataset", "d",
                 "--format", "png"]) == 0
    assert "gradient flow of ResNet-8 vs PlainNet-8" in capsys.readouterr().out
    assert (out / "plots" / "resnet8_d_vs_plainnet8_d_layers.png").stat().st_size > 10_000
    (out / "logs" / "plainnet8_d_layers.csv").unlink()
    assert main(["curves", "--layers", "resnet8", "plainnet8", "--run-dir", str(out),
                 "--dataset", "d"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plainnet8_d has no layer file" in err[0], err
