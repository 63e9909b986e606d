"""Per-block Hessians against the exact Hessian's diagonal blocks of a tiny network: the
block traces from the trace's own probes, the block extremes, bad input, the CLI and the API."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import depthscape as ds
from depthscape.analysis.blocks import BlockOperator, block_hessian, partition
from depthscape.analysis.hessian import HessianOperator, hessian_trace
from depthscape.analysis.measures import all_measures
from depthscape.analysis.sharpness import SharpnessConfig, SharpnessResult, model_sharpness
from depthscape.core.errors import UserError


class StagedNet(nn.Module):
    """A stem (conv, BN), one stage (a container of conv, BN) and a head: 169 parameters,
    curved in all of them (tanh), BatchNorm with running statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.layer1 = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2))
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        x = torch.tanh(self.bn(self.conv(x)))
        return self.fc(torch.tanh(self.layer1(x)).flatten(1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = StagedNet().double()
    inputs = torch.randn(16, 1, 4, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (16,))
    with torch.no_grad():  # running statistics away from their defaults
        model(inputs + 0.3)
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    buffers = dict(model.named_buffers())

    def loss(theta):
        params = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, (params, buffers), (inputs,)), labels)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hessian = torch.autograd.functional.hessian(loss, flat)
    offsets = torch.tensor([0, *sizes]).cumsum(0).tolist()
    return model, inputs, labels, hessian, offsets


def _exact_block(hessian, offsets, block):
    index = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in block.indices])
    return hessian[index][:, index]


def test_partitions_follow_the_layer_rows(setup):
    model = setup[0]
    assert [(b.name, b.stage, b.size) for b in partition(model, "stage")] == [
        ("stem", "stem", 24), ("layer1", "layer1", 42), ("head", "head", 99)]
    assert [b.name for b in partition(model, "layer")] == ["conv", "bn", "layer1.0",
                                                           "layer1.1", "fc"]
    named = partition(model, ["layer1", "fc"])  # a stage and a layer, not every parameter
    assert [b.size for b in named] == [42, 99]


@pytest.mark.parametrize("by", ["stage", "layer"])
def test_block_traces_match_the_exact_blocks_and_sum_to_the_trace(setup, by):
    model, inputs, labels, hessian, offsets = setup
    operator = HessianOperator(model, inputs, labels)
    blocks = partition(model, by)
    parts: list = []
    trace, stderr, samples, _ = hessian_trace(operator, operator.params, 300, 0.0, 5, 0, parts)
    before = operator.products
    found = block_hessian(operator, blocks, by, parts)
    assert operator.products == before == samples  # the block traces cost no product
    assert sum(r.trace for r in found.rows) == pytest.approx(trace, rel=1e-12, abs=0)
    # the same probes' whole trace, and each block within 3.5 of its standard errors
    assert abs(trace - float(hessian.trace())) <= 3.5 * stderr
    for block, row in zip(blocks, found.rows):
        exact = float(_exact_block(hessian, offsets, block).trace())
        assert row.trace_se > 0
        assert abs(row.trace - exact) <= 3.5 * row.trace_se, (row.block, row.trace, exact)


def test_block_extremes_match_the_exact_blocks(setup):
    model, inputs, labels, hessian, offsets = setup
    operator = HessianOperator(model, inputs, labels)
    blocks = partition(model, "layer")
    found = block_hessian(operator, blocks, "layer", iters=200, tol=1e-10)
    for block, row in zip(blocks, found.rows):
        exact = float(torch.linalg.eigvalsh(_exact_block(hessian, offsets, block))[-1])
        assert row.lambda_max == pytest.approx(exact, rel=1e-6), row.block
        assert row.lambda_max_converged and row.trace is None
    # the operator is H_bb: the block's own rows and columns of the exact Hessian
    block = blocks[2]
    restricted = BlockOperator(operator, block)
    vector = [torch.randn_like(p) for p in restricted.params]
    product = torch.cat([h.reshape(-1) for h in restricted(vector)])
    torch.testing.assert_close(product, _exact_block(hessian, offsets, block)
                               @ torch.cat([v.reshape(-1) for v in vector]))


def test_bad_blocks_are_refused_in_one_line(setup):
    model = setup[0]
    with pytest.raises(UserError, match="no layer or stage named 'layer9'"):
        partition(model, "layer1,layer9")
    with pytest.raises(UserError, match="one block"):
        partition(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), "layer")
    frozen = StagedNet()
    frozen.layer1.requires_grad_(False)
    with pytest.raises(UserError, match="'layer1' has no trainable parameters"):
        partition(frozen, ["stem", "layer1"])
    with pytest.raises(UserError, match="share parameters"):
        partition(model, ["layer1", "layer1.0"])
    with pytest.raises(UserError, match="one block holding every parameter"):
        partition(nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))), "stage")
    with pytest.raises(UserError, match="--blocks takes"):
        partition(model, "layer1,,fc")
    # before any product: the sharpness measures check the model first
    config = SharpnessConfig(blocks="nowhere", power_iters=2, trace_samples=2)
    with pytest.raises(UserError, match="nowhere"):
        model_sharpness(model, torch.randn(4, 1, 4, 4, dtype=torch.float64),
                        torch.randint(0, 3, (4,)), config)


