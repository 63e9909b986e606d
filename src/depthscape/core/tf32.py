"""The TF32 switches: TF32 tensor-core arithmetic for CUDA's float32 convolutions and
matmuls, set process-wide (training's way) or for a block (every measurement's way,
:func:`tf32_scope`, which :meth:`depthscape.core.runtime.Precision.scope` enters).

PyTorch's own default has TF32 convolutions on; depthscape's fp32 means them off.
"""

from __future__ import annotations

import contextlib
import threading

import torch


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, on or off (process-wide).

    Uses the ``fp32_precision`` settings where this PyTorch has them: PyTorch refuses to
    read the flags once the legacy ``allow_tf32`` and the new API have been mixed.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether cuDNN convolutions may use TF32 now (either API)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def _tf32_settings(enabled: bool) -> list[tuple]:
    """``(owner, attribute, value now, value for enabled)`` of each TF32 switch."""
    settings = []
    for owner in (getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul):
        if owner is not None and hasattr(owner, "fp32_precision"):
            settings.append((owner, "fp32_precision", owner.fp32_precision,
                             "tf32" if enabled else "ieee"))
        elif owner is torch.backends.cuda.matmul:
            settings.append((owner, "allow_tf32", owner.allow_tf32, enabled))
    if not any(owner is not torch.backends.cuda.matmul for owner, *_ in settings):
        settings.append((torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32,
                         enabled))
    return settings


class _Scope:
    """One setting of the TF32 switches held by one or more blocks at once."""

    def __init__(self, enabled: bool):
        self.enabled, self.holders = enabled, 0
        self.saved = _tf32_settings(enabled)  # what to restore when the last holder leaves


#: The TF32 switches are process-wide, but worker threads (a landscape's points, a
#: curvature map's) each enter a scope: blocks asking for the setting already held share it
#: (the switches are restored once, when the last leaves), so no thread's exit undoes the
#: setting another thread is computing in.
_SCOPES: list[_Scope] = []
_SCOPES_LOCK = threading.Lock()


@contextlib.contextmanager
def tf32_scope(enabled: bool = False):
    """TF32 on or off inside the block (off: full float32 on NVIDIA GPUs); restored after.

    TF32 (cuDNN's default for convolutions) rounds inputs to 10 mantissa bits: a surface
    would then differ from the CPU's by ~1e-3, so landscapes and Hessians run with it off
    unless ``--precision tf32`` asks for it. Safe to enter from several threads at once
    with the same setting, and nested with another.
    """
    with _SCOPES_LOCK:
        if _SCOPES and _SCOPES[-1].enabled == enabled:
            scope = _SCOPES[-1]
            for owner, name, _, value in _tf32_settings(enabled):  # set_tf32 may have run
                setattr(owner, name, value)                        # inside the open scope
        else:
            scope = _Scope(enabled)
            for owner, name, _, value in scope.saved:
                setattr(owner, name, value)
            _SCOPES.append(scope)
        scope.holders += 1
    try:
        yield
    finally:
        with _SCOPES_LOCK:
            scope.holders -= 1
            if scope.holders == 0:
                at = _SCOPES.index(scope)
                if at + 1 < len(_SCOPES):  # left out of order: the one above restores for it
                    _SCOPES[at + 1].saved = scope.saved
                else:
                    for owner, name, old, _ in scope.saved:
                        setattr(owner, name, old)
                del _SCOPES[at]
