"""depthscape's own runs: :func:`train` one (or a model from outside the package, with a
recipe), :func:`load_run` one to measure it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name
from depthscape.core.plugins import load_plugin
from depthscape.core.recipe import Recipe
from depthscape.core.recipe_file import read_model_recipe
from depthscape.core.trained import TrainedRun, load_trained_run
from depthscape.training.loop import TrainConfig, TrainResult
from depthscape.training.loop import train as train_run
from depthscape.training.plugin import plugin_recipe, train_plugin


def train(model: str, depth: int | None = None, *, recipe: Recipe | str | os.PathLike | None = None,
          model_kwargs: Mapping[str, Any] | None = None, weights: str | os.PathLike | None = None,
          name: str | None = None, dataset: str = "cifar10", data_dir: str | None = None,
          cache_dir: str | None = None, out: str | os.PathLike = ".", seed: int = 0,
          scale: float = 1.0, train_subset: int | None = None, test_subset: int | None = None,
          eval_every: int | None = None, log_every: int | None = None,
          checkpoint_every: int = 1000, snapshot_every: int | None = None,
          stop_after: int | None = None, resume: bool = False, overwrite: bool = False,
          device: str | None = None, precision: str | None = None,
          channels_last: bool | None = None, cuda_graph: bool | None = None,
          compile: bool = False, progress: bool = True) -> TrainResult:
    """Train a model as ``depthscape train`` does: the same logs, checkpoints and resume.

    ``model`` is one of depthscape's (``"resnet56"``, or ``"resnet", 56``; ``"cnn"``), or a
    model from outside the package given as ``--model-from`` takes it
    (``"torchvision:resnet18"``, ``"pkg.module:factory"``, ``"path/to/file.py:factory"``)
    with its ``model_kwargs`` (JSON values: they are recorded with the run), optional
    initial ``weights`` and a ``recipe``, which such a model needs. ``recipe`` is a
    :class:`~depthscape.core.recipes.Recipe` or a TOML recipe file (docs/api.md); for
    depthscape's models it replaces their own. ``name`` names a plug-in model's run
    (default: the recipe file's ``name``, else the spec, e.g. ``torchvision.resnet18``).
    Every other argument is the CLI option of the same name (``out`` is ``--out``;
    ``stop_after``/``resume`` stop and continue a run exactly). Files go under ``out``
    (``logs/``, ``models/``); returns a ``TrainResult`` (``.paths``, ``.finished``,
    ``.iteration``, the final ``.train_acc``, ``.test_acc``, ``.test_loss``, ...).

    Example::

        >>> result = ds.train("resnet", 20, dataset="cifar10", out="runs", scale=0.01)
        >>> run = ds.load_run(result.paths.final)
        >>> custom = ds.train("torchvision:resnet18", model_kwargs={"num_classes": 10},
        ...                   recipe="docs/examples/recipe.toml", out="runs")
    """
    settings = dict(
        dataset=dataset, data_dir=data_dir, cache_dir=cache_dir, out_dir=str(out), seed=seed,
        device=device, scale=scale, train_subset=train_subset, test_subset=test_subset,
        eval_every=eval_every, log_every=log_every, checkpoint_every=checkpoint_every,
        snapshot_every=snapshot_every, stop_after=stop_after, resume=resume,
        overwrite=overwrite, progress=progress, precision=precision,
        channels_last=channels_last, cuda_graph=cuda_graph, compile=compile)
    if ":" not in model:
        for given, what in ((model_kwargs, "model_kwargs"), (weights, "weights"), (name, "name")):
            if given:
                raise UserError(f"{what} goes with a model from outside the package "
                                "(e.g. 'torchvision:resnet18')")
        run_name = canonical_name(model, depth)
        if recipe is not None and not isinstance(recipe, Recipe):
            recipe = read_model_recipe(recipe, run_name)

        return train_run(TrainConfig(model=run_name, recipe=recipe, **settings))

    if depth is not None:
        raise UserError(f"depth goes with depthscape's own models, not {model}")
    if recipe is None:
        raise UserError(f"{model} needs a recipe (a Recipe or a TOML file): a model from "
                        "outside the package has no recipe of its own")
    plugin = load_plugin(model, dict(model_kwargs or {}), weights)
    recipe, run_name = plugin_recipe(model, recipe, name)
    return train_plugin(plugin, recipe, TrainConfig(model=run_name, **settings))


def load_run(path: str | os.PathLike, *, device: str | torch.device | None = None
             ) -> TrainedRun:
    """A run depthscape trained (its checkpoint file), to measure with this API.

    Returns a :class:`~depthscape.core.trained.TrainedRun`: ``.model`` (eval mode, on
    ``device``, default the CPU), ``.model_name``, ``.recipe``, ``.preprocess`` and the data
    it was trained on, ``.train`` and ``.test`` (uint8 images and labels: the model reads
    ``.preprocess.normalize(images)``).

    Example::

        >>> run = ds.load_run("runs/resnet-20_cifar10/models/resnet-20_cifar10.pth")
        >>> data = (run.preprocess.normalize(run.test.images), run.test.labels)
        >>> surface = ds.loss_surface(run.model, data, resolution=21)
    """
    return load_trained_run(path, device=device)