def test_the_measure_stores_and_reads_back_its_rows(setup):
    model, inputs, labels, _, _ = setup
    assert "blocks" in [m.name for m in all_measures()]
    config = SharpnessConfig(blocks="stage", power_iters=30, trace_samples=6,
                             min_trace_samples=6)
    result = model_sharpness(model, inputs, labels, config)
    assert result["block_trace"].details["names"] == ["stem", "layer1", "head"]
    assert sum(result["block_trace"].value) == pytest.approx(result["trace"].value, rel=1e-12)
    again = SharpnessResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again["block_largest"].value == result["block_largest"].value
    off = model_sharpness(model, inputs, labels, SharpnessConfig(power_iters=2, trace_samples=2))
    assert "block_trace" not in off and "blocks" not in off.to_dict()


def test_the_cli_writes_the_block_files_and_the_table(tmp_path, tiny_data, cache_dir, capsys):
    from _study_tools import write_fake_run

    from depthscape.cli import main

    write_fake_run(tmp_path, "resnet8", dataset="tinydata0")
    code = main(["sharpness", "--run-dir", str(tmp_path), "--dataset", str(tiny_data),
                 "--subset", "4", "--power-iters", "3", "--trace-samples", "3",
                 "--blocks", "stage", "--no-progress"])
    assert code == 0
    out = tmp_path / "sharpness"
    with open(out / "resnet8_tinydata0.blocks.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["block"] for r in rows] == ["stem", "layer1", "layer2", "layer3", "head"]
    stored = json.loads((out / "resnet8_tinydata0.blocks.json").read_text())
    assert stored["by"] == "stage" and stored["samples"] == 3 and len(stored["rows"]) == 5
    total = sum(float(r["trace"]) for r in rows)
    whole = json.loads((out / "resnet8_tinydata0.json").read_text())["result"]["trace"]
    assert total == pytest.approx(whole, rel=1e-9)
    table = (out / "sharpness.md").read_text()
    assert "Sharpest block (λmax)" in table and "blocks.csv" in table
    printed = capsys.readouterr().out
    assert "resnet8_tinydata0.blocks.csv" in printed
    # an unknown block: one line, non-zero, nothing measured
    assert main(["sharpness", "--run-dir", str(tmp_path), "--dataset", str(tiny_data),
                 "--subset", "4", "--blocks", "layer7", "--out", str(tmp_path / "bad"),
                 "--no-progress"]) == 2
    assert "no layer or stage named 'layer7'" in capsys.readouterr().err
    assert not list((tmp_path / "bad").glob("*.json"))


def test_the_api_returns_the_block_rows(setup):
    model, inputs, labels, hessian, offsets = setup
    data = (inputs, labels)
    traces = ds.hessian_trace(model, data, samples=20, tol=0.0, blocks="layer")
    assert isinstance(traces, ds.BlockHessian) and traces.samples == 20
    assert traces.products == 20  # the block traces: no product beyond the trace's
    assert sum(r.trace for r in traces.rows) == pytest.approx(traces.whole.trace, rel=1e-12)
    ends = ds.hessian_extremes(model, data, iters=200, tol=1e-9, blocks=["layer1", "fc"])
    assert [r.block for r in ends.rows] == ["layer1", "fc"]
    blocks = partition(model, ["layer1", "fc"])
    for block, row in zip(blocks, ends.rows):
        exact = float(torch.linalg.eigvalsh(_exact_block(hessian, offsets, block))[-1])
        assert row.lambda_max == pytest.approx(exact, rel=1e-6)
    assert ends.whole.largest >= max(r.lambda_max for r in ends.rows) - 1e-9
    with pytest.raises(UserError, match="no layer or stage"):
        ds.hessian_trace(model, data, blocks="stage9")


def test_blocks_under_torchrun_match_one_process(tmp_path, tiny_data, cache_dir):
    """The block products are the data-parallel ones: two ranks give one process's rows
    (to float32 rounding, as tests/test_hessian_distributed.py's measures), with two draws
    combined and the stages' densities written beside the density."""
    from _study_tools import write_fake_run
    from test_hessian_distributed import _env, _torchrun

    from depthscape.cli import main
    from depthscape.core.data import load_dataset

    write_fake_run(tmp_path, "resnet8", dataset="tinydata0")
    load_dataset(str(tiny_data), cache_dir=cache_dir)
    options = ["--run-dir", str(tmp_path), "--dataset", str(tiny_data), "--cache-dir",
               str(cache_dir), "--subset", "11", "--batch-size", "4", "--power-iters", "4",
               "--trace-samples", "3", "--blocks", "stage", "--draws", "2", "--density",
               "--density-runs", "1", "--density-steps", "3", "--density-points", "20",
               "--no-progress"]
    assert main(["sharpness", *options, "--out", str(tmp_path / "one")]) == 0
    done = _torchrun(["-m", "depthscape", "sharpness", *options, "--out",
                      str(tmp_path / "two")], _env(cache_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = ({row["block"]: row for row in json.loads(
        (tmp_path / side / "resnet8_tinydata0.blocks.json").read_text())["rows"]}
        for side in ("one", "two"))
    assert list(one) == ["stem", "layer1", "layer2", "layer3", "head"] and list(two) == list(one)
    for name in one:
        for key in ("trace", "lambda_max"):
            assert two[name][key] == pytest.approx(one[name][key], rel=1e-4, abs=1e-7)
    for side in ("one", "two"):
        stages = json.loads((tmp_path / side / "resnet8_tinydata0.stages.density.json")
                            .read_text())
        assert list(stages) == list(one) and all(d["nodes"] for d in stages.values())
