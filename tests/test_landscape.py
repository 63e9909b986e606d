"""Loss landscapes: directions, BatchNorm folding, surface values, storage and settings."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _landscape_tools import (  # noqa: F401
    PREPROCESS,
    calibrated_model,
    one_thread,
    tiny_dataset,
    write_checkpoint,
)

from depthscape.analysis.landscape import (
    LandscapeConfig,
    compute_landscape,
    interpolation_direction,
    random_directions,
    read_directions,
    read_surface,
)
from depthscape.analysis.landscape.points import (
    FoldedModel,
    PointEvaluator,
    build_folded_model,
    find_foldable_pairs,
)
from depthscape.core.errors import UserError
from depthscape.core.models import get_model
from depthscape.training.evaluation import evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return tiny_dataset()


@pytest.fixture(scope="module")
def trained(data):
    return calibrated_model("resnet8", dataset=data, steps=5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, trained):
    return write_checkpoint(tmp_path_factory.mktemp("run") / "models" / "resnet-8_tiny.pth", trained)


# ----------------------------------------------------------------------------- directions


@pytest.mark.parametrize("name", ["resnet8", "cnn"])
def test_each_filter_of_a_direction_has_the_norm_of_its_weight_filter(name):
    model = get_model(name, num_classes=3)
    (direction,) = random_directions(model, 1, seed=3, norm="filter")
    checked = 0
    for key, weight in model.named_parameters():
        if weight.dim() <= 1:
            continue
        d_norms = direction[key].flatten(1).norm(dim=1)
        w_norms = weight.detach().flatten(1).norm(dim=1)
        torch.testing.assert_close(d_norms, w_norms, rtol=1e-5, atol=1e-7)
        assert not torch.equal(direction[key], weight.detach())  # random, not the weights
        checked += 1
    assert checked >= 3


def test_layer_normalisation_matches_whole_tensor_norms():
    model = get_model("resnet8", num_classes=3)
    (direction,) = random_directions(model, 1, seed=0, norm="layer")
    for key, weight in model.named_parameters():
        if weight.dim() > 1:
            assert direction[key].norm().item() == pytest.approx(weight.norm().item(), rel=1e-5)
            filter_ratio = direction[key].flatten(1).norm(dim=1) / weight.detach().flatten(1).norm(dim=1)
            if weight.shape[0] > 4:  # per-filter norms are not matched by layer normalisation
                assert float(filter_ratio.std()) > 1e-3


def test_one_dimensional_parameters_and_batchnorm_get_zero():
    model = get_model("resnet8", num_classes=3)
    for direction in random_directions(model, 2, seed=1):
        assert set(direction) == {k for k, _ in model.named_parameters()}  # no BN buffers
        for key, value in direction.items():
            if value.dim() <= 1 or ".bn" in key or key.startswith("bn"):
                assert torch.count_nonzero(value) == 0, key
            else:
                assert torch.count_nonzero(value) == value.numel(), key


def test_same_seed_same_directions_other_seed_other_directions():
    model = get_model("resnet8", num_classes=3)
    a, b = random_directions(model, 2, seed=7), random_directions(model, 2, seed=7)
    c = random_directions(model, 2, seed=8)
    key = "layer1.0.conv1.weight"
    for da, db in zip(a, b):
        assert all(torch.equal(da[k], db[k]) for k in da)
    assert not torch.equal(a[0][key], c[0][key])
    assert not torch.equal(a[0][key], a[1][key])  # the two axes differ


def test_interpolation_direction_covers_batchnorm_state_and_skips_integers():
    a, b = get_model("resnet8", num_classes=3).state_dict(), calibrated_model("resnet8").state_dict()
    direction = interpolation_direction(a, b)
    assert "bn1.running_var" in direction and "bn1.num_batches_tracked" not in direction
    torch.testing.assert_close(a["bn1.running_var"] + direction["bn1.running_var"], b["bn1.running_var"])
    with pytest.raises(UserError, match="differ in tensor"):
        interpolation_direction(a, get_model("resnet14", num_classes=3).state_dict())
    with pytest.raises(UserError, match="equal the checkpoint's"):  # a line of one point
        interpolation_direction(a, {k: v.clone() for k, v in a.items()})


# ----------------------------------------------------------------------------- folding


@pytest.mark.parametrize("name,pairs", [("resnet8", 7), ("plain8", 7), ("cnn", 0)])
def test_batchnorm_folded_forward_equals_unfolded(name, pairs):
    data = tiny_dataset(train=12, test=12, size=32)  # the CNN needs 32x32 inputs
    model = calibrated_model(name, dataset=data, steps=2)
    x = PREPROCESS.normalize(data.test.images)
    found = find_foldable_pairs(model, x[:4])
    assert len(found) == pairs  # the CNN's BatchNorm follows a ReLU: nothing to fold
    folded = build_folded_model(model, x[:4])
    # at a perturbed point, folded and unfolded networks must agree
    d1, d2 = random_directions(model, 2, seed=0)
    state = {k: v + 0.3 * d1[k] - 0.2 * d2[k] for k, v in model.named_parameters()}
    folded.load({k: v.detach() for k, v in state.items()})
    reference = get_model(name, num_classes=3).eval()
    reference.load_state_dict({**model.state_dict(), **state})
    with torch.inference_mode():
        expected, got = reference(x), folded.module(x)
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    if pairs:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.module.modules())


def test_folding_tracks_perturbed_batchnorm_state(data):
    """On a line between checkpoints the BatchNorm state moves too; the fold must follow."""
    model = calibrated_model("resnet8", dataset=data, steps=2)
    x = PREPROCESS.normalize(data.test.images[:8])
    folded = build_folded_model(model, x)
    state = {k: v * 1.5 if k.endswith("running_var") else v for k, v in model.state_dict().items()}
    folded.load(state, folded.dependents(set(state)))
    reference = get_model("resnet8", num_classes=3).eval()
    reference.load_state_dict(state)
    with torch.inference_mode():
        torch.testing.assert_close(folded.module(x), reference(x), rtol=1e-5, atol=1e-5)
    assert isinstance(FoldedModel(model, []).module.bn1, torch.nn.BatchNorm2d)


def test_evaluator_origin_equals_evaluate_and_fold_off_agrees(data, trained):
    directions = random_directions(trained, 2, seed=0)
    fast = PointEvaluator(trained, directions, data.test, PREPROCESS, batch_size=16)
    plain = PointEvaluator(trained, directions, data.test, PREPROCESS, batch_size=16, fold=False,
                           channels_last=False)
    loss, acc = evaluate(trained, data.test, PREPROCESS, batch_size=16)
    assert fast.evaluate((0.0, 0.0))[0] == pytest.approx(loss, abs=1e-5)
    assert fast.evaluate((0.0, 0.0))[1] == pytest.approx(acc)
    a, b = fast.evaluate((0.4, -0.7)), plain.evaluate((0.4, -0.7))
    assert a[0] == pytest.approx(b[0], abs=1e-5) and a[0] > loss + 1e-3  # moved away: higher
    assert a[1] == pytest.approx(b[1])


# ----------------------------------------------------------------------------- surfaces


@pytest.fixture(scope="module")
def surface(checkpoint, data):
    config = LandscapeConfig(resolution=5, xrange=(-1.0, 1.0), yrange=(-0.5, 0.5), batch_size=20)
    return compute_landscape(checkpoint, config, dataset=data, progress=False)


def test_loss_at_origin_equals_the_trained_models_eval_loss(surface, trained, data):
    result = read_surface(surface)
    assert result["complete"] and result["x"][2] == 0.0 and result["y"][2] == 0.0
    loss, acc = evaluate(trained, data.test, PREPROCESS, batch_size=1000)
    assert result["loss"][2, 2] == pytest.approx(loss, abs=1e-5)
    assert result["acc"][2, 2] == pytest.approx(acc)
    assert result["loss"].min() >= loss - 0.05  # a trained model sits near a minimum
    assert result["loss"].max() > loss + 0.01


def test_surface_file_layout_matches_the_original_tool(surface, checkpoint, trained, data):
    assert surface.parent.name == "landscapes" and surface.parent.parent == checkpoint.parent.parent
    with h5py.File(surface, "r") as f:
        assert {"xcoordinates", "ycoordinates", "test_loss", "test_acc", "xdirection",
                "ydirection", "dir_file"} <= set(f)
        assert f["test_loss"].shape == (5, 5)
        np.testing.assert_allclose(f["xcoordinates"][()], np.linspace(-1, 1, 5))
        np.testing.assert_allclose(f["ycoordinates"][()], np.linspace(-0.5, 0.5, 5))
        assert f.attrs["resolution"] == 5 and f.attrs["norm"] == "filter" and f.attrs["seed"] == 0
        assert f.attrs["split"] == "test" and f.attrs["samples"] == len(data.test)
        names = [k for k, _ in trained.named_parameters()]
        assert len(f["xdirection"]) == len(names)
    # rows are y: loss[j, i] is the value at (x[i], y[j]) (the x and y ranges differ here)
    result = read_surface(surface)
    directions = read_directions(surface)
    evaluator = PointEvaluator(trained, directions, data.test, PREPROCESS)
    loss, _ = evaluator.evaluate((result["x"][4], result["y"][1]))
    assert result["loss"][1, 4] == pytest.approx(loss, abs=1e-6)
    assert result["loss"][4, 1] != pytest.approx(loss, abs=1e-6)
    # the stored directions are the seeded ones
    fresh = random_directions(trained, 2, seed=0)
    assert all(torch.equal(directions[0][k], fresh[0][k]) for k in fresh[0])


def test_one_test_of_settings_decides_and_names_the_difference():
    """A number read back from JSON is the number asked for (1 and 1.0), so a setting sorted
    before the real difference is not named in its place; booleans, None and strings are
    only themselves; nested values are compared item by item; a missing key differs."""
    from depthscape.analysis.landscape.storage import identity_difference

    stored = {"alpha": 1, "beta": [1, 2.0], "gamma": {"k": 0}, "seed": 0}
    assert identity_difference(stored, {"alpha": 1.0, "beta": [1.0, 2], "gamma": {"k": 0.0},
                                        "seed": 0}) is None
    assert identity_difference(stored, {**stored, "seed": 1}) == "seed is 0 there, 1 here"
    assert identity_difference({"a": 1, "z": True}, {"a": 1.0, "z": 1}) == "z is True there, 1 here"
    assert identity_difference({"a": None}, {"a": 0}) == "a is None there, 0 here"
    assert identity_difference({"a": "1"}, {"a": 1}) == "a is '1' there, 1 here"
    assert identity_difference({"a": float("nan"), "b": (1, 2)}, {"a": float("nan"), "b": [1, 2]}) is None
    assert identity_difference({"h": "0123456789abcdef0"}, {"h": "x"}) == "h is '0123456789ab...' there, 'x' here"
    assert identity_difference({"a": [1]}, {"a": [1, 1]}) is not None
    assert identity_difference({}, {"a": None}) == "a is not recorded there, None here"
    assert identity_difference({"a": 2}, {}) == "a is 2 there, not set here"
    assert identity_difference({"g": {"k": 0}}, {"g": {"k": 0, "j": 1}}) is not None


def test_train_split_and_subset(checkpoint, data, tmp_path):
    config = LandscapeConfig(resolution=3, split="train", subset=10)
    path = compute_landscape(checkpoint, config, output=tmp_path / "s.h5", dataset=data, progress=False)
    with h5py.File(path, "r") as f:
        assert "train_loss" in f and "test_loss" not in f and f.attrs["samples"] == 10


def test_surface_from_other_settings_is_refused(surface, checkpoint, data, tmp_path):
    out = tmp_path / "explicit.h5"
    compute_landscape(checkpoint, LandscapeConfig(resolution=3), output=out, dataset=data, progress=False)
    before = out.read_bytes()
    with pytest.raises(UserError, match="other settings.*resolution"):
        compute_landscape(checkpoint, LandscapeConfig(resolution=4), output=out, dataset=data,
                          progress=False)
    with pytest.raises(UserError, match="other settings.*seed"):
        compute_landscape(checkpoint, LandscapeConfig(resolution=3, seed=1), output=out, dataset=data,
                          progress=False)
    assert out.read_bytes() == before  # nothing written is lost
    # other data: refused too
    with pytest.raises(UserError, match="other settings"):
        compute_landscape(checkpoint, LandscapeConfig(resolution=3), output=out,
                          dataset=tiny_dataset(seed=1), progress=False)
    # default names keep settings apart; --overwrite replaces
    other = compute_landscape(checkpoint, LandscapeConfig(resolution=5, seed=1), dataset=data,
                              progress=False)
    assert other != surface and other.parent == surface.parent
    compute_landscape(checkpoint, LandscapeConfig(resolution=4), output=out, dataset=data,
                      progress=False, overwrite=True)
    assert read_surface(out)["loss"].shape == (4, 4)


def test_parallel_workers_give_the_same_surface(surface, checkpoint, data, tmp_path):
    config = LandscapeConfig(resolution=5, xrange=(-1.0, 1.0), yrange=(-0.5, 0.5), batch_size=20,
                             workers=3)
    path = compute_landscape(checkpoint, config, output=tmp_path / "w3.h5", dataset=data,
                             progress=False)
    assert read_surface(path)["settings"]["workers"] == 3
    np.testing.assert_array_equal(read_surface(path)["loss"], read_surface(surface)["loss"])
    assert torch.get_num_threads() == 1  # the pool gave the threads back


def test_rerunning_a_finished_surface_computes_nothing(surface, checkpoint, data, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished surface must not be evaluated again")

    monkeypatch.setattr(PointEvaluator, "evaluate", fail)
    # workers change only the speed; the batch size is part of the identity (issue 11)
    config = LandscapeConfig(resolution=5, xrange=(-1.0, 1.0), yrange=(-0.5, 0.5), batch_size=20,
                             workers=2)
    assert compute_landscape(checkpoint, config, dataset=data, progress=False) == surface


def test_one_dimensional_curve(checkpoint, data, trained, tmp_path):
    path = compute_landscape(checkpoint, LandscapeConfig(resolution=5, dims=1), dataset=data,
                             output=tmp_path / "curve.h5", progress=False)
    result = read_surface(path)
    assert result["dims"] == 1 and result["y"] is None and result["loss"].shape == (5,)
    loss, _ = evaluate(trained, data.test, PREPROCESS)
    assert result["loss"][2] == pytest.approx(loss, abs=1e-5)
    with h5py.File(path, "r") as f:
        assert "ycoordinates" not in f and "ydirection" not in f


def test_line_between_two_checkpoints_ends_at_both_models(checkpoint, data, tmp_path):
    other = calibrated_model("resnet8", seed=1, dataset=data, steps=5)
    target = write_checkpoint(tmp_path / "other.pth", other)
    config = LandscapeConfig(resolution=5, dims=1, xrange=(-0.5, 1.5), target=str(target))
    path = compute_landscape(checkpoint, config, dataset=data, progress=False)
    result = read_surface(path)
    assert result["x"][1] == 0.0 and result["x"][3] == 1.0
    start = evaluate(calibrated_model("resnet8", dataset=data, steps=5), data.test, PREPROCESS)[0]
    end = evaluate(other, data.test, PREPROCESS)[0]
    assert result["loss"][1] == pytest.approx(start, abs=1e-5)
    assert result["loss"][3] == pytest.approx(end, abs=1e-5)
    assert result["settings"]["direction"] == "interpolation" and "_line_" in path.name
    with pytest.raises(UserError, match="1-D"):
        compute_landscape(checkpoint, LandscapeConfig(target=str(target)), dataset=data)


@pytest.mark.parametrize("kwargs,message", [
    ({"resolution": 1}, "resolution"), ({"xrange": (1.0, -1.0)}, "xrange"),
    ({"split": "valid"}, "split"), ({"norm": "weight"}, "norm"), ({"dims": 3}, "dims"),
])
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        LandscapeConfig(**kwargs).validate()


def test_wrong_architecture_gives_one_clear_line(checkpoint, tmp_path):
    """Through the spec's entry point, in a fresh process: one line, non-zero, no traceback."""
    result = subprocess.run(
        [sys.executable, str(REPO / "plot_model.py"), str(checkpoint), "--model", "resnet14",
         "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    # the checkpoint records its model: the name is compared before any tensor
    assert "Traceback" not in result.stderr and "holds a resnet8, not a resnet14" in lines[0]
    assert not (tmp_path / "landscapes").exists()


def test_data_the_model_was_not_trained_on_is_a_user_error(checkpoint, tmp_path):
    data = tiny_dataset()
    data.test.labels[:] = 9  # ten classes, for a three-class model
    with pytest.raises(UserError, match="labels up to 9.*3 classes"):
        compute_landscape(checkpoint, LandscapeConfig(resolution=3), output=tmp_path / "x.h5",
                          dataset=data, progress=False)
    odd = tiny_dataset()
    odd.test.images = odd.test.images[:, :2]  # two channels, for an RGB model
    with pytest.raises(UserError, match="cannot read this data"):
        compute_landscape(checkpoint, LandscapeConfig(resolution=3), output=tmp_path / "x.h5",
                          dataset=odd, progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_tf32_on_the_cpu_is_ignored_with_a_notice_and_the_same_surface(checkpoint, data,
                                                                       surface, tmp_path, capsys):
    config = LandscapeConfig(resolution=5, xrange=(-1.0, 1.0), yrange=(-0.5, 0.5), batch_size=20,
                             precision="tf32")
    path = compute_landscape(checkpoint, config, output=tmp_path / "tf32.h5", dataset=data,
                             progress=False)
    assert "--precision tf32 acts only on CUDA" in capsys.readouterr().err
    assert np.array_equal(read_surface(path)["loss"], read_surface(surface)["loss"])
    with h5py.File(path, "r") as f:
        assert f.attrs["precision"] == "fp32"  # what ran
    # the identity of an fp32 surface is that of every earlier one: the file resumes as fp32
    compute_landscape(checkpoint, replace(config, precision="fp32"), output=path, dataset=data,
                      progress=False)
    with pytest.raises(UserError, match="precision"):
        LandscapeConfig(precision="fp8").validate()
