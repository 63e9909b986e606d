"""Models from outside the package: ``--model-from SPEC`` with ``--model-kwargs`` and ``--weights``.

``SPEC`` is one of

* ``torchvision:NAME`` -- ``torchvision.models.get_model(NAME, weights=None, **kwargs)``:
  random initialisation, nothing is downloaded (pretrained weights stay off; give your own
  with ``--weights``);
* ``PKG.MODULE:FACTORY`` -- ``FACTORY(**kwargs)`` from an importable module;
* ``path/to/file.py:FACTORY`` -- the same from a Python file.

Every failure (a module or factory that is not found, a factory that raises or returns
something that is not an ``nn.Module``, weights that do not fit) is one-line
:class:`~depthscape.core.errors.UserError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthscape.core.errors import UserError


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs``: a JSON object (``'{"num_classes": 10}'``) or nothing."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--model-kwargs is not JSON: {error.msg} (e.g. '{{\"num_classes\": 10}}')") \
            from None
    if not isinstance(value, dict):
        raise UserError(f"--model-kwargs must be a JSON object, got {type(value).__name__}")
    return value


def _factory(spec: str):
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise UserError(f"--model-from {spec!r}: expected torchvision:NAME, PKG.MODULE:FACTORY "
                        "or path/to/file.py:FACTORY")
    if source == "torchvision":
        try:
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
        except Exception as error:  # the user's file: any error is theirs, one line
            raise UserError(f"--model-from: {path} failed to load: {type(error).__name__}: "
                            f"{str(error).splitlines()[0][:160] if str(error) else ''}") from None
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as error:
            raise UserError(f"--model-from: cannot import {source}: {error}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"--model-from: {source} has no callable {name!r}")
    return factory


def build_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The model ``spec`` names, built with ``kwargs`` (see the module doc), in eval mode."""
    factory = _factory(spec)
    try:
        model = factory(**(kwargs or {}))
    except Exception as error:  # the user's factory: any error is theirs, one line
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise UserError(f"--model-from {spec}: the factory raised {type(error).__name__}"
                        f"{': ' + first if first else ''}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model-from {spec}: the factory returned a {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model.eval()


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``--weights``: a state dict or a checkpoint holding one (``state_dict`` or
    ``model_state``), read weights-only (no code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--weights: no such file {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or foreign file
        raise UserError(f"--weights {path} is not a readable state dict: "
                        f"{str(error).splitlines()[0][:160]}") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model_state"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict):
        raise UserError(f"--weights {path} holds a {type(data).__name__}, not a state dict")
    try:
        model.load_state_dict(data)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise UserError(f"--weights {path} does not fit the model: {detail[:160]}") from None
    return model
