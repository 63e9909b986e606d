"""Models from outside the package: ``--model-from SPEC`` with ``--model-kwargs`` and ``--weights``.

``SPEC`` is one of

* ``torchvision:NAME`` -- ``torchvision.models.get_model(NAME, weights=None, **kwargs)``:
  random initialisation, nothing is downloaded (pretrained weights stay off; give your own
  with ``--weights``);
* ``PKG.MODULE:FACTORY`` -- ``FACTORY(**kwargs)`` from an importable module;
* ``path/to/file.py:FACTORY`` -- the same from a Python file.

Every failure (a module or factory that is not found, a factory that raises or returns
something that is not an ``nn.Module``, weights that do not fit, a model that cannot read
the data) is one-line :class:`~depthscape.core.errors.UserError`, raised before any work.

:func:`load_plugin` is the one loader every command's ``--model-from`` uses (a
:class:`PluginModel`: the model, its weights' record, its preprocessing and data);
:func:`registered` gives a plug-in model a registry record for a while, so that training
(logs, checkpoints, resume) and the tables treat it as one of depthscape's own models.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthscape.core.atomic import refuse_special_file
from depthscape.core.checkpoint import check_finite
from depthscape.core.data import Dataset, Preprocess, Split, load_dataset
from depthscape.core.datasets import dataset_names_text
from depthscape.core.errors import UserError
from depthscape.core.models import (
    FamilyInfo,
    canonical_name,
    families,
    register_model,
    unregister,
)
from depthscape.core.models.registry import register_family
from depthscape.core.preprocess import recorded_preprocess
from depthscape.core.trained import DataSource, recorded_paths_found, resolve_data_source

#: How a plug-in model's inputs are made from uint8 pixels where its weights record no
#: preprocessing: torchvision's ``ToTensor()`` (pixels in [0, 1], no mean subtracted).
TO_TENSOR = Preprocess(scale=1.0, mean=(0.0,))
#: Position of plug-in models in tables (after every family of the package).
PLUGIN_ORDER = 1000


def parse_model_kwargs(text: str | dict | None) -> dict[str, Any]:
    """``--model-kwargs``: a JSON object (``'{"num_classes": 10}'``), a dict, or nothing."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    if len(text) > MAX_KWARGS_TEXT:
        raise UserError(f"--model-kwargs is {len(text)} characters long, more than the "
                        f"{MAX_KWARGS_TEXT} a factory's keyword arguments need")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--model-kwargs is not JSON: {error.msg} (e.g. '{{\"num_classes\": 10}}')") \
            from None
    except RecursionError:  # thousands of nested brackets
        raise UserError("--model-kwargs is nested too deeply to read") from None
    except ValueError as error:  # an integer of more digits than Python converts
        reason = _first_line(error).split(";")[0]  # not Python's advice to raise its limit
        raise UserError(f"--model-kwargs holds a number it cannot read: {reason}") from None
    if not isinstance(value, dict):
        raise UserError(f"--model-kwargs must be a JSON object, got {type(value).__name__}")
    return value


#: The longest --model-kwargs text read (a factory's keyword arguments are a few words).
MAX_KWARGS_TEXT = 100_000


def raised(error: BaseException) -> str:
    """``Type: first line`` of an error the user's code raised (``SystemExit(3)`` named as
    the exit it tried)."""
    if isinstance(error, SystemExit):
        return f"SystemExit (sys.exit({error.code!r}); depthscape does not exit for it)"
    first = _first_line(error)
    return f"{type(error).__name__}{': ' + first if first else ''}"


def _first_line(error: BaseException, width: int = 160) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:width] if text else ""


