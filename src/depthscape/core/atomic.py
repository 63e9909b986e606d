"""Every file depthscape creates, created one way: never through a link, never half-written.

A new file is made with ``mkstemp`` beside its target (``O_CREAT | O_EXCL``, which never
follows a link), written through that descriptor where the writer accepts a file object,
and renamed onto the target (``os.replace`` replaces a link planted at the target's name,
it never writes through it). Files opened again by name (the log a run appends to, a lock
file) are opened with ``O_NOFOLLOW`` and must be plain files: a link planted at such a
name is refused with one line naming it (:func:`refuse_link`).

A temporary's name carries depthscape's marker and its writer's pid
(``.NAME.dstmp<PID>.XXXXXXXX.tmp``): only such files, of writers no longer running, are
ever removed as stale (:func:`remove_stale_temporaries`), so a user's ``.notes.tmp`` is
never touched.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import stat
import tempfile
from pathlib import Path

from depthscape.core.errors import UserError

#: In every temporary's name, before the writer's pid: what marks it as depthscape's own.
TEMP_MARKER = "dstmp"
#: Characters a temporary adds to its target's name: ``.`` + ``.dstmp<pid>.`` + 8 + ``.tmp``
#: (a pid has at most 7 digits on Linux); a target's name must leave room for them.
TEMP_EXTRA = 1 + len(TEMP_MARKER) + 2 + 7 + 8 + len(".tmp")
_TEMP_RE = re.compile(rf"^\.(?P<name>.+)\.{TEMP_MARKER}(?P<pid>\d+)\.[^./]+\.tmp$")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def os_error_text(error: OSError, path: str | os.PathLike | None = None) -> str:
    """``path: reason`` of an OSError on one line (``reason`` as the OS words it)."""
    where = path if path is not None else (error.filename or "a file")
    reason = error.strerror or (os.strerror(error.errno) if error.errno else "")
    if not reason:  # h5py's and others' OSErrors carry their reason in the text only
        text = " ".join(str(error).split())
        found = re.search(r"error message = '([^']+)'", text)
        reason = found.group(1) if found else (text[:200] or type(error).__name__)
    return f"{where}: {reason}"


class WriteFailed(UserError):
    """The operating system refused a write (full disk, permissions, name too long): one
    line naming the file and the reason; the file's previous version is left as it was."""


def write_failed(error: OSError, path: str | os.PathLike) -> WriteFailed:
    return WriteFailed(f"cannot write {os_error_text(error, path)}")


def ensure_writable_dir(path: str | os.PathLike, create: bool = True) -> Path:
    """Check ``path`` can hold output files; a one-line UserError otherwise.

    Every command calls this for each of its output locations before any work, so a bad
    path never costs a computation. ``create``: make the folder (and parents) now; else
    only check that the nearest existing ancestor is a writable folder, creating nothing.
    Either way each folder still to be made must have a name the filesystem can hold.
    """
    path = Path(path).expanduser()
    try:
        check_name_lengths(path, extra=0)
        if create:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass
        else:
            existing = path
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
    except OSError as error:
        raise UserError(f"cannot write to output directory {path}: {error.strerror or error}") from None
    return path


def check_name_lengths(path: str | os.PathLike, extra: int = TEMP_EXTRA) -> Path:
    """Refuse (one line) a ``path`` whose file name, or a folder still to be made, is too long.

    The limit is the filesystem's (``PC_NAME_MAX`` of the nearest existing folder); the file
    name must also leave ``extra`` characters for its temporary's or lock's suffix. Call it
    for every output before any work, so no computation ends in "File name too long".
    """
    path = Path(path).expanduser()
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        limit = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    missing = [part for part in path.relative_to(existing).parts] if path != existing else []
    for index, part in enumerate(missing):
        room = extra if index == len(missing) - 1 else 0
        if len(os.fsencode(part)) + room > limit:
            shown = part if len(part) <= 40 else f"{part[:40]}..."
            raise UserError(f"cannot write {path}: the name {shown} is "
                            f"{len(os.fsencode(part))} bytes, and this filesystem holds names of "
                            f"at most {limit}" + (f" (less {room} for depthscape's temporary "
                                                  "file)" if room else "")
                            + ": File name too long")
    return path


def refuse_link(path: str | os.PathLike, what: str = "file") -> None:
    """A one-line UserError where ``path`` is a symbolic link (planted at a name we write)."""
    if os.path.islink(path):
        raise UserError(f"refusing to use the {what} {path}: it is a symbolic link, which "
                        "depthscape never writes through; remove it")


def refuse_special_file(path: str | os.PathLike, what: str = "file") -> None:
    """A one-line UserError where ``path`` exists but is not a regular file or a folder (a
    FIFO, a device such as /dev/zero, a socket): reading one would hang or never end.
    A missing path or a folder is left to the caller's own message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(f"{what} {path} is not a regular file (a FIFO, a device or a socket), "
                        "which depthscape does not read: give a file")


def open_nofollow(path: str | os.PathLike, flags: int, what: str = "file", mode: int = 0o666):
    """``os.open`` of ``path`` that never follows a link there and only opens a plain file.

    Returns the descriptor; a link (or a FIFO, device, folder, or a file with other hard
    links) at ``path`` is a one-line UserError naming it.
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, mode)
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            refuse_link(path, what)
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            kind = "not a plain file" if not stat.S_ISREG(info.st_mode) else (
                f"a file with {info.st_nlink} hard links")
            raise UserError(f"refusing to use the {what} {path}: it is {kind}, not one "
                            "depthscape wrote; remove it")
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_for_append(path: str | os.PathLike, what: str = "file", newline: str | None = None):
    """``path`` (which must exist) opened for appending text, never through a link."""
    try:
        fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND, what)
    except OSError as error:
        raise write_failed(error, path) from None
    return os.fdopen(fd, "a", newline=newline)


