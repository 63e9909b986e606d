"""The stored sharpness and density results: reused while the checkpoint and settings hold.

A result is written as JSON ``{"key": ..., "result": ...}``; the key names the checkpoint
(file name, size, modification time) and every setting it was measured with, so a
changed checkpoint or setting measures again.
"""

from __future__ import annotations

import json
from pathlib import Path


def cache_key(checkpoint: Path, settings: dict) -> dict:
    """What a stored result must match: the checkpoint's name, size and time, the settings."""
    stat = checkpoint.stat()
    return {"checkpoint": checkpoint.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "settings": settings}


def cached_result(output, key, build=None, dist=None):
    """``build(stored result)`` (default: the stored dict) where ``output`` holds a result
    for ``key``, else None; under torchrun (``dist``) None unless every rank found it (all
    measure, or none: the products are collectives)."""
    build = build or (lambda data: data)
    found = None
    if output is not None and Path(output).exists():
        try:
            stored = json.loads(Path(output).read_text())
            if stored.get("key") == key:
                found = build(stored["result"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            found = None  # damaged or from another version: measure again
    if dist is not None and not dist.all_true(found is not None):
        return None
    return found
