"""One writer per output: an exclusive lock held for as long as a command writes.

A training run, a landscape surface and a study folder each have one lock file. The
writer holds an ``fcntl.flock`` on it (the kernel drops it when the process dies, however
it dies) and writes its pid, host and start time into it, so a second writer can say who
holds it. A lock file that is not locked but still names a holder was left by a process
that died without cleaning up: it is taken over with a one-line notice.

:func:`claim_run` is the training run's claim: the lock, then (for ``--overwrite``) the
removal of every file of the old run before the new one writes anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from depthscape.core.atomic import (
    check_name_lengths,
    ensure_writable_dir,
    open_nofollow,
    os_error_text,
    remove_stale_temporaries,
    remove_stale_temporaries_in,
)
from depthscape.core.errors import UserError, notice


class LockHeld(UserError):
    """Another live process holds the lock: the one line names it (pid, host, since)."""

    exit_code = 4


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(
        since, (int, float)) else "an unknown time"
    return f"PID {holder.get('pid', '?')} on {holder.get('host', '?')} since {when}"


def _read_holder(handle) -> dict:
    try:
        handle.seek(0)
        data = json.loads(handle.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for the ``with`` block; ``what`` names the output.

    Raises :class:`LockHeld` (one line: who holds it and since when) where another live
    process holds it. The lock file is removed on release. A link (or anything but a plain
    file) planted at the lock's name is refused with one line naming it, never written
    through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, "lock file")
        except OSError as error:
            raise UserError(f"cannot lock {path}: {error.strerror or error}") from None
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            handle.close()
            raise LockHeld(f"{what} is being written by another process ({_describe(holder)}); "
                           f"wait for it to finish, or stop it (lock file {path})") from None
        except OSError as error:
            handle.close()
            raise UserError(f"cannot lock {path}: {error.strerror or error}") from None
        # The file may have been removed (released) between open and flock: then the lock
        # is on an orphan inode and another process may hold a new file; try again.
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        old = _read_holder(handle)
        if old.get("pid"):
            notice(f"taking over the lock of {what} left by {_describe(old)}, "
                   "which is no longer running")
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.time()}))
            handle.flush()
        except OSError as error:
            raise UserError(f"cannot lock {os_error_text(error, path)}") from None
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked, so nobody sees an empty released file
        handle.close()


@contextlib.contextmanager
def claim(path: str | os.PathLike, what: str, owner: bool = True,
          agree: Callable[[bool], bool] | None = None) -> Iterator[None]:
    """:func:`exclusive_lock` taken by one process of a group (``owner``), failing for all.

    Under torchrun only rank 0 is the ``owner``; ``agree`` (every rank calls it with its
    own success, it returns whether all succeeded: a collective) makes the others fail too
    where rank 0 could not take the lock, rather than wait for it forever.
    """
    with contextlib.ExitStack() as stack:
        error: UserError | None = None
        if owner:
            try:
                stack.enter_context(exclusive_lock(path, what))
            except UserError as caught:
                error = caught
        if agree is not None and not agree(error is None):
            raise error or UserError(f"{what} could not be locked (see rank 0)")
        if error is not None:
            raise error
        yield


def run_lock_path(paths) -> Path:
    """The lock file of a training run (``logs/.<run name>.lock``)."""
    return paths.log.with_name(f".{paths.run_name}.lock")


@contextlib.contextmanager
def claim_run(paths, *, overwrite: bool = False, owner: bool = True,
              agree: Callable[[bool], bool] | None = None) -> Iterator[None]:
    """Hold a training run's lock while the ``with`` block trains it.

    ``paths`` is the run's :class:`~depthscape.core.runs.RunPaths`. Under the lock the
    temporaries an interrupted atomic write left are removed, and with ``overwrite``
    every file of the old run (resume and final checkpoint, log, config, snapshots, layer
    file) is removed before
    the new run writes anything, so an interrupted overwrite cannot resume the old run.
    Under torchrun (``owner`` only on rank 0, ``agree`` a collective, see :func:`claim`)
    the other ranks pass ``agree`` only once rank 0 has removed the old files.
    """
    with contextlib.ExitStack() as stack:
        error: UserError | None = None
        if owner:
            try:
                files = tuple(f for f in (paths.resume, paths.final, paths.log, paths.config,
                                          paths.snapshots, paths.layers) if f is not None)
                for file in files:  # names the filesystem cannot hold fail now, not mid-run
                    check_name_lengths(file)
                stack.enter_context(exclusive_lock(run_lock_path(paths), f"run {paths.run_name}"))
                remove_stale_temporaries(files)
                if overwrite:
                    for file in files:  # the resume checkpoint first: --resume reads it
                        try:
                            file.unlink(missing_ok=True)
                        except OSError as caught:
                            raise UserError(f"cannot remove {file} of the old run: "
                                            f"{caught.strerror or caught}") from None
            except UserError as caught:
                error = caught
        if agree is not None and not agree(error is None):
            raise error or UserError(f"run {paths.run_name} could not be claimed (see rank 0)")
        if error is not None:
            raise error
        yield


def output_lock_path(target: str | os.PathLike) -> Path:
    """The lock file of one output file (``.<name>.lock`` beside it)."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def claim_output(target: str | os.PathLike, what: str, owner: bool = True,
                 agree: Callable[[bool], bool] | None = None) -> Iterator[None]:
    """Hold the lock of one output file (a landscape surface) while the block writes it.

    Under the lock the temporaries an interrupted atomic write of ``target`` left are
    removed. ``owner`` and ``agree`` as in :func:`claim`. A name the filesystem cannot hold
    (with its temporary's suffix) is refused first, before any work.
    """
    check_name_lengths(target)  # every rank: no rank waits for one that refused
    with claim(output_lock_path(target), what, owner, agree):
        if owner:
            remove_stale_temporaries([target])
        yield


@contextlib.contextmanager
def claim_folder(folder: str | os.PathLike, what: str,
                 subfolders: tuple[str, ...] = (), owner: bool = True,
                 agree: Callable[[bool], bool] | None = None) -> Iterator[Path]:
    """Hold the lock of an output folder (plots, tables, sharpness) while a command writes there.

    The folder is created; under its lock the temporaries an interrupted atomic write of
    depthscape left in it (and in the ``subfolders`` the command writes) are removed: only
    depthscape's own, of writers no longer running (see
    :func:`~depthscape.core.atomic.stale_temporary`), never a user's file, never further below.
    Under torchrun only rank 0 is the ``owner`` (it locks and cleans); ``agree`` as in
    :func:`claim`.
    """
    folder = ensure_writable_dir(folder)
    with claim(folder / ".depthscape.lock", what, owner, agree):
        if owner:
            remove_stale_temporaries_in([folder, *(folder / sub for sub in subfolders)])
        yield folder
