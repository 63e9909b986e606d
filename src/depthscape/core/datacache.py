"""The data cache: the folder downloads and decoded datasets go to, and a source's file there.

The folder is ``$DEPTHSCAPE_DATA`` or ``~/.cache/depthscape`` (:func:`default_cache_dir`);
an ImageFolder tree or archive is decoded once into ``imagefolder-<key>.npz`` there, the key
made of its path and its files' sizes and modification times (:func:`cache_file_for`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Where downloads and decoded caches go: ``$DEPTHSCAPE_DATA`` or ``~/.cache/depthscape``."""
    env = os.environ.get("DEPTHSCAPE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "depthscape"


def own_matplotlib_cache() -> None:
    """Point matplotlib's config and font cache (``$MPLCONFIGDIR``) at ``matplotlib/`` in
    depthscape's cache folder, unless the user set it: otherwise matplotlib writes into
    ``~/.config`` and ``~/.cache`` of its own. Called by the command line before a command
    runs (matplotlib reads the variable once, on import); ``import depthscape`` in a user's
    own program leaves it alone, so their matplotlib configuration stays theirs."""
    if "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = str(default_cache_dir() / "matplotlib")


def make_cache_dir(path: Path) -> bool:
    """Make the cache folder ``path`` (and parents); False where that would mean making a
    home folder that does not exist (``HOME=/nonexistent/home``): nothing is created then."""
    home = Path.home()
    if not home.is_dir() and (path == home or home in path.parents):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return True


def cache_file_for(path: Path, cache: Path) -> Path:
    """The decoded-data cache file of the ImageFolder tree or archive ``path`` (resolved).

    The key holds the path and the size and modification time of the archive, or of every
    file of the tree: an image overwritten in place, or a tree replaced at the same path,
    is decoded again (the top folder's own time does not change when a file inside does).
    """
    digest = hashlib.sha256(str(path).encode())
    stat = path.stat()
    digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    if path.is_dir():
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            for name in sorted(files):
                try:
                    info = os.stat(os.path.join(folder, name))
                except OSError:
                    continue  # a file that vanished: the decode names what it finds
                relative = os.path.relpath(os.path.join(folder, name), path)
                digest.update(f"\n{relative}|{info.st_size}|{info.st_mtime_ns}".encode())
    return cache / f"imagefolder-{digest.hexdigest()[:16]}.npz"
