"""Work whose memory is known in advance is refused up front where it cannot fit.

A model family whose memory follows from its depth alone says so in its record
(``FamilyInfo.training_bytes``: the ResNets' and PlainNets' CIFAR layout, for instance), so
a training that cannot fit is refused before the model is built, with the size it would
need, instead of failing in the allocator minutes later. The same for a landscape grid's
arrays.
"""

from __future__ import annotations

import os

import torch

from depthscape.core.errors import UserError
from depthscape.core.models import model_info


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


def training_bytes(model: str, batch_size: int) -> int | None:
    """Estimated memory of training ``model`` at ``batch_size``, from its family's record;
    None where the family gives no estimate (nothing is refused then)."""
    info = model_info(model)
    estimate = info.family.training_bytes
    if estimate is None or info.depth is None:
        return None
    return estimate(info.depth, batch_size)


def require_fits(need: int, what: str, device: torch.device | str | None = None) -> None:
    """A UserError naming the size where ``need`` bytes exceed what ``device`` has."""
    have = available_memory(device)
    if need > have:
        where = "free GPU memory" if torch.device(device or "cpu").type == "cuda" else "available memory"
        raise UserError(f"{what} needs about {format_bytes(need)}, more than the "
                        f"{format_bytes(have)} of {where}: choose a smaller size")


def check_model_fits(model: str, batch_size: int, device: torch.device | str | None = None) -> None:
    """Refuse (before building it) a model whose training cannot fit in memory, where its
    family's record estimates that."""
    need = training_bytes(model, batch_size)
    if need is None:
        return
    require_fits(need, f"training {model} at batch size {batch_size}", device)


def check_basis_fits(steps: int, size: int, like: torch.Tensor,
                     device: torch.device | str | None = None) -> None:
    """Refuse (one line, before allocating) a Lanczos basis of ``steps`` vectors of ``size``
    entries (``like``'s dtype, on ``device``: default ``like``'s) that cannot fit in memory."""
    require_fits(steps * size * like.element_size(),
                 f"a Lanczos basis of {steps} steps (--power-iters) x {size} parameters x "
                 f"{like.element_size()} bytes",
                 device if device is not None else like.device)
