"""CSV training logs: header once, one flushed row per call (the spec's logutils)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from depthscape.core.atomic import atomic_path

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
    with atomic_path(filepath) as tmp, open(tmp, "w", newline="") as handle:
        csv.writer(handle).writerow(header)


def append_log(filepath: str | os.PathLike, row: Iterable) -> None:
    """Append one row to ``filepath`` and flush it to disk."""
    with open(filepath, "a", newline="") as handle:
        csv.writer(handle).writerow([_format(v) for v in row])
        handle.flush()
        os.fsync(handle.fileno())


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_log(filepath: str | os.PathLike) -> list[dict[str, float]]:
    """Read a log back as a list of rows, numbers as floats (blank cells as NaN)."""
    rows = []
    with open(filepath, newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append({k: float(v) if v not in ("", None) else math.nan for k, v in row.items()})
    return rows


def truncate_log(filepath: str | os.PathLike, last_iteration: int) -> None:
    """Drop the rows after ``last_iteration`` (rows a killed run wrote past its checkpoint)."""
    path = Path(filepath)
    with open(path, newline="") as handle:
        lines = list(csv.reader(handle))
    header, rows = lines[0], lines[1:]
    column = header.index("iteration")
    kept = [r for r in rows if r and int(float(r[column])) <= last_iteration]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(kept)
