"""What an analysis measures: a :class:`Subject`, made once from a depthscape run or from a
model of the user's.

Every analysis (sharpness, density, eval, ...) needs the same things of what it measures:
the model (eval mode, on its device), its evaluation preprocessing, its data splits, the
loss, its name in tables and file names, and the facts that identify it (weights, family
and recipe where known). :func:`subject_from_run` makes one from a trained run's checkpoint
(:func:`~depthscape.core.trained.load_trained_run`: its recorded settings, data and
preprocessing), :func:`subject_from_model` from a model built outside the package
(``--model-from``: a :class:`~depthscape.core.plugins.PluginModel`; the Python API: any
``nn.Module`` with the data and loss it is given). The analyses take a Subject and do not
ask where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from depthscape.core.data import Dataset, Preprocess, Split, load_dataset
from depthscape.core.errors import UserError
from depthscape.core.models import model_info
from depthscape.core.plugins import PluginModel, check_model_reads, plugin_name
from depthscape.core.runs import run_home, snapshot_path
from depthscape.core.trained import DatasetCache, DataSource, TrainedRun, load_trained_run

#: A loss of the model's scores and the targets: the batch's mean (or one per sample).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The name a Python API model's data has in its files' records (it is given, not named).
GIVEN_DATA = "given"


@dataclass
class Subject:
    """One model to measure, with its data: see the module doc.

    ``name`` is the model's name in tables and file names (a run's canonical model name,
    ``resnet56``; a plug-in's :func:`~depthscape.core.plugins.plugin_name`), ``label`` how a
    report shows it. ``split("train")`` is the training data as the run trained on it (its
    recorded subset), ``split("test")`` the whole test set. ``run``/``plugin``: where it
    came from (one of them; neither: a Python API model, its data given), for what only
    that kind has. ``loss``: the loss measured, None for the mean cross-entropy (each
    analysis computes it its own exact way; a run's and a plug-in's are always it).

    Its result files (a surface, a trajectory) are named and recorded from it alone:
    ``stem`` begins their default names (a run's checkpoint's stem; a plug-in's SPEC, made
    safe for a file name), ``home`` is where they go by default (a run's directory; None:
    the folder the command is given), ``recorded_name`` and ``loss_name`` are its name and
    its loss's in a grid's identity (a run's model name and none; a plug-in's SPEC and
    ``cross_entropy``), ``snapshots`` the weight snapshots its run kept (None: no run
    named), ``step`` the training step its weights are at, where a run's checkpoint says;
    :meth:`record` what a file records of where it came from.
    """

    model: nn.Module  # eval mode
    name: str
    label: str
    identity: dict  # what decides it: checkpoint or weights, model, recipe where known
    train_subset: int | None = None
    loss: LossFn | None = None
    run: TrainedRun | None = None
    plugin: PluginModel | None = None
    source: DataSource | None = None  # a plug-in's data (a run's: its own)
    stem: str = "model"
    home: Path | None = None
    recorded_name: str = ""
    loss_name: str | None = None
    snapshots: Path | None = None
    step: int | None = None
    _dataset: Dataset | None = field(default=None, repr=False)

    @property
    def dataset(self) -> Dataset:
        """The whole dataset, loaded on first use."""
        if self.run is not None:
            return self.run.dataset
        if self._dataset is None:
            self._dataset = load_dataset(*self.source.key)
        return self._dataset

    @property
    def preprocess(self) -> Preprocess | None:
        """The evaluation preprocessing (no augmentation) the model expects (None: a Python
        API model, which reads its given inputs as they are)."""
        origin = self.run if self.run is not None else self.plugin
        return origin.preprocess if origin is not None else None

    def split(self, which: str) -> Split:
        """``"train"``: the data the run trained on; ``"test"``: the whole test set."""
        if which == "train":
            return self.dataset.train.subset(self.train_subset)
        if which == "test":
            return self.dataset.test
        raise UserError(f"split must be train or test, got {which!r}")

    def check_reads(self, split: Split) -> None:
        """One line, before any work, where the model cannot read ``split`` (a model of the
        user's: its output's shape, its classes; a run's model was built for its data)."""
        if self.plugin is not None:
            check_model_reads(self.model, split, self.preprocess, self.dataset.num_classes)

    def record(self, dataset: str, target: str | None = None,
               snapshots: Path | None = None) -> dict:
        """What a result file records of where its subject came from, in the layout each
        kind's files have always had: a run's checkpoint, the ``target`` checkpoint of a
        line and the dataset's name (its snapshots lie beside the checkpoint); a plug-in's
        source, the dataset's name, its keyword arguments, weights and ``snapshots`` file;
        a Python API model's source, its data (given) and the ``target`` model's name."""
        if self.run is not None:
            return {"checkpoint": str(self.run.path), "target": target, "dataset": dataset}
        if self.plugin is None:
            return {"source": "python api", "dataset": dataset, "target": target}
        weights = self.plugin.weights
        return {"source": "--model-from", "dataset": dataset, "model_kwargs": self.plugin.kwargs,
                "weights": str(weights) if weights is not None else None,
                **({"snapshots_file": str(snapshots)} if snapshots is not None else {})}

    def to(self, device: torch.device | str) -> Subject:
        """The model moved to ``device`` (in place); the Subject, for chaining."""
        self.model.to(device)
        return self


def safe_stem(name: str) -> str:
    """``name`` as a file name's stem: every character but letters, digits and ``-_.`` a
    ``-`` (a model's name in the default names of its files)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def subject_from_run(checkpoint: str | os.PathLike, *, model: str | None = None,
                     dataset: str | Dataset | None = None, data_dir: str | None = None,
                     cache_dir: str | None = None, device: torch.device | str | None = None,
                     datasets: DatasetCache | None = None) -> Subject:
    """A depthscape run's checkpoint as a Subject (the options override its recorded data
    by :func:`~depthscape.core.trained.load_trained_run`'s rule; the data loads on first
    use)."""
    run = load_trained_run(checkpoint, model=model, dataset=dataset, data_dir=data_dir,
                           cache_dir=cache_dir, device=device, datasets=datasets)
    return Subject(run.model, run.model_name, model_info(run.model_name).display_name,
                   {"checkpoint": Path(run.path).name, "model": run.model_name,
                    "model_kwargs": run.model_kwargs}, run.train_subset, run=run,
                   stem=run.path.stem, home=run_home(run.path), recorded_name=run.model_name,
                   snapshots=snapshot_path(run.path), step=run.checkpoint.get("iteration"))


def subject_from_model(model: PluginModel | nn.Module, *, dataset: str | None = None,
                       data_dir: str | None = None, cache_dir: str | None = None,
                       device: torch.device | str | None = None, data: Split | None = None,
                       loss: LossFn | None = None, name: str | None = None,
                       loss_name: str = "cross_entropy") -> Subject:
    """A model of the user's as a Subject.

    A :class:`~depthscape.core.plugins.PluginModel` (``--model-from``, with its
    ``--weights``): on the data named (else what the run of its weights trained on; none
    named: one line now), loaded on first use; :meth:`Subject.check_reads` checks the model
    against it. Any other ``nn.Module`` (the Python API's): on ``data``, its inputs as they
    are and its targets (both splits), measured with ``loss`` (None: cross-entropy) and
    recorded under ``name`` (default: its class's name) and ``loss_name``; it has no home
    (its files go where they are named). ``device``: where the model is moved (None: it
    stays where it is; an analysis evaluates a copy on its own device).
    """
    if isinstance(model, PluginModel):
        weights = model.weights
        subject = Subject(model.model, plugin_name(model.spec), model.spec, model.identity(),
                          model.train_subset, plugin=model,
                          source=model.data_source(dataset, data_dir, cache_dir),
                          stem=safe_stem(model.spec), recorded_name=model.spec,
                          loss_name="cross_entropy",
                          snapshots=snapshot_path(weights) if weights is not None else None)
    else:
        subject = _given_subject(model, data, loss, name or type(model).__name__, loss_name)
    return subject.to(device) if device is not None else subject


def _given_subject(model: nn.Module, data: Split | None, loss: LossFn | None, name: str,
                   loss_name: str) -> Subject:
    """:func:`subject_from_model`'s Subject of a Python API model on its given ``data``."""
    if data is None:
        raise ValueError("a model that is not a --model-from plug-in needs its data")
    given = Dataset(GIVEN_DATA, data, data, [])  # one split, as the test and the train split
    return Subject(model, name, name, {"model": name, "loss": loss_name}, loss=loss,
                   stem=safe_stem(name), recorded_name=name, loss_name=loss_name,
                   _dataset=given)