def _factory(spec: str):
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise UserError(f"--model-from {spec!r}: expected torchvision:NAME, PKG.MODULE:FACTORY "
                        "or path/to/file.py:FACTORY")
    if source == "torchvision":
        try:
            # deferred on purpose: torchvision.models is slow to import; only this needs it
            import torchvision.models
        except ImportError:
            raise UserError("--model-from torchvision:... needs torchvision installed") from None

        def build(**kwargs):
            return torchvision.models.get_model(name, weights=None, **kwargs)

        try:
            torchvision.models.get_model_builder(name)
        except ValueError:
            raise UserError(f"torchvision has no model {name!r}") from None
        return build
    if source.endswith(".py"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"--model-from: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"_depthscape_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:  # the user's file: any error is theirs, one line
            raise UserError(f"--model-from: {path} failed to load: {raised(error)}") from None
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as error:
            raise UserError(f"--model-from: cannot import {source}: {error}") from None
        except (Exception, SystemExit) as error:  # the module's own code raised or exited
            raise UserError(f"--model-from: {source} failed to load: {raised(error)}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"--model-from: {source} has no callable {name!r}")
    return factory


def build_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The model ``spec`` names, built with ``kwargs`` (see the module doc), in eval mode."""
    factory = _factory(spec)
    try:
        model = factory(**(kwargs or {}))
    except (Exception, SystemExit) as error:  # the user's factory: any error is theirs, one line
        raise UserError(f"--model-from {spec}: the factory raised {raised(error)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model-from {spec}: the factory returned a {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model.eval()


def read_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """``--weights``: ``(state dict, checkpoint)`` from a state dict or a checkpoint holding
    one (``state_dict`` or ``model_state``), read weights-only (no code runs); the
    checkpoint is ``{}`` for a bare state dict."""
    path = Path(path).expanduser()
    refuse_special_file(path, "--weights")
    if not path.is_file():
        raise UserError(f"--weights: no such file {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file
        raise UserError(f"--weights {path} is not a readable state dict: {_first_line(error)}") \
            from None
    checkpoint = {}
    if isinstance(data, dict):
        for key in ("state_dict", "model_state"):
            if isinstance(data.get(key), dict):
                checkpoint, data = {k: v for k, v in data.items() if k != key}, data[key]
                break
    if not isinstance(data, dict):
        raise UserError(f"--weights {path} holds a {type(data).__name__}, not a state dict")
    return data, checkpoint


def load_state(model: nn.Module, state: dict, path: str | os.PathLike) -> nn.Module:
    """``model.load_state_dict(state)``, a mismatch one line naming ``path``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise UserError(f"--weights {Path(path).expanduser()} does not fit the model: "
                        f"{detail[:160]}") from None
    except (Exception, SystemExit) as error:  # the model's own loading code (a hook) raised
        raise UserError(f"--weights {Path(path).expanduser()}: loading the weights raised "
                        f"{raised(error)}") from None
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``--weights`` into ``model`` (see :func:`read_weights`)."""
    return load_state(model, read_weights(path)[0], path)


def state_sha256(state: dict) -> str:
    """A hash of a state dict's names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


@dataclass
class PluginModel:
    """A model from ``--model-from``, built and with its ``--weights`` loaded."""

    spec: str
    kwargs: dict[str, Any]
    model: nn.Module  # eval mode, on the CPU
    weights: Path | None = None
    weights_sha256: str | None = None
    #: What a depthscape checkpoint given as ``--weights`` records (its ``config``,
    #: ``iteration``, ...); ``{}`` for a bare state dict or no weights.
    checkpoint: dict = field(default_factory=dict, repr=False)

    @property
    def config(self) -> dict:
        config = self.checkpoint.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def preprocess(self) -> Preprocess:
        """The evaluation preprocessing: a depthscape run's own (trained with ``--recipe``),
        else :data:`TO_TENSOR`."""
        stored = recorded_preprocess(self.config.get("preprocess"), f"--weights {self.weights}")
        return stored if stored is not None else TO_TENSOR

    @property
    def train_subset(self) -> int | None:
        """The training images a depthscape run used (None: all, or not a run's weights)."""
        return (self.config.get("train") or {}).get("train_subset")

    def identity(self) -> dict:
        """What decides the model: its spec, keyword arguments and weights."""
        return {"spec": self.spec, "kwargs": self.kwargs, "weights_sha256": self.weights_sha256}

    def data_source(self, dataset: str | None, data_dir: str | None,
                    cache_dir: str | None) -> DataSource:
        """Where the data to measure on is: the options given, else what the run of
        ``--weights`` was trained on (:func:`~depthscape.core.trained.resolve_data_source`'s
        rule); none named is one line."""
        recorded = self.config.get("train") or {}
        if self.weights is not None:  # the run's relative data paths, from any folder
            recorded = recorded_paths_found(recorded, self.weights)
        if dataset is None and data_dir is None and not recorded.get("dataset"):
            raise UserError("--model-from needs the data to measure on: --dataset "
                            f"({dataset_names_text()}) or --data-dir")
        return resolve_data_source(recorded, dataset, data_dir, cache_dir)

    def dataset(self, dataset: str | None, data_dir: str | None, cache_dir: str | None) -> Dataset:
        """The data to measure on (:meth:`data_source`), loaded."""
        return load_dataset(*self.data_source(dataset, data_dir, cache_dir).key)


def load_plugin(spec: str, kwargs: str | dict | None = None,
                weights: str | os.PathLike | None = None) -> PluginModel:
    """Build ``spec`` with ``kwargs`` (JSON text or a dict) and load ``weights`` into it."""
    kwargs = parse_model_kwargs(kwargs)
    model = build_model(spec, kwargs)
    if weights is None:
        check_finite(model, f"--model-from {spec} (as its factory built it)")
        return PluginModel(spec, kwargs, model)
    state, checkpoint = read_weights(weights)
    check_finite(state, f"--weights {Path(weights).expanduser()}")
    load_state(model, state, weights)
    check_finite(model, f"--model-from {spec} with --weights {Path(weights).expanduser()}")
    plugin = PluginModel(spec, kwargs, model, Path(weights), state_sha256(state), checkpoint)
    plugin.preprocess  # noqa: B018  (a damaged recorded preprocessing: refused before any work)
    return plugin


def check_model_reads(model: nn.Module, split: Split, preprocess: Preprocess | None,
                      num_classes: int | None = None) -> None:
    """A one-line UserError where ``model`` cannot read ``split`` (a forward pass of two
    samples in eval mode), returns no ``(batch, classes)`` tensor, or predicts fewer
    classes than ``num_classes``; the model's train/eval mode is kept."""
    x = split.images[:2]
    x = preprocess.normalize(x) if preprocess is not None else x
    what = "images" if preprocess is not None else "inputs"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(next(model.parameters(), x).device))
    except (Exception, SystemExit) as error:  # the user's model: any error is theirs, one line
        raise UserError(f"the model cannot read this data ({tuple(x.shape[1:])} {what}): "
                        f"its forward pass raised {raised(error)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model returns a {type(out).__name__}, not a tensor: wrap it so it "
                        "returns one (depthscape.select_output(model, key))")
    if out.dim() != 2 or out.shape[0] != len(x):
        raise UserError(f"the model returns a tensor of shape {tuple(out.shape)} for {len(x)} "
                        f"{what}, not one score per class and sample ({len(x)}, classes)")
    check_finite(out, f"the model's output on {len(x)} {what}")
    if num_classes is not None and out.shape[1] < num_classes:
        raise UserError(f"the model predicts {out.shape[1]} classes, the data has {num_classes}: "
                        f"build it for them (e.g. --model-kwargs '{{\"num_classes\": {num_classes}}}')")


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (what a measurement works on, so the caller's model is left
    as it was); a model holding what cannot be copied (a ``threading.Lock``, an open file)
    is one line saying so."""
    try:
        return copy.deepcopy(model)
    except (TypeError, copy.Error, RuntimeError) as error:
        raise UserError(f"the model cannot be copied for the measurement "
                        f"({type(model).__name__} holds something copy.deepcopy refuses: "
                        f"{_first_line(error)}): keep such objects outside the module, or "
                        "give it a __deepcopy__") from None


# ----------------------------------------------------------------------------- registry

_NAME = re.compile(r"[a-z][a-z0-9.]*")


def plugin_name(spec: str, name: str | None = None) -> str:
    """The name a plug-in model's run goes by (its files ``logs/<name>_log.csv``,
    ``models/<name>_<dataset>.pth``): ``name`` if given, else the spec with ``:`` as ``.``
    (``torchvision.resnet18``, a file's stem for ``path/to/file.py:FACTORY``), lowercase,
    other characters dropped."""
    if name is None:
        source, _, factory = spec.rpartition(":")
        if source.endswith(".py"):
            source = Path(source).stem
        name = f"{source}.{factory}".lower()
        name = re.sub(r"[^a-z0-9.]", "", name).strip(".")
    if not _NAME.fullmatch(name or ""):
        raise UserError(f"the run name {name!r} must be lowercase letters, digits and dots, "
                        "starting with a letter")
    return name


@contextlib.contextmanager
def registered(name: str, build: Callable[[], nn.Module], label: str | None = None,
               recipe=None) -> Iterator[str]:
    """Register a plug-in model as a fixed model called ``name`` while the block runs (its
    factory ``build()``; its record: files named after ``name``, ``recipe`` as its own),
    so :func:`depthscape.training.loop.train`, the run files and the tables take it as
    one of the package's models. A name the package's models use is a UserError."""
    try:
        taken = canonical_name(name)
    except UserError:  # unknown, or a depth family's prefix without its depth
        taken = next((f.label for f in families() if name in (f.prefix, *f.aliases)), None)
    if taken is not None:
        raise UserError(f"the run name {name!r} is depthscape's own {taken}: name the plug-in "
                        "run otherwise (name = \"...\" in the recipe)")

    def factory(in_channels: int = 3, num_classes: int = 10, **_) -> nn.Module:
        return build()  # the plug-in's own shape (its --model-kwargs), checked on the data

    register_model(name)(factory)
    try:
        register_family(FamilyInfo(
            prefix=name, label=label or name, file_name=name, run_name=name,
            checkpoint_name=f"{name}_{{dataset}}", order=PLUGIN_ORDER,
            curve_unit=getattr(recipe, "unit", "iteration"),
            recipes={None: recipe} if recipe is not None else {}))
        if canonical_name(name) != name:  # another family's alias starts the name
            raise UserError(f"the run name {name!r} reads as {canonical_name(name)!r}: name "
                            "the plug-in run otherwise (name = \"...\" in the recipe)")
        yield name
    finally:
        unregister(name)
