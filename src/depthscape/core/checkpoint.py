"""Checkpoints that carry their own config, saved atomically and loaded safely.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "depthscape", "version": 1, "model": "resnet56",
     "model_kwargs": {"in_channels": 3, "num_classes": 10, ...},
     "config": {...}, "state_dict": {...}, ...}

Bare state dicts (e.g. from the spec's original scripts) load too when the architecture is
given separately.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthscape.core.atomic import atomic_path
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name, get_model

FORMAT = "depthscape"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Save ``payload`` (plus format tags) to ``path`` atomically."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file with ``weights_only=True``; a bad file is a one-line UserError.

    A bare state dict comes back as ``{"state_dict": ...}``.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # any failure to unpickle an untrusted file means "unreadable"
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        if text.startswith("Weights only load failed"):
            # torch's message is paragraphs of advice around one line of reason: keep that
            reasons = [p.strip() for p in text.split("\n\n")[1:]
                       if p.strip() and not p.strip().startswith("Check the documentation")]
            first = " ".join(reasons[0].split()) if reasons else "unsupported content"
            if "GLOBAL" in first:
                raise UserError(f"{path} holds Python objects that are not loaded, for safety "
                                f"(weights_only=True): {first}") from None
        raise UserError(f"{path} is not a readable checkpoint (corrupt, truncated or not a "
                        f"PyTorch file): {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a checkpoint: it holds a {type(data).__name__}, not a dict")
    if data.get("format") == FORMAT:
        return data
    if data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"state_dict": data}
    if isinstance(data.get("state_dict"), dict):
        return data
    raise UserError(f"{path} is not a depthscape checkpoint or a model state dict")


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                     model_name: str | None = None) -> None:
    """Raise a UserError naming the first tensor where ``state_dict`` and ``model`` disagree."""
    expected = model.state_dict()
    what = f" for {model_name}" if model_name else ""
    for key, tensor in expected.items():
        if key not in state_dict:
            raise UserError(f"{source} does not match the architecture{what}: tensor {key!r} is missing")
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"{source} does not match the architecture{what}: tensor {key!r} has shape "
                f"{tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)}"
            )
    for key in state_dict:
        if key not in expected:
            raise UserError(f"{source} does not match the architecture{what}: unexpected tensor {key!r}")


def model_from_checkpoint(path: str | os.PathLike, model_name: str | None = None,
                          map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint holds and load its weights.

    ``model_name`` is needed for a bare state dict; given for a depthscape checkpoint it
    must agree with the checkpoint's own (else a UserError naming the first mismatch).
    Returns the model (on CPU, eval mode) and the checkpoint dict.
    """
    data = load_checkpoint(path, map_location="cpu")
    stored = data.get("model")
    name = canonical_name(model_name) if model_name else stored
    if name is None:
        raise UserError(f"{path} is a bare state dict: say which model it holds (e.g. --model resnet56)")
    kwargs = dict(data.get("model_kwargs") or {})
    model = get_model(name, **kwargs)
    state = data["state_dict"]
    check_state_dict(model, state, source=str(path), model_name=name)
    model.load_state_dict(state)
    model.to(map_location)
    model.eval()
    return model, data


def eval_preprocess(checkpoint: dict, dataset=None, model_name: str | None = None):
    """The evaluation preprocessing (no augmentation) a checkpoint's model was trained with.

    Taken from the checkpoint's settings; a bare state dict falls back to its model's
    recipe (``model_name`` or the checkpoint's own name; the ResNet recipe when neither
    says), with ``dataset``'s pixel mean (CIFAR-10's when no dataset is given).
    """
    from dataclasses import replace

    from depthscape.core.data import PIXEL_MEANS_255, Preprocess
    from depthscape.core.recipes import recipe_for

    stored = (checkpoint.get("config") or {}).get("preprocess")
    if stored:
        return Preprocess(scale=float(stored["scale"]), mean=tuple(float(m) for m in stored["mean"]),
                          augment=False)
    recipe = recipe_for(model_name or checkpoint.get("model") or "resnet20")
    if dataset is not None:
        from depthscape.core.recipes import preprocess_for

        return replace(preprocess_for(recipe, dataset), augment=False)
    mean = PIXEL_MEANS_255["cifar10"] if recipe.subtract_mean else (0.0,)
    return Preprocess(scale=recipe.pixel_scale, mean=mean, augment=False)


def checkpoint_dataset(checkpoint: dict, dataset: str | None = None, data_dir: str | None = None,
                       cache_dir: str | None = None):
    """Load the dataset a checkpoint was trained on, unless ``dataset``/``data_dir`` say otherwise."""
    from depthscape.core.data import load_dataset

    stored = (checkpoint.get("config") or {}).get("train") or {}
    source = dataset or stored.get("dataset") or "cifar10"
    if data_dir is None and dataset is None:
        data_dir = stored.get("data_dir")
    return load_dataset(source, data_dir, cache_dir or stored.get("cache_dir"))
