"""A trained run as one artifact: :func:`load_trained_run` is the one way to load it.

Everything that evaluates a trained run (``eval``, the tables, sharpness, landscapes and
whatever analysis comes next) calls :func:`load_trained_run` and reads what it needs off
the :class:`TrainedRun`: the model (eval mode, on the device), its name and constructor
arguments, its recipe, its evaluation preprocessing, and the data it was trained on
(the whole dataset, and the train/test subsets the run used).

The rule for the user's options (the same for every command):

* **An option the user gives wins over what the checkpoint recorded; an option the user
  leaves out takes the recorded value.** This holds for ``dataset``, ``data_dir`` and
  ``cache_dir`` one by one, with one coupling: a recorded ``data_dir`` belongs to the
  recorded dataset, so it is dropped when the user names a different dataset.
* **The model name is checked, not overridden.** A ``model`` given for a checkpoint that
  records its own must name the same model (ResNets and PlainNets have identical tensor
  shapes, so only the name can tell them apart); otherwise it is a one-line UserError
  naming both. The recorded model kwargs must fit the dataset the run is evaluated on
  (channels, classes, image size).
* **The model's preprocessing and recipe are the checkpoint's**: a different dataset does
  not change how the model expects its pixels.
* **A bare state dict** (no recorded settings) needs ``model``; it falls back to that
  model's recipe (:func:`~depthscape.core.recipes.recipe_for`) and its default shape,
  and to CIFAR-10 where no dataset is given.

The data is loaded on first use (a caller that needs only the weights, e.g. the target of
a landscape line, never reads it), from a cache keyed by ``(dataset, data_dir,
cache_dir)`` that callers evaluating many runs may share (``datasets=``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from depthscape.core.checkpoint import check_state_dict, load_checkpoint
from depthscape.core.data import Dataset, Preprocess, Split, load_dataset
from depthscape.core.datasets import DEFAULT_DATASET, find_dataset
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name, get_model, model_kwargs_for
from depthscape.core.preprocess import recorded_preprocess
from depthscape.core.recipe import Recipe, preprocess_for
from depthscape.core.recipes import recipe_for

#: Where a bare state dict (which records nothing) is assumed to come from.

#: The shape of CIFAR-10 as the model factories see it (for a bare state dict).
_CIFAR10_SHAPE = SimpleNamespace(in_channels=3, num_classes=10, image_size=32)

#: A cache of loaded datasets, keyed by (dataset, data_dir, cache_dir).
DatasetCache = dict[tuple[str, str | None, str | None], Dataset]


@dataclass(frozen=True)
class DataSource:
    """Where a trained run's data is read from, after the user's overrides."""

    dataset: str
    data_dir: str | None
    cache_dir: str | None

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.dataset, self.data_dir, self.cache_dir)


def resolve_data_source(recorded: dict, dataset: str | None = None, data_dir: str | None = None,
                        cache_dir: str | None = None) -> DataSource:
    """The override rule for the data (see the module doc), on its own so a test can pin it.

    ``recorded`` is the checkpoint's ``config["train"]`` (empty for a bare state dict).
    """
    recorded_name = recorded.get("dataset")
    name = dataset or recorded_name or DEFAULT_DATASET
    if data_dir is None and (dataset is None or dataset == recorded_name):
        data_dir = recorded.get("data_dir")
    if cache_dir is None:
        cache_dir = recorded.get("cache_dir")
    return DataSource(str(name), None if data_dir is None else str(data_dir),
                      None if cache_dir is None else str(cache_dir))


def _training_folders(out_dir, checkpoint: Path) -> list[Path]:
    """Where a run was probably trained from: the folder its recorded (relative) ``out_dir``
    was taken from, then the run's own folder and the one above it. The checkpoint lies
    in ``<out>/models/``."""
    root = checkpoint.expanduser().resolve().parent.parent
    folders = []
    out = Path(out_dir) if isinstance(out_dir, str) and out_dir else None
    if out is not None and not out.is_absolute() and ".." not in out.parts:
        base = root
        for _ in out.parts:
            base = base.parent
        folders.append(base)
    folders += [root, root.parent]
    return list(dict.fromkeys(folders))


def recorded_paths_found(recorded: dict, checkpoint: str | os.PathLike) -> dict:
    """``recorded`` (a run's ``config["train"]``) with each relative data path (``dataset``,
    ``data_dir``, ``cache_dir``) that is not found from here but is found from the folder
    the run was trained from (:func:`_training_folders`) made absolute, so a run is
    measured from any working folder; old runs (which record the path as typed) included."""
    found = dict(recorded)
    for key in ("dataset", "data_dir", "cache_dir"):
        value = recorded.get(key)
        if not isinstance(value, str) or not value.strip() or \
                find_dataset(value) is not None or Path(value).expanduser().is_absolute() or \
                Path(value).exists():
            continue
        for folder in _training_folders(recorded.get("out_dir"), Path(checkpoint)):
            if (folder / value).exists():
                found[key] = str(folder / value)
                break
    return found


@dataclass
class TrainedRun:
    """One trained run, loaded: model, recipe, preprocessing, and its data as trained."""

    path: Path  # the checkpoint file
    model: nn.Module  # eval mode, on the requested device
    model_name: str  # canonical, e.g. "resnet56"
    model_kwargs: dict[str, Any]  # what built the model (in_channels, num_classes, ...)
    recipe: Recipe
    config: dict  # the run's recorded settings ({} for a bare state dict)
    checkpoint: dict  # everything else the checkpoint holds (iteration, metrics, ...)
    data_source: DataSource
    train_subset: int | None  # training images the run used (None: all)
    test_subset: int | None  # test images it was evaluated on while training (None: all)
    _dataset: Dataset | None = field(default=None, repr=False)
    _datasets: DatasetCache | None = field(default=None, repr=False)

    @property
    def dataset(self) -> Dataset:
        """The whole dataset (loaded on first use, checked against the model's shape)."""
        if self._dataset is None:
            cache = self._datasets if self._datasets is not None else {}
            key = self.data_source.key
            if key not in cache:
                cache[key] = load_dataset(*key)
            self._check_fits(cache[key])
            self._dataset = cache[key]
        return self._dataset

    @property
    def train(self) -> Split:
        """The training split as the run trained on it (its ``train_subset``, same draw)."""
        return self.dataset.train.subset(self.train_subset)

    @property
    def test(self) -> Split:
        """The test images the run was evaluated on while training (its ``test_subset``)."""
        return self.dataset.test.subset(self.test_subset)

    @property
    def preprocess(self) -> Preprocess:
        """The evaluation preprocessing (no augmentation) the model was trained with."""
        stored = recorded_preprocess(self.config.get("preprocess"), str(self.path))
        if stored is not None:
            return stored
        return replace(preprocess_for(self.recipe, self.dataset), augment=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_fits(self, dataset: Dataset) -> None:
        wanted = model_kwargs_for(self.model_name, dataset)
        differ = [f"{k} {self.model_kwargs[k]} vs {v}" for k, v in wanted.items()
                  if k in self.model_kwargs and self.model_kwargs[k] != v]
        if differ:
            raise UserError(f"{self.path} holds a {self.model_name} built for other data than "
                            f"{dataset.name} ({', '.join(differ)}): pass the dataset it was "
                            "trained on (--dataset/--data-dir)")


def _checkpoint_path(checkpoint_or_run) -> Path:
    """A checkpoint path from a path, a RunPaths or a RunInfo (its final checkpoint)."""
    paths = getattr(checkpoint_or_run, "paths", checkpoint_or_run)
    final = getattr(paths, "final", None)
    return Path(final if final is not None else checkpoint_or_run)


def load_trained_run(checkpoint_or_run: str | os.PathLike | Any, *, model: str | None = None,
                     dataset: str | Dataset | None = None, data_dir: str | None = None,
                     cache_dir: str | None = None, device: str | torch.device | None = None,
                     datasets: DatasetCache | None = None) -> TrainedRun:
    """Load a trained run: the one loader every analysis of a trained run uses.

    ``checkpoint_or_run`` is a checkpoint file, or a run (``RunInfo``/``RunPaths``: its
    final checkpoint). ``model`` names the architecture (required for a bare state dict;
    checked against a checkpoint's own). ``dataset`` is a dataset name/path or an already
    loaded :class:`Dataset`; with ``data_dir``/``cache_dir`` it overrides the recorded data
    by the rule in the module doc: a given option wins, an omitted one takes the recorded
    value, a bare state dict falls back to its model's recipe and CIFAR-10. ``device``
    (default CPU) is where the model goes. ``datasets`` is a cache shared between calls.
    A bad file, a wrong model name or data that does not fit the model is a UserError.
    """
    path = _checkpoint_path(checkpoint_or_run)
    data = load_checkpoint(path, map_location="cpu")
    recorded = data.get("model")
    if recorded is not None:
        plugin = ((data.get("config") or {}).get("train") or {}).get("plugin")
        try:
            recorded = canonical_name(recorded)
        except UserError:
            if not isinstance(plugin, dict):
                raise
            raise UserError(f"{path} holds {plugin.get('spec')}, a model from outside the "
                            f"package: give --model-from {plugin.get('spec')} --weights {path}") \
                from None
    given = canonical_name(model) if model else None
    if given is not None and recorded is not None and given != recorded:
        raise UserError(f"{path} holds a {recorded}, not a {given}: drop --model {model} or "
                        f"give a {given} checkpoint")
    name = given or recorded
    if name is None:
        raise UserError(f"{path} is a bare state dict: say which model it holds "
                        "(e.g. --model resnet56)")
    # a bare state dict records no shape: CIFAR-10's (the spec's original scripts' data)
    kwargs = dict(data.get("model_kwargs") or model_kwargs_for(name, _CIFAR10_SHAPE))
    network = get_model(name, **kwargs)
    # the weights live in the model, not twice in memory (a resume checkpoint names them model_state)
    state = data.pop("state_dict", None)
    state = state if state is not None else data.pop("model_state", None)
    if state is None:
        raise UserError(f"{path} holds no model weights (neither state_dict nor model_state)")
    check_state_dict(network, state, source=str(path), model_name=name)
    network.load_state_dict(state)
    network.to(torch.device(device) if device is not None else torch.device("cpu"))
    network.eval()
    config = dict(data.get("config") or {})
    recorded_preprocess(config.get("preprocess"), str(path))  # a damaged record: refused now
    try:
        recipe = Recipe.from_dict(config["recipe"]) if config.get("recipe") else recipe_for(name)
    except (TypeError, ValueError) as error:  # a recipe written by another version
        raise UserError(f"{path} records a recipe this version cannot read: {error}") from None
    train_settings = recorded_paths_found(config.get("train") or {}, path)
    loaded = dataset if isinstance(dataset, Dataset) else None
    source = resolve_data_source(train_settings, loaded.name if loaded is not None else dataset,
                                 data_dir, cache_dir)
    run = TrainedRun(
        path=path, model=network, model_name=name, model_kwargs=kwargs, recipe=recipe,
        config=config, checkpoint=data, data_source=source,
        train_subset=train_settings.get("train_subset"),
        test_subset=train_settings.get("test_subset"), _datasets=datasets)
    if loaded is not None:
        run._check_fits(loaded)
        run._dataset = loaded
    return run
