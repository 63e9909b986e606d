"""The pre-activation ResNet (He et al. 2016), added as one family module: its architecture,
parameter counts, names and depth rule, recipe, training, tables, study and report."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from _study_tools import write_fake_run

from depthscape.analysis.sharpness import SharpnessResult
from depthscape.analysis.tables import RunMetrics, table1, table2
from depthscape.cli import main
from depthscape.core.errors import UserError
from depthscape.core.models import (
    FAMILY_MODULES,
    canonical_name,
    get_model,
    list_models,
    model_depth,
    model_family,
    model_info,
)
from depthscape.core.models.preresnet import CifarPreResNet, PreActBlock
from depthscape.core.models.resnet import option_a_shortcut
from depthscape.core.recipes import recipe_for
from depthscape.core.runs import RunInfo, run_paths


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(depth: int, in_channels: int = 3, classes: int = 10) -> int:
    """Parameters of the CIFAR pre-activation ResNet, layer by layer from the paper.

    A stem conv3x3(16) without bias; per block BN(c_in) + conv3x3(c_in -> c_out) + BN(c_out)
    + conv3x3(c_out -> c_out) (a BN has a weight and a bias per channel, convs no bias;
    option-A shortcuts have no parameters); a final BN(64); Linear(64 -> classes).
    """
    n = (depth - 2) // 6
    conv = lambda c_in, c_out: 9 * c_in * c_out  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731

    def block(c_in, c_out):
        return bn(c_in) + conv(c_in, c_out) + bn(c_out) + conv(c_out, c_out)

    stages = [(16, 16), (16, 32), (32, 64)]
    blocks = sum(block(c_in, c_out) + (n - 1) * block(c_out, c_out) for c_in, c_out in stages)
    return conv(in_channels, 16) + blocks + bn(64) + 64 * classes + classes


@pytest.mark.parametrize("depth", [20, 56])
def test_parameter_counts_by_hand(depth):
    model = get_model(f"preresnet{depth}")
    assert n_params(model) == hand_count(depth)
    assert n_params(get_model(f"preresnet{depth}", in_channels=1, num_classes=7)) == \
        hand_count(depth, 1, 7)
    assert {20: 269_722, 56: 853_018}[depth] == hand_count(depth)  # the numbers, written out
    model.eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_block_is_bn_relu_conv_with_identity_shortcut_and_no_relu_after_the_sum():
    torch.manual_seed(0)
    block = PreActBlock(16, 32, stride=2, activated_shortcut=False).eval()
    for bn in (block.bn1, block.bn2):  # non-trivial BN statistics, so the order matters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 16, 8, 8)
    body = block.conv2(F.relu(block.bn2(block.conv1(F.relu(block.bn1(x))))))
    out = block(x)
    assert torch.allclose(out, body + option_a_shortcut(x, 32, 2))
    assert (out < 0).any()  # nothing clamps the sum: the path from block to block is identity
    block.activated_shortcut = True  # a stage's first block: the shortcut after the activation
    assert torch.allclose(block(x), body + option_a_shortcut(F.relu(block.bn1(x)), 32, 2))


def test_network_layout_final_bn_relu_before_pooling():
    model = get_model("preresnet20").eval()
    assert isinstance(model, CifarPreResNet)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 3
    assert [b.activated_shortcut for b in model.layer2] == [True, False, False]
    assert not hasattr(model, "bn1")  # the stem is one conv: its BN-ReLU is block 1's
    x = torch.randn(2, 3, 32, 32)
    features = model.layer3(model.layer2(model.layer1(model.conv1(x))))
    pooled = F.relu(model.bn(features)).mean(dim=(2, 3))
    assert torch.allclose(model(x), model.fc(pooled), atol=1e-6)


def test_kaiming_normal_initialisation_like_the_resnet():
    torch.manual_seed(0)
    model = get_model("preresnet110")
    conv = model.layer3[0].conv1.weight  # fan_in = 32 * 9
    assert abs(conv.std().item() - (2 / (32 * 9)) ** 0.5) < 0.005
    assert model_info("preresnet110").family.init == "kaiming-normal"


@pytest.mark.parametrize("spelling,expected", [
    ("preresnet 110", "preresnet110"), ("PreResNet-56", "preresnet56"),
    ("pre-resnet 20", "preresnet20"), ("preresnet_8", "preresnet8"),
    ("preactresnet32", "preresnet32"), ("preresnet1202", "preresnet1202"),
])
def test_names(spelling, expected):
    assert canonical_name(spelling) == expected
    assert model_family(expected) == "preresnet"
    assert model_depth(expected) == int(expected.removeprefix("preresnet"))


@pytest.mark.parametrize("bad", ["preresnet 21", "preresnet 2", "preresnet 7", "preresnet0"])
def test_depth_rule_6n_plus_2(bad):
    with pytest.raises(UserError, match="6n\\+2"):
        canonical_name(bad)


def test_bare_name_needs_a_depth_and_the_seven_are_unchanged():
    with pytest.raises(UserError, match="needs a depth"):
        canonical_name("preresnet")
    with pytest.raises(UserError, match="preresnet with a depth 6n\\+2"):
        canonical_name("vgg16")
    assert list_models() == ["cnn", "resnet20", "resnet56", "resnet110", "plain20", "plain56",
                             "plain110"]
    assert "preresnet" in FAMILY_MODULES  # picked up from its own file


def test_file_names_and_display_names():
    info = model_info("preresnet56")
    assert info.display_name == "PreResNet-56" and info.curve_unit == "iteration"
    paths = run_paths("out", "preresnet110", seed=1, dataset="mnist")
    assert (paths.log.name, paths.final.name) == ("preresnet110_mnist_seed1_log.csv",
                                                  "preresnet-110_mnist_seed1.pth")
    assert model_info("preresnet8").sort_key > model_info("plain110").sort_key


@pytest.mark.parametrize("depth,resnet", [(20, 20), (56, 56), (110, 110), (32, 20), (44, 56),
                                          (86, 110), (8, 20)])
def test_recipe_is_the_resnets(depth, resnet):
    ours, theirs = asdict(recipe_for(f"preresnet{depth}")), asdict(recipe_for(f"resnet{resnet}"))
    assert ours.pop("name") == f"preresnet{depth}"
    theirs.pop("name")
    assert ours == theirs


def test_memory_estimate_comes_from_the_record():
    from depthscape.core.limits import training_bytes

    assert training_bytes("preresnet110", 128) == training_bytes("resnet110", 128) > \
        training_bytes("preresnet56", 128) > 0
    assert training_bytes("cnn", 32) is None


def test_train_cli_smoke_preresnet8(tiny_data, cache_dir, tmp_path, capsys):
    """`depthscape train preresnet 8` on tiny data: 12 iterations, spec-style files."""
    from depthscape.core.csvlog import read_log
    from depthscape.core.trained import load_trained_run

    out = tmp_path / "out"
    code = main(["train", "preresnet", "8", "--dataset", str(tiny_data), "--out", str(out),
                 "--scale", str(12 / 64_000), "--log-every", "4", "--eval-every", "6",
                 "--checkpoint-every", "5", "--no-progress"])
    assert code == 0
    paths = run_paths(out, "preresnet8", 0, tiny_data.name)
    assert paths.final.exists() and not paths.resume.exists()
    rows = read_log(paths.log)
    assert [r["iteration"] for r in rows] == [4, 8, 12]
    assert [r["lr"] for r in rows] == [0.1, 0.01, 0.001]  # the ResNet recipe, scaled
    trained = load_trained_run(paths.final)
    assert trained.checkpoint["model"] == "preresnet8"
    assert isinstance(trained.model, CifarPreResNet)
    assert trained.checkpoint["config"]["preprocess"]["mean"] == [125.0, 123.0, 114.0]
    assert trained.checkpoint["config"]["recipe"]["name"] == "preresnet8"
    assert all(torch.isfinite(p).all() for p in trained.model.parameters())


def metrics(model: str, test_acc: float, time_s: float = 100.0) -> RunMetrics:
    return RunMetrics(model, 0, "cifar10", model, 0.1, 90.0, 0.5, test_acc, 100, 100, time_s, 10)


def test_rows_in_tables_1_and_2():
    runs = [metrics("preresnet56", 91.5, 300.0), metrics("resnet20", 88.0),
            metrics("preresnet20", 89.0, 100.0), metrics("plain20", 85.0), metrics("cnn", 70.0)]
    one = table1(runs)
    assert [r[0] for r in one.rows] == ["CNN", "ResNet-20", "PlainNet-20", "PreResNet-20",
                                        "PreResNet-56"]
    assert one.rows[3][2] == "89.00" and one.rows[4][2] == "91.50"
    two = table2(runs)
    assert two.header[1:4] == ["ResNet Acc. (%)", "PlainNet Acc. (%)", "PreResNet Acc. (%)"]
    row56 = dict(zip(two.header, two.rows[1]))
    assert row56["PreResNet Acc. (%)"] == "91.50" and row56["ResNet Acc. (%)"] == "-"
    assert row56["PreResNet time ratio"] == "3.00x" and row56["PreResNet gain (pp)"] == "+2.50"
    parsed = list(csv.DictReader(io.StringIO(two.csv())))
    assert float(parsed[1]["preresnet_test_acc_mean"]) == pytest.approx(91.5)


def test_paired_with_the_resnet_in_the_report_observations():
    from depthscape.study.report import observations

    runs = [metrics("resnet20", 88.0), metrics("resnet56", 90.0), metrics("plain20", 85.0),
            metrics("preresnet20", 89.0), metrics("preresnet56", 91.5)]
    lines = observations(runs, [])
    assert "PreResNet minus ResNet test accuracy: +1.00 at depth 20, +1.50 at depth 56 " \
           "(points)." in lines
    assert "ResNet minus PlainNet test accuracy: +3.00 at depth 20 (points)." in lines
    chain = next(line for line in lines if line.startswith("PreResNet test accuracy"))
    assert "rises from depth 20 to 56" in chain

    def result(largest, smallest):
        return SharpnessResult.from_fields(largest, smallest, 5, True, 1.0, 0.1, 5, True, 8, 100)

    sharp = [(RunInfo(m, 0, "cifar10", run_paths(".", m)), result(big, small))
             for m, big, small in (("resnet20", 5.0, -0.5), ("preresnet20", 3.0, -0.25))]
    lines = observations([metrics("resnet20", 50.0), metrics("preresnet20", 55.0)], sharp)
    assert "Largest Hessian eigenvalue (higher = sharper) at each depth: depth 20: PreResNet 3 "\
           "vs ResNet 5." in lines


def test_curve_figures_for_the_family_and_its_pair(tmp_path):
    from depthscape.analysis.curves import standard_figures

    for model in ("resnet20", "preresnet20"):
        write_fake_run(tmp_path, model, checkpoint=False)
    figures = standard_figures(tmp_path, tmp_path / "plots", formats=("png",), per_run=False)
    keys = {f.key: f for f in figures}
    assert list(keys) == ["resnet", "preresnet", "preresnet_vs_resnet_20"]
    assert keys["preresnet_vs_resnet_20"].title == "PreResNet-20 vs ResNet-20"
    assert keys["preresnet"].paths[0].name == "preresnet_depths_curves.png"


def test_smoke_study_with_preresnet(tmp_path, tiny_data, cache_dir):
    """`depthscape study --models preresnet8 resnet8`: trained, tabulated, paired, reported."""
    out = tmp_path / "study"
    assert main(["study", "--budget", "smoke", "--models", "preresnet8", "resnet8", "--out",
                 str(out), "--dataset", str(tiny_data), "--no-landscapes", "--no-sharpness",
                 "--no-curvature", "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "tables" / "table1.csv").open()))
    assert [r["model"] for r in rows] == ["resnet8", "preresnet8"]
    table2_md = (out / "tables" / "table2.md").read_text()
    assert "PreResNet Acc. (%)" in table2_md and table2_md.count("8-layer") == 1
    report = (out / "report.md").read_text()
    assert "| PreResNet-8 |" in report
    assert "PreResNets at every depth" in report and "PreResNet-8 vs ResNet-8" in report
    assert "PreResNet-8 (left) vs ResNet-8 (right)" in report  # the trajectory pair
    assert (out / "plots" / "trajectories" / "preresnet_vs_resnet_8_path.png").exists()
    assert re.search(r"PreResNet minus ResNet test accuracy: [+-]\d+\.\d\d at depth 8", report)
