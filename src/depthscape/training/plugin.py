"""Training a model from outside the package (``train --model-from ... --recipe FILE``).

The plug-in model is registered for the length of the run as one of the package's fixed
models (:func:`depthscape.core.plugins.registered`), so :func:`~depthscape.training.loop.train`
runs it unchanged: the same logs, checkpoints, snapshots and exact resume. Its spec,
keyword arguments and initial weights are part of the run's identity (``TrainConfig.plugin``):
a resume with other ones is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from depthscape.core.data import Dataset, load_dataset
from depthscape.core.errors import UserError
from depthscape.core.plugins import (
    PluginModel,
    build_model,
    check_model_reads,
    load_state,
    plugin_name,
    registered,
)
from depthscape.core.recipe import Recipe, preprocess_for
from depthscape.core.recipe_file import read_recipe_file
from depthscape.training.config import TrainConfig
from depthscape.training.loop import train


def plugin_recipe(spec: str, recipe: Recipe | str | os.PathLike,
                  name: str | None = None) -> tuple[Recipe, str]:
    """A plug-in model's recipe and its run's name (the CLI's and the API's one rule):
    ``recipe`` a :class:`Recipe` or a TOML recipe file (read under ``name``, else the spec's
    name); the run is ``name``, else the file's ``name``, else the spec's
    (:func:`~depthscape.core.plugins.plugin_name`)."""
    if not isinstance(recipe, Recipe):
        recipe = read_recipe_file(recipe, name or plugin_name(spec))
        name = name or recipe.name
    return recipe, plugin_name(spec, name)


def train_plugin(plugin: PluginModel, recipe: Recipe, config: TrainConfig,
                 dataset: Dataset | None = None):
    """Train ``plugin``'s model with ``recipe`` under the run name ``config.model``; returns
    :func:`~depthscape.training.loop.train`'s result. The model is checked on the data
    (it reads the images, predicts every class) before anything is written."""
    try:
        json.dumps(plugin.kwargs)
    except (TypeError, ValueError):
        raise UserError("the model's keyword arguments must be JSON values (numbers, strings, "
                        "lists, objects): they are recorded with the run") from None
    dataset = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir,
                                                               config.cache_dir)
    check_model_reads(plugin.model, dataset.train, preprocess_for(recipe, dataset),
                      dataset.num_classes)
    state = plugin.model.state_dict() if plugin.weights is not None else None

    def build():
        model = build_model(plugin.spec, plugin.kwargs)
        return load_state(model, state, plugin.weights) if state is not None else model

    config = replace(config, recipe=recipe, plugin=plugin.identity())
    with registered(config.model, build, label=plugin.spec, recipe=recipe):
        return train(config, dataset)
