"""Device selection."""

from __future__ import annotations

import contextlib

import torch

from depthscape.core.errors import UserError


def get_device(name: str | None = None) -> torch.device:
    """Return the device to compute on: ``name`` if given, else CUDA, then MPS, then CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise UserError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"device {name!r} asked for, but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def torch_threads(count: int | None):
    """torch's intra-op threads set to ``count`` inside the block and given back as they
    were after (None: left as they are)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
