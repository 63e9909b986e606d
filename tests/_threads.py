"""torch's thread count held for a while: conftest's ``one_thread`` and the module-wide
fixtures use it (a module of its own, so subprocess helpers need not import conftest)."""

from depthscape.core.device import torch_threads  # noqa: F401  (the package's own)
