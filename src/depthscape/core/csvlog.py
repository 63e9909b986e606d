"""CSV training logs: header once, one flushed row per call (the spec's logutils)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from depthscape.core.atomic import atomic_open, open_for_append, write_failed
from depthscape.core.errors import UserError

#: Columns of every training log, CNN (one row per epoch) and ResNet/PlainNet (one row per
#: ``log_every`` iterations) alike. Accuracy and error are in percent; test columns hold the
#: latest evaluation (blank before the first one); elapsed_s is training wall-clock seconds.
LOG_COLUMNS = (
    "iteration", "epoch", "lr",
    "train_loss", "train_acc", "train_err",
    "test_loss", "test_acc", "test_err",
    "elapsed_s",
)


def init_log_file(filepath: str | os.PathLike, header: Sequence[str]) -> None:
    """Create ``filepath`` (and its parent folders) holding only the header row."""
    with atomic_open(filepath, "w", newline="") as handle:
        csv.writer(handle).writerow(header)


def append_log(filepath: str | os.PathLike, row: Iterable) -> None:
    """Append one row to ``filepath`` and flush it to disk (never through a link there)."""
    try:
        with open_for_append(filepath, "training log", newline="") as handle:
            csv.writer(handle).writerow([_format(v) for v in row])
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise write_failed(error, filepath) from None


def append_rows(filepath: str | os.PathLike, rows: Iterable[Iterable]) -> None:
    """Append several rows to ``filepath`` at once, flushed to disk once."""
    try:
        with open_for_append(filepath, "training log", newline="") as handle:
            csv.writer(handle).writerows([_format(v) for v in row] for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise write_failed(error, filepath) from None


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class DamagedLog(UserError):
    """A CSV log that is not what depthscape wrote: one line naming the file and the row."""


#: What to do about a damaged log: reading it (curves), or resuming the run it belongs to.
_READ_HINT = "restore it from a backup, or move it away"
_RESUME_HINT = "restore it from a backup, or rerun with --overwrite instead of --resume to start over"


def _damaged(path: Path, where: str, what: str, hint: str) -> DamagedLog:
    return DamagedLog(f"the training log {path} is damaged ({where}: {what}); {hint}")


def _parse(filepath: str | os.PathLike, hint: str, text: Sequence[str] = (),
           repeats: bool = False) -> tuple[list[str], list[list[str]], list[dict[str, float]]]:
    """Header, raw rows and numeric rows of a log; a DamagedLog naming the row where it is not one.

    Checked: a header naming an ``iteration`` column, every row as many cells as the
    header, every cell a number or blank (but the ``text`` columns, kept as read), and
    iterations whole and strictly increasing (non-decreasing where ``repeats``: a layer
    file has one row per layer at each iteration).
    """
    path = Path(filepath)
    try:
        with open(path, newline="") as handle:
            lines = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise _damaged(path, "not a CSV file", str(error).splitlines()[0], hint) from None
    if not lines or "iteration" not in lines[0]:
        raise DamagedLog(f"{path} is not a depthscape training log: its first line has no "
                         f"'iteration' column; {hint}")
    header, raw = lines[0], []
    rows: list[dict[str, float]] = []
    column, previous = header.index("iteration"), None
    for number, cells in enumerate(lines[1:], start=2):
        if not cells:
            continue  # a blank line carries no row
        if len(cells) != len(header):
            raise _damaged(path, f"row on line {number}",
                           f"{len(cells)} cells where the header has {len(header)}", hint)
        values = {}
        for name, cell in zip(header, cells):
            if name in text:
                values[name] = cell
                continue
            try:
                values[name] = float(cell) if cell != "" else math.nan
            except ValueError:
                raise _damaged(path, f"row on line {number}",
                               f"{name} is {cell!r}, not a number", hint) from None
        iteration = values["iteration"]
        if not (math.isfinite(iteration) and iteration == int(iteration)) or (
                previous is not None and (iteration < previous if repeats
                                          else iteration <= previous)):
            raise _damaged(path, f"row on line {number}",
                           f"iteration {cells[column]!r} does not follow {previous:g}"
                           if previous is not None else f"iteration {cells[column]!r}", hint)
        previous = iteration
        raw.append(cells)
        rows.append(values)
    return header, raw, rows


def read_log(filepath: str | os.PathLike, text: Sequence[str] = (),
             repeats: bool = False) -> list[dict[str, float]]:
    """Read a log back as a list of rows, numbers as floats (blank cells as NaN), the
    ``text`` columns as strings; ``repeats``: several rows per iteration (a layer file).

    A damaged log (not what depthscape wrote) is a :class:`DamagedLog` naming the row.
    """
    return _parse(filepath, _READ_HINT, text, repeats)[2]


def truncate_log(filepath: str | os.PathLike, last_iteration: int,
                 expected_rows: int | None = None, text: Sequence[str] = (),
                 repeats: bool = False) -> int:
    """Drop the rows after ``last_iteration`` (rows a killed run wrote past its checkpoint).

    A damaged log is refused (:class:`DamagedLog`), never repaired by dropping rows; so is
    one that does not hold the ``expected_rows`` rows up to ``last_iteration`` the
    checkpoint recorded (rows were removed: resuming would lose them for good). Returns
    how many rows are kept.
    """
    path = Path(filepath)
    header, raw, rows = _parse(path, _RESUME_HINT, text, repeats)
    kept = [cells for cells, row in zip(raw, rows) if row["iteration"] <= last_iteration]
    if expected_rows is not None and len(kept) != expected_rows:
        raise DamagedLog(f"the training log {path} holds {len(kept)} row(s) up to iteration "
                         f"{last_iteration}, but the checkpoint was saved after {expected_rows}: "
                         f"rows were removed or added; {_RESUME_HINT}")
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(kept)
    return len(kept)