def _writer_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we can judge: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's live process
    return True


def stale_temporary(path: str | os.PathLike, target_name: str | None = None) -> bool:
    """Whether ``path`` is a temporary depthscape wrote (of ``target_name``, where given)
    whose writer is no longer running: the only files ever removed as stale."""
    path = Path(path)
    match = _TEMP_RE.match(path.name)
    if match is None or (target_name is not None and match["name"] != target_name):
        return False
    if int(match["pid"]) == os.getpid() or _writer_alive(int(match["pid"])):
        return False
    return path.is_file() or path.is_symlink()


def remove_stale_temporaries(targets) -> list[Path]:
    """Remove the temporaries an interrupted atomic write of ``targets`` left.

    Only depthscape's own (marker and pid in the name), of writers no longer running.
    Call it only while holding the lock of the output these belong to (see
    :mod:`depthscape.core.locking`). Returns what was removed.
    """
    removed = []
    for target in targets:
        target = Path(target)
        if not target.parent.is_dir():
            continue
        for tmp in target.parent.glob(f".{glob_escape(target.name)}.{TEMP_MARKER}*.tmp"):
            if stale_temporary(tmp, target.name):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def remove_stale_temporaries_in(folders) -> list[Path]:
    """Remove depthscape's stale temporaries (see :func:`stale_temporary`) in each folder.

    Only in the folders named, never below them: a command names each sub-folder it writes.
    """
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir() or folder.is_symlink():
            continue
        for tmp in folder.glob(f".*.{TEMP_MARKER}*.tmp"):
            if stale_temporary(tmp):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters quoted."""
    return glob.escape(name)


def _new_temporary(target: Path) -> tuple[int, Path]:
    """A new file beside ``target`` (``O_EXCL``: never through a link), as fd and path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent,
                               prefix=f".{target.name}.{TEMP_MARKER}{os.getpid()}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    return fd, Path(tmp)


def _install(fd: int, tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``, provided ``tmp`` is still the file ``fd`` made."""
    mine, now = os.fstat(fd), os.lstat(tmp)
    if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino) or not stat.S_ISREG(now.st_mode):
        raise UserError(f"the temporary file {tmp} was replaced by another process while "
                        f"depthscape wrote it; {target} is left as it was")
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "wb", **kwargs):
    """Yield a new temporary file beside ``target``, opened (``mode``) on its own descriptor;
    on success rename it onto ``target``. Nothing is written through a link.

    An OSError of the write (a full disk, a folder made read-only) is a one-line
    :class:`WriteFailed` naming ``target``; ``target`` is left as it was.
    """
    with _installed_temporary(target) as (fd, _):
        with os.fdopen(os.dup(fd), mode, **kwargs) as handle:
            yield handle


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield the path of a new temporary file beside ``target``; on success rename it on.

    For writers that take only a path (h5py): the temporary is made without following a
    link and renamed only if it is still that file. Prefer :func:`atomic_open`.
    """
    with _installed_temporary(target) as (_, tmp):
        yield tmp


@contextlib.contextmanager
def _installed_temporary(target: str | os.PathLike):
    """Yield ``(fd, path)`` of a new temporary beside ``target`` (made without following a
    link); on success install it as ``target``, on any failure remove it. An OSError on
    the way is :class:`WriteFailed` naming ``target``; ``target`` is left as it was."""
    target = Path(target)
    try:
        fd, tmp = _new_temporary(target)
    except OSError as error:
        raise write_failed(error, target) from None
    try:
        yield fd, tmp
        _install(fd, tmp, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise write_failed(error, target) from None
        raise
    finally:
        os.close(fd)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_open(target, "w") as handle:
        handle.write(text)


def save_figure_file(fig, target: str | os.PathLike, dpi: int = 120, **options) -> Path:
    """Save a matplotlib figure as ``target`` atomically (its suffix picks the format).

    Never ``fig.savefig(target)``: matplotlib opens a name with ``open(..., "wb")``, which
    writes through a link planted there. The figure is written into a new temporary
    (:func:`atomic_open`) and renamed on. ``options`` go to ``savefig``.
    """
    target = Path(target)
    fmt = target.suffix[1:].lower()
    if not fmt:
        raise ValueError(f"{target}: a figure's file name needs a suffix naming its format")
    with atomic_open(target, "wb") as handle:
        fig.savefig(handle, format=fmt, dpi=dpi, **options)
    return target


def save_figure(fig, stem: str | os.PathLike, formats, dpi: int = 120) -> list[Path]:
    """Save a matplotlib figure as ``stem.<fmt>`` for each format, each file atomically."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    return [save_figure_file(fig, stem.with_name(f"{stem.name}.{fmt}"), dpi=dpi,
                             bbox_inches="tight") for fmt in formats]
