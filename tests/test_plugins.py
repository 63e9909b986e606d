"""Plug-in models on every command (``--model-from``, ``--model-kwargs``, ``--weights``) and
training one with a TOML recipe (``train --model-from ... --recipe FILE``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import depthscape as ds
from depthscape.cli import main
from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.csvlog import read_log
from depthscape.core.errors import UserError
from depthscape.core.plugins import read_weights, state_sha256
from depthscape.core.recipe_file import read_recipe_file

FACTORIES = '''
import torch
from torch import nn


def small(num_classes=3, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def raises():
    raise RuntimeError("no GPU here")


def not_a_module():
    return 42


def flat_input():
    return nn.Linear(10, 3)
'''

RECIPE = '''
optimizer = "sgd"
lr = 0.05
momentum = 0.9
weight_decay = 1e-4
batch_size = 16
iterations = 8
log_every = 2

[schedule]
milestones = [5]
warmup_lr = 0.01
warmup_iterations = 2

[preprocess]
pixel_scale = 255.0
subtract_mean = true
augment = true
'''


@pytest.fixture
def zoo(tmp_path) -> str:
    (tmp_path / "zoo.py").write_text(FACTORIES)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    return str(tmp_path / "zoo.py")


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_args(zoo, data, out, *extra):
    return ["train", "--model-from", f"{zoo}:small", "--recipe", Path(zoo).with_name("recipe.toml"),
            "--dataset", data, "--out", out, "--checkpoint-every", 3, "--no-progress", *extra]


def same_weights(a: Path, b: Path) -> None:
    state_a, state_b = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed_s" and not
             (isinstance(v, float) and math.isnan(v))} for row in read_log(path)]


# ----------------------------------------------------------------------------- recipes


def test_a_recipe_file_maps_onto_the_recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    recipe = read_recipe_file(path, "mine")
    assert (recipe.name, recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay,
            recipe.batch_size, recipe.unit, recipe.length, recipe.log_every) == \
        ("mine", "sgd", 0.05, 0.9, 1e-4, 16, "iteration", 8, 2)
    assert (recipe.schedule, recipe.milestones, recipe.decay, recipe.warmup_lr,
            recipe.warmup_length) == ("step", (5,), 10.0, 0.01, 2)
    assert (recipe.pixel_scale, recipe.subtract_mean, recipe.augment) == (255.0, True, True)
    assert [recipe.lr_at(i) for i in (0, 1, 2, 4, 5)] == [0.01, 0.01, 0.05, 0.05, 0.005]
    path.write_text('name = "cosy"\noptimizer = "adam"\nlr = 1e-3\nepochs = 4\n'
                    '[schedule]\nkind = "cosine"\n')
    recipe = read_recipe_file(path)
    assert (recipe.name, recipe.unit, recipe.length, recipe.schedule, recipe.cosine_t_max,
            recipe.pixel_scale, recipe.augment) == ("cosy", "epoch", 4, "cosine", 4, 1.0, False)
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "recipe.toml"
    assert read_recipe_file(example, "x").milestones == (32_000, 48_000)  # the documented one


@pytest.mark.parametrize("text, message", [
    ("lr = 0.1\niterations = 5\nlearning_rate = 2", "learning_rate is not a recipe setting"),
    ("lr = 0.1\niterations = 5\n[schedule]\nmilestone = [3]", "[schedule] milestone is not a"),
    ("lr = 0.1\niterations = 5\n[preprocess]\nstd = 0.5", "[preprocess] std is not a recipe"),
    ("lr = 0.1", "give exactly one of iterations and epochs"),
    ("lr = 0.1\niterations = 5\nepochs = 2", "give exactly one of iterations and epochs"),
    ("iterations = 5", "lr is missing"),
    ("lr = -1\niterations = 5", "lr must be in (0, inf], got -1"),
    ("lr = 0.1\niterations = 5.5", "iterations must be a whole number, got 5.5"),
    ("lr = 0.1\niterations = true", "iterations must be a whole number, got True"),
    ("lr = 0.1\niterations = 5\noptimizer = 'lbfgs'", "optimizer must be 'sgd' or 'adam'"),
    ("lr = 0.1\niterations = 5\noptimizer = 'adam'\nmomentum = 0.9", "momentum applies to sgd"),
    ("lr = 0.1\niterations = 5\nmomentum = 1.5", "momentum must be in [0, 1)"),
    ("lr = 0.1\niterations = 5\n[schedule]\nmilestones = [4, 2]", "milestones must be increasing"),
    ("lr = 0.1\niterations = 5\n[schedule]\nwarmup_lr = 0.01", "warmup_lr and warmup_iterations go together"),
    ("lr = 0.1\niterations = 5\n[schedule]\nkind = 'cosine'", "t_max is needed"),
    ("lr = 0.1\nepochs = 5\n[schedule]\nkind = 'cosine'\nmilestones = [2]", "milestones applies to the step"),
    ("lr = 0.1\niterations = 5\n[preprocess]\nsubtract_mean = true", "subtract_mean needs pixel_scale = 255"),
    ("lr = 0.1\niterations = 5\n[preprocess]\naugment = 'yes'", "augment must be true or false"),
    ("lr = 0.1\niterations = 5\nschedule = 3", "schedule must be a table"),
    ("lr = 0.1\niterations = [", "is not valid TOML"),
])
def test_each_bad_recipe_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        read_recipe_file(path, "x")
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


# ----------------------------------------------------------------------------- train


def test_a_plugin_trains_and_resumes_bit_for_bit(zoo, tiny_data, cache_dir, tmp_path, capsys):
    code, out, _ = cli(capsys, *train_args(zoo, tiny_data, tmp_path / "whole"))
    assert code == 0 and "zoo.small" in out
    final = tmp_path / "whole" / "models" / f"zoo.small_{tiny_data.name}.pth"
    checkpoint = load_checkpoint(final)
    assert checkpoint["model"] == "zoo.small" and checkpoint["iteration"] == 8
    config = checkpoint["config"]
    assert tuple(config["recipe"]["milestones"]) == (5,) and config["recipe"]["warmup_length"] == 2
    assert config["train"]["plugin"]["spec"] == f"{zoo}:small"
    assert config["preprocess"]["augment"] is True and config["preprocess"]["scale"] == 255.0
    log = tmp_path / "whole" / "logs" / f"zoo.small_{tiny_data.name}_log.csv"
    assert [r["iteration"] for r in read_log(log)] == [2, 4, 6, 8]
    assert [r["lr"] for r in read_log(log)] == [0.01, 0.05, 0.005, 0.005]  # the lr of steps 1, 3, 5, 7 (0-based)

    code, out, _ = cli(capsys, *train_args(zoo, tiny_data, tmp_path / "split", "--stop-after", 4))
    assert code == 0 and "stopped at iteration 4" in out
    code, _, _ = cli(capsys, *train_args(zoo, tiny_data, tmp_path / "split", "--resume"))
    assert code == 0
    resumed = tmp_path / "split" / "models" / final.name
    same_weights(final, resumed)
    assert rows(log) == rows(tmp_path / "split" / "logs" / log.name)

    # the plug-in's identity is the run's: other keyword arguments do not resume it
    cli(capsys, *train_args(zoo, tiny_data, tmp_path / "other", "--stop-after", 3))
    code, _, err = cli(capsys, *train_args(zoo, tiny_data, tmp_path / "other", "--resume",
                                           "--model-kwargs", '{"width": 5}'))
    assert code != 0 and "different setting (plugin)" in err and len(err.splitlines()) == 1


def test_a_recipe_file_replaces_a_built_in_model_s_recipe(tiny_data, cache_dir, tmp_path, capsys):
    recipe = tmp_path / "short.toml"
    recipe.write_text("lr = 0.02\nbatch_size = 24\nepochs = 1\n[preprocess]\npixel_scale = 255\n"
                      "subtract_mean = true\n")
    code, out, _ = cli(capsys, "train", "resnet", "8", "--recipe", recipe, "--dataset", tiny_data,
                       "--out", tmp_path, "--no-progress")
    assert code == 0 and "resnet8" in out
    saved = load_checkpoint(tmp_path / "models" / f"resnet-8_{tiny_data.name}.pth")
    assert saved["iteration"] == 3 and saved["config"]["recipe"]["name"] == "resnet8"  # 72 / 24
    assert (saved["config"]["recipe"]["lr"], saved["config"]["recipe"]["unit"]) == (0.02, "epoch")


def test_train_refuses_what_does_not_fit_in_one_line(zoo, tiny_data, cache_dir, tmp_path, capsys):
    recipe = Path(zoo).with_name("recipe.toml")
    data = ["--dataset", tiny_data, "--out", tmp_path / "out", "--no-progress"]
    cases = [
        (["--model-from", f"{zoo}:raises", "--recipe", recipe], "the factory raised RuntimeError"),
        (["--model-from", f"{zoo}:not_a_module", "--recipe", recipe], "not a torch.nn.Module"),
        (["--model-from", f"{zoo}:flat_input", "--recipe", recipe], "cannot read this data"),
        (["--model-from", f"{zoo}:small", "--model-kwargs", '{"num_classes": 2}', "--recipe",
          recipe], "predicts 2 classes, the data has 3"),
        (["--model-from", f"{zoo}:small"], "--model-from needs --recipe"),
        (["resnet", "8", "--model-from", f"{zoo}:small", "--recipe", recipe], "give either"),
        (["resnet", "8", "--weights", recipe], "--weights goes with --model-from"),
        (["--model-from", f"{zoo}:small", "--recipe", tmp_path / "none.toml"], "not found"),
    ]
    for argv, message in cases:
        code, _, err = cli(capsys, "train", *argv, *data)
        assert code != 0 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
    clash = tmp_path / "clash.toml"
    clash.write_text('name = "resnet20"\n' + RECIPE)
    code, _, err = cli(capsys, "train", "--model-from", f"{zoo}:small", "--recipe", clash, *data)
    assert code != 0 and "depthscape's own resnet20" in err
    code, _, err = cli(capsys, "train", "resnet", "8", "--recipe", clash, *data)
    assert code != 0 and "keeps its own name" in err
    assert not (tmp_path / "out" / "models").exists()  # nothing was written


# ----------------------------------------------------------------------------- measure


def test_eval_sharpness_and_trajectory_of_a_trained_plugin(zoo, tiny_data, cache_dir, tmp_path,
                                                           capsys):
    out = tmp_path / "run"
    assert cli(capsys, *train_args(zoo, tiny_data, out, "--snapshot-every", 2))[0] == 0
    weights = out / "models" / f"zoo.small_{tiny_data.name}.pth"
    metrics = load_checkpoint(weights)["metrics"]
    plugin = ["--model-from", f"{zoo}:small", "--weights", weights]

    # eval: the run's own preprocessing and data (recorded in --weights): its last test loss
    code, printed, _ = cli(capsys, "eval", *plugin)
    assert code == 0 and f"test loss {metrics['test_loss']:.4f}" in printed
    assert f"accuracy {metrics['test_acc']:.2f}%" in printed

    code, printed, _ = cli(capsys, "sharpness", *plugin, "--out", tmp_path / "sharp", "--subset",
                           20, "--power-iters", 4, "--trace-samples", 3, "--no-progress")
    assert code == 0 and f"| {zoo}:small |" in printed
    table = (tmp_path / "sharp" / "sharpness_zoo.small.csv").read_text().splitlines()
    assert table[1].startswith("zoo.small,1,") and ",20," in table[1]

    code, printed, _ = cli(capsys, "trajectory", *plugin, "--out", out, "--resolution", 3,
                           "--output", tmp_path / "path.h5", "--no-progress")
    assert code == 0 and "_path.png" in printed
    surface = ds.Surface.load(tmp_path / "path.h5")
    assert isinstance(surface, ds.TrajectorySurface) and surface.loss.shape == (3, 3)
    assert list(surface.steps) == [0, 2, 4, 6, 8] and np.all(surface.points[-1] == 0)
    assert surface.settings["direction"] == "pca"

    snapshots = weights.with_name(weights.stem + ".snapshots.h5")
    for command, extra in (("eval", []), ("sharpness", ["--out", tmp_path / "s2"]),
                           ("trajectory", ["--out", out, "--snapshots", snapshots])):
        for spec, message in ((f"{zoo}:raises", "the factory raised"),
                              (f"{zoo}:not_a_module", "not a torch.nn.Module"),
                              (f"{zoo}:flat_input", "does not fit the model")):
            code, _, err = cli(capsys, command, "--model-from", spec, "--weights", weights, *extra)
            assert code != 0 and message in err and len(err.strip().splitlines()) == 1, \
                (command, spec, err)
        code, _, err = cli(capsys, command, "--model-from", f"{zoo}:flat_input", "--dataset",
                           tiny_data, *extra)
        assert code != 0 and len(err.strip().splitlines()) == 1, (command, err)
        assert ("cannot read this data" if command != "trajectory" else
                "snapshots of another architecture") in err
    code, _, err = cli(capsys, "eval", weights)  # a plug-in run names what it needs
    assert code != 0 and f"give --model-from {zoo}:small --weights {weights}" in err
    code, _, err = cli(capsys, "eval", weights, "--model-from", f"{zoo}:small")
    assert code != 0 and "give either a checkpoint" in err
    # the density of a model of the user's, as of a run (issue 31: no longer refused)
    dense = ["sharpness", *plugin, "--out", tmp_path / "s3", "--subset", 20, "--power-iters",
             4, "--trace-samples", 3, "--density", "--density-runs", 2, "--density-steps", 5,
             "--no-progress"]
    code, printed, _ = cli(capsys, *dense)
    stored = tmp_path / "s3" / "zoo.small.density.json"
    assert code == 0 and str(stored) in printed
    record = json.loads(stored.read_text())
    assert record["key"]["subject"]["weights_sha256"] == state_sha256(read_weights(
        weights)[0]) and record["result"]["settings"]["subset_size"] == 20
    assert "\neigenvalue,density\n" in (tmp_path / "s3" / "zoo.small.density.csv").read_text()
    before = stored.stat().st_mtime_ns
    assert cli(capsys, *dense)[0] == 0 and stored.stat().st_mtime_ns == before  # reused
    code, _, err = cli(capsys, "eval", weights, "--model-kwargs", json.dumps({"width": 3}))
    assert code != 0 and "--model-kwargs goes with --model-from" in err


def test_help_names_every_family_from_the_registry(capsys):
    from depthscape.core.models import families

    for command in ("train", "landscape", "trajectory"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for family in families():
            assert (family.aliases or (family.prefix,))[0] in text, (command, family.prefix)
        assert "preresnet" in text and "--model-from" in text


def test_a_plugin_s_surface_is_named_and_recorded_from_its_subject(zoo, tiny_data, cache_dir,
                                                                   tmp_path, capsys):
    """Issue 30: ``landscape --model-from`` takes the Subject's road (the run's): its file
    name, identity and record come from the Subject, as the model surfaces' always were."""
    from depthscape.analysis.landscape.identity import settings_hash
    from depthscape.analysis.landscape.storage import read_state
    from depthscape.core.plugins import load_plugin
    from depthscape.core.subject import safe_stem, subject_from_model

    out = tmp_path / "run"
    assert cli(capsys, *train_args(zoo, tiny_data, out))[0] == 0
    weights = out / "models" / f"zoo.small_{tiny_data.name}.pth"
    code, printed, _ = cli(capsys, "landscape", "--model-from", f"{zoo}:small", "--weights",
                           weights, "--out", out, "--resolution", 3, "--subset", 6,
                           "--no-progress", "--no-plots")
    assert code == 0
    path = Path(printed.split("surface: ")[1].split()[0])
    state = read_state(path, with_directions=False)
    identity, settings = state.identity, state.info
    assert path == out / "landscapes" / \
        f"{safe_stem(f'{zoo}:small')}_test_2d_{settings_hash(identity)}.h5"
    assert identity["model"] == f"{zoo}:small" and identity["loss"] == "cross_entropy"
    assert settings["source"] == "--model-from" and settings["weights"] == str(weights)
    subject = subject_from_model(load_plugin(f"{zoo}:small", None, weights))
    assert subject.home is None and subject.step is None  # its files go to --out
    assert subject.snapshots == weights.with_name(weights.stem + ".snapshots.h5")
    assert subject_from_model(load_plugin(f"{zoo}:small"),
                              dataset=str(tiny_data)).snapshots is None  # no run named
    assert subject.record("data") == {"source": "--model-from", "dataset": "data",
                                      "model_kwargs": {}, "weights": str(weights)}
