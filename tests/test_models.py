"""The model registry: names, parameter counts, shapes, shortcuts, initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name, get_model, list_models, register_model
from depthscape.core.models.resnet import BasicBlock, option_a_shortcut

PARAMETERS = {
    "cnn": 654_346,
    "resnet20": 269_722, "resnet56": 853_018, "resnet110": 1_727_962,
    "plain20": 269_722, "plain56": 853_018, "plain110": 1_727_962,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_seven_models_are_registered():
    assert sorted(list_models()) == sorted(PARAMETERS)


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_and_cifar_output_shape(name):
    model = get_model(name)
    assert n_params(model) == PARAMETERS[name]
    model.eval()
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("name", list_models())
def test_mnist_shaped_input(name):
    kwargs = {"image_size": 28} if name == "cnn" else {}
    model = get_model(name, in_channels=1, num_classes=10, **kwargs).eval()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("spelling,expected", [
    ("resnet 56", "resnet56"), ("ResNet-110", "resnet110"), ("plainnet 110", "plain110"),
    ("plainnet56", "plain56"), ("plain_20", "plain20"), ("cnn", "cnn"), ("resnet32", "resnet32"),
])
def test_spellings(spelling, expected):
    assert canonical_name(spelling) == expected


def test_any_depth_6n_plus_2_builds():
    model = get_model("resnet32")
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 5


@pytest.mark.parametrize("bad", ["resnet 21", "plainnet 7", "resnet", "vgg16", "resnet2"])
def test_bad_names_and_depths_are_user_errors(bad):
    with pytest.raises(UserError):
        canonical_name(bad)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="twice"):
        register_model("cnn")(lambda **kw: None)


def test_shortcut_is_subsampled_zero_padded_input():
    x = torch.randn(2, 16, 32, 32)
    out = option_a_shortcut(x, 32, 2)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0
    assert option_a_shortcut(x, 16, 1) is x


def test_block_adds_shortcut_only_for_resnet():
    torch.manual_seed(0)
    residual = BasicBlock(16, 32, stride=2, shortcut=True).eval()
    plain = BasicBlock(16, 32, stride=2, shortcut=False).eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 16, 8, 8)
    body = plain.bn2(plain.conv2(F.relu(plain.bn1(plain.conv1(x)))))
    assert torch.allclose(plain(x), F.relu(body))
    assert torch.allclose(residual(x), F.relu(body + option_a_shortcut(x, 32, 2)))


def test_resnet_and_plainnet_share_state_dict_keys():
    assert get_model("resnet20").state_dict().keys() == get_model("plain20").state_dict().keys()


def test_kaiming_normal_initialisation():
    torch.manual_seed(0)
    model = get_model("resnet110")
    conv = model.layer3[0].conv1.weight  # fan_in = 32 * 9
    assert abs(conv.std().item() - (2 / (32 * 9)) ** 0.5) < 0.005
    fc = model.fc.weight  # fan_in = 64
    assert abs(fc.std().item() - (2 / 64) ** 0.5) < 0.03


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_registry_entry(name):
    from depthscape.core.models import model_info

    info = model_info(name)
    assert info.name == name and info.curve_unit in ("epoch", "iteration")
    assert info.display_name.startswith(info.family.label)
    # what the analyses read off the entry instead of testing the name
    assert info.curve_unit == ("epoch" if name == "cnn" else "iteration")
    assert info.sort_key[0] == {"cnn": 0, "resnet": 1, "plain": 2}[info.family.prefix]


def test_the_registry_gives_the_specs_file_names():
    from depthscape.core.runs import run_paths

    expected = {"cnn": ("cnn_log.csv", "cnn_cifar10.pth"),
                "resnet56": ("resnet56_log.csv", "resnet-56_cifar10.pth"),
                "plain110": ("plainnet110_log.csv", "plainnet-110.cifar10.pth")}
    for model, (log, final) in expected.items():
        paths = run_paths("out", model)
        assert (paths.log.name, paths.final.name) == (log, final)
    assert run_paths("out", "plain20", seed=2, dataset="mnist").final.name == \
        "plainnet-20.mnist_seed2.pth"


def test_present_pairs_are_the_pairings_both_of_whose_models_are_there():
    from depthscape.core.models import present_pairs

    names = ["cnn", "resnet20", "plain20", "resnet56", "plain110", "resnet110", "preresnet20"]
    found = [(p.names, p.stem, p.depth) for p in present_pairs(names)]
    assert found == [  # pairing by pairing (ResNet | PlainNet first), depths rising
        (("resnet20", "plain20"), "resnet_vs_plain_20", 20),
        (("resnet110", "plain110"), "resnet_vs_plain_110", 110),
        (("preresnet20", "resnet20"), "preresnet_vs_resnet_20", 20),
    ]
    assert present_pairs(["cnn", "resnet56"]) == []
