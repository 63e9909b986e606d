"""The one loader of a trained run and its override rule, case by case."""

from __future__ import annotations

import pytest
import torch
from conftest import write_image_folder

from depthscape.core.checkpoint import save_checkpoint
from depthscape.core.data import Preprocess, load_dataset
from depthscape.core.datasets import dataset_info
from depthscape.core.errors import UserError
from depthscape.core.models import get_model
from depthscape.core.recipes import recipe_for
from depthscape.core.trained import DataSource, load_trained_run, resolve_data_source

RECORDED = {"dataset": "cifar10", "data_dir": "/recorded/data", "cache_dir": "/recorded/cache"}


@pytest.mark.parametrize("given,expected", [
    # nothing given: everything as recorded
    ({}, ("cifar10", "/recorded/data", "/recorded/cache")),
    # a given option wins; the others stay as recorded
    ({"data_dir": "/mine"}, ("cifar10", "/mine", "/recorded/cache")),
    ({"cache_dir": "/mine"}, ("cifar10", "/recorded/data", "/mine")),
    # the recorded data_dir belongs to the recorded dataset: kept for the same name ...
    ({"dataset": "cifar10"}, ("cifar10", "/recorded/data", "/recorded/cache")),
    # ... dropped for another one (it would point at the other dataset's files)
    ({"dataset": "mnist"}, ("mnist", None, "/recorded/cache")),
    ({"dataset": "mnist", "data_dir": "/m"}, ("mnist", "/m", "/recorded/cache")),
])
def test_data_options_given_win_and_omitted_ones_take_the_recorded_value(given, expected):
    assert resolve_data_source(RECORDED, **given) == DataSource(*expected)


@pytest.mark.parametrize("given,expected", [
    ({}, ("cifar10", None, None)),  # a bare state dict records nothing: CIFAR-10
    ({"dataset": "mnist", "cache_dir": "/c"}, ("mnist", None, "/c")),
])
def test_a_bare_state_dict_falls_back_to_cifar10(given, expected):
    assert resolve_data_source({}, **given) == DataSource(*expected)


@pytest.fixture
def recorded_run(tmp_path, cache_dir):
    """A depthscape checkpoint of resnet8 that records its data (a tiny ImageFolder) and settings."""
    data = write_image_folder(tmp_path / "data")
    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "num_classes": 3}
    recipe = recipe_for("resnet8")
    config = {
        "model": "resnet8", "recipe": {**recipe.to_dict(), "batch_size": 7},
        "train": {"dataset": str(data), "data_dir": None, "cache_dir": str(cache_dir),
                  "train_subset": 20, "test_subset": 5},
        "preprocess": {"scale": 255.0, "mean": [1.0, 2.0, 3.0], "augment": True},
    }
    path = tmp_path / "run.pth"
    save_checkpoint(path, {"model": "resnet8", "model_kwargs": kwargs, "config": config,
                           "iteration": 3, "state_dict": get_model("resnet8", **kwargs).state_dict()})
    return path, data


def test_a_recorded_run_loads_as_trained(recorded_run):
    path, data = recorded_run
    run = load_trained_run(path)
    assert run.model_name == "resnet8" and not run.model.training
    assert run.recipe.batch_size == 7  # the recorded recipe, not the registry's
    assert run.preprocess == Preprocess(scale=255.0, mean=(1.0, 2.0, 3.0), augment=False)
    assert run.data_source.dataset == str(data)
    whole = load_dataset(str(data))
    assert torch.equal(run.train.images, whole.train.subset(20).images)  # the run's draw
    assert len(run.test) == 5 and len(run.dataset.test) == len(whole.test)
    assert run.checkpoint["iteration"] == 3 and "state_dict" not in run.checkpoint


def test_a_resume_checkpoint_loads_its_weights(recorded_run, tmp_path):
    """A run's resumable checkpoint keeps its weights under model_state, not state_dict."""
    path, _ = recorded_run
    data = torch.load(path, weights_only=True)
    weights = data.pop("state_dict")
    weights = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    resume = tmp_path / "run.resume.pth"
    save_checkpoint(resume, {**data, "model_state": weights, "optimizer_state": {}})
    run = load_trained_run(resume)
    assert all(torch.equal(run.model.state_dict()[k], weights[k]) for k in weights)


def test_a_given_dataset_wins_but_the_models_preprocessing_stays(recorded_run, tmp_path):
    path, _ = recorded_run
    other = write_image_folder(tmp_path / "other", train_per_class=5, seed=1)
    run = load_trained_run(path, dataset=str(other))
    assert len(run.dataset.train) == 15
    assert run.preprocess.mean == (1.0, 2.0, 3.0)  # how the model expects its pixels


def test_a_loaded_dataset_is_used_as_given_and_checked_against_the_model(recorded_run,
                                                                          tmp_path):
    path, data = recorded_run
    loaded = load_dataset(str(data))
    assert load_trained_run(path, dataset=loaded).dataset is loaded
    four = load_dataset(str(write_image_folder(tmp_path / "four", classes=("a", "b", "c", "d"))))
    with pytest.raises(UserError, match="num_classes 3 vs 4"):
        load_trained_run(path, dataset=four)


def test_the_dataset_cache_loads_each_source_once(recorded_run, monkeypatch):
    path, _ = recorded_run
    import depthscape.core.trained as trained

    calls = []
    real = trained.load_dataset
    monkeypatch.setattr(trained, "load_dataset", lambda *a: calls.append(a) or real(*a))
    cache: dict = {}
    first = load_trained_run(path, datasets=cache).dataset
    second = load_trained_run(path, datasets=cache).dataset
    assert first is second and len(calls) == 1


def test_the_model_name_is_checked_not_overridden(recorded_run):
    path, _ = recorded_run
    with pytest.raises(UserError, match="holds a resnet8, not a plain8"):
        load_trained_run(path, model="plainnet8")  # identical tensor shapes
    assert load_trained_run(path, model="ResNet 8").model_name == "resnet8"


def test_a_bare_state_dict_needs_a_model_and_takes_its_recipe(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(get_model("plain20").state_dict(), path)
    with pytest.raises(UserError, match="bare state dict"):
        load_trained_run(path)
    run = load_trained_run(path, model="plainnet20")
    assert run.recipe == recipe_for("plain20") and run.config == {}
    assert run.data_source == DataSource("cifar10", None, None)
    assert run.model_kwargs == {"in_channels": 3, "num_classes": 10}
    # its preprocessing: the recipe's (0..255, mean subtracted), with the dataset's mean
    ten = load_dataset(str(write_image_folder(tmp_path / "ten", classes=tuple("abcdefghij"),
                                              train_per_class=2, test_per_class=1)))
    run = load_trained_run(path, model="plain20", dataset=ten)
    assert run.preprocess == Preprocess(scale=255.0, mean=dataset_info("cifar10").pixel_mean_255,
                                        augment=False)
