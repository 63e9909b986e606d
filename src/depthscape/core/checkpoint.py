"""Checkpoints that carry their own config, saved atomically and loaded safely.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "depthscape", "version": 1, "model": "resnet56",
     "model_kwargs": {"in_channels": 3, "num_classes": 10, ...},
     "config": {...}, "state_dict": {...}, ...}

Bare state dicts (e.g. from the spec's original scripts) load too when the architecture is
given separately. Rebuilding a trained run from a checkpoint (model, recipe, preprocessing,
data) is :func:`depthscape.core.trained.load_trained_run`'s job, and only its.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthscape.core.atomic import atomic_open, refuse_special_file
from depthscape.core.errors import UserError

FORMAT = "depthscape"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Save ``payload`` (plus format tags) to ``path`` atomically."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_open(path, "wb") as handle:
        recorder = _WriteRecorder(handle)
        try:
            torch.save(data, recorder)
        except RuntimeError:
            if recorder.error is not None:  # torch words a full disk "unexpected pos 704 vs 598"
                raise recorder.error from None
            raise


class _WriteRecorder:
    """A file object that keeps the OSError its ``write`` raised (torch replaces it by a
    RuntimeError that does not say why), so a failed save can name the reason."""

    def __init__(self, handle):
        self._handle, self.error = handle, None

    def write(self, data):
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name):
        return getattr(self._handle, name)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file with ``weights_only=True``; a bad file is a one-line UserError.

    A bare state dict comes back as ``{"state_dict": ...}``. Weights that are not all
    finite (a NaN or inf anywhere) are refused with one line naming the tensor: nothing
    evaluates, measures or resumes from them.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a checkpoint file")
    refuse_special_file(path, "checkpoint")
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
    if data.get("format") != FORMAT:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            data = {"state_dict": data}
        elif not isinstance(data.get("state_dict"), dict):
            raise UserError(f"{path} is not a depthscape checkpoint or a model state dict")
    for weights in (WEIGHT_KEYS & data.keys()):
        check_finite(data[weights], str(path))
    return data


#: Where a checkpoint keeps model weights: final/bare ones, and the resumable one's.
WEIGHT_KEYS = frozenset({"state_dict", "model_state"})


def check_finite(weights, source: str = "checkpoint") -> None:
    """Raise a UserError naming the first floating-point tensor holding a NaN or an inf.

    The one check of finiteness every entry uses: ``weights`` is a state dict, a module
    (its parameters and its buffers, e.g. a BatchNorm's ``running_var``) or one tensor (a
    model's output: ``source`` then says whose)."""
    if isinstance(weights, torch.Tensor):
        bad = _non_finite(weights)
        if bad:
            raise UserError(f"{source} is not finite: {bad} NaN or infinite value(s) of "
                            f"{weights.numel()}; check the model and its weights")
        return
    if isinstance(weights, nn.Module):
        weights = weights.state_dict(keep_vars=True)
    if not isinstance(weights, dict):
        return
    for key, tensor in weights.items():
        bad = _non_finite(tensor)
        if bad:
            raise UserError(f"{source} holds non-finite weights: tensor {key!r} has {bad} NaN "
                            f"or infinite value(s) of {tensor.numel()}; retrain, or use an "
                            "earlier checkpoint")


def _non_finite(tensor) -> int:
    """How many values of a floating-point (or complex) tensor are NaN or infinite."""
    if not isinstance(tensor, torch.Tensor) or not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    with torch.no_grad():
        return int((~torch.isfinite(tensor.detach())).sum())


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
