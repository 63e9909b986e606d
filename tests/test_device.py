"""Device selection: CUDA -> MPS -> CPU, and a clear error for a device that is not there."""

from __future__ import annotations

import pytest
import torch

from depthscape.core.device import get_device
from depthscape.core.errors import UserError


def test_auto_selection_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")


def test_explicit_device():
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_absent_cuda_is_a_user_error():
    with pytest.raises(UserError, match="CUDA is not available"):
        get_device("cuda")


def test_nonsense_device_name():
    with pytest.raises(UserError, match="unknown device"):
        get_device("tpu-of-dreams")
