"""Work whose memory is known in advance is refused up front where it cannot fit.

A ResNet/PlainNet's memory follows from its depth alone (the CIFAR layout: three stages of
16, 32 and 64 channels at 32, 16 and 8 pixels), so a training that cannot fit is refused
before the model is built, with the size it would need, instead of failing in the
allocator minutes later. The same for a landscape grid's arrays.
"""

from __future__ import annotations

import os

import torch

from depthscape.core.errors import UserError

#: Per block of the CIFAR ResNet/PlainNet: (channels, pixels per side) of its three stages.
_STAGES = ((16, 32), (32, 16), (64, 8))
#: Activation tensors kept for the backward pass per convolution (conv, BN, ReLU outputs).
_SAVED_PER_CONV = 3


def format_bytes(size: float) -> str:
    """``size`` in B, KiB, MiB, GiB or TiB, e.g. ``74.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes the computation may use on ``device``: free GPU memory, else the machine's RAM."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def resnet_training_bytes(depth: int, batch_size: int) -> int:
    """Estimated memory of training a CIFAR ResNet/PlainNet of ``depth`` at ``batch_size``.

    Weights, gradients and SGD momentum (three float32 copies of the 3x3 convolutions) plus
    the activations kept for the backward pass. A lower bound in spirit: the real use is
    somewhat higher, so what this refuses cannot fit.
    """
    blocks = max(0, (depth - 2) // 6)
    params = sum(2 * 9 * c * c for c, _ in _STAGES) * blocks
    per_image = sum(2 * _SAVED_PER_CONV * c * s * s for c, s in _STAGES) * blocks
    return 4 * (3 * params + per_image * batch_size)


def require_fits(need: int, what: str, device: torch.device | str | None = None) -> None:
    """A UserError naming the size where ``need`` bytes exceed what ``device`` has."""
    have = available_memory(device)
    if need > have:
        where = "free GPU memory" if torch.device(device or "cpu").type == "cuda" else "available memory"
        raise UserError(f"{what} needs about {format_bytes(need)}, more than the "
                        f"{format_bytes(have)} of {where}: choose a smaller size")


def check_model_fits(model: str, batch_size: int, device: torch.device | str | None = None) -> None:
    """Refuse (before building it) a ResNet/PlainNet whose training cannot fit in memory."""
    from depthscape.core.models import model_depth

    depth = model_depth(model)
    if depth is None:
        return
    require_fits(resnet_training_bytes(depth, batch_size),
                 f"training {model} at batch size {batch_size}", device)
