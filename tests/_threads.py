"""torch's thread count held for a while: conftest's ``one_thread`` and the module-wide
fixtures use it (a helper of its own, so subprocess helpers need not import conftest)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int):
    """torch's intra-op threads set to ``count`` inside, given back as they were after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
