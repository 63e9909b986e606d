"""Two study folders compared file for file, up to what may differ between two runs of the
same study: wall-clock times, file times, the folders' own paths and the Slurm launcher's
bookkeeping (``slurm/``). Used by the Slurm tests and benchmarks/bench_slurm.py."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py
import numpy as np
import torch

#: keys and columns that hold times (wall-clock seconds, dates, file times) or hosts
TIMELY = re.compile(r"elapsed|time|mtime|since|finished|date|host|_s$|seconds", re.I)
#: files that only say how long the work took (or embed such files): not compared
#: plotly's random id of each page's figure
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SKIPPED = re.compile(r"^(slurm/|timings\.json$|report\.(md|html)$|tables/table2\.md$)|\.pdf$")


def _clean(value, roots: tuple[str, ...]):
    if isinstance(value, dict):
        return {k: _clean(v, roots) for k, v in value.items() if not TIMELY.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [_clean(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<OUT>")
        return UUID.sub("<UUID>", value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().tobytes() + str(value.dtype).encode()
    if isinstance(value, np.ndarray):
        return value.tobytes() + str(value.dtype).encode()
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def _csv(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not TIMELY.search(str(k))}
            for row in csv.DictReader(path.open())]


def _h5(path: Path, roots) -> dict:
    found = {}

    def visit(name, item):
        attrs = _clean(dict(item.attrs), roots)
        data = item[()] if isinstance(item, h5py.Dataset) else None
        found[name] = (attrs, None if data is None else _clean(np.asarray(data), roots))

    with h5py.File(path, "r") as handle:
        found["/"] = _clean(dict(handle.attrs), roots)
        handle.visititems(visit)
    return found


def _content(path: Path, roots: tuple[str, ...]):
    suffix = path.suffix
    if suffix == ".json":
        return _clean(json.loads(path.read_text()), roots)
    if suffix == ".csv":
        return _clean(_csv(path), roots)
    if suffix == ".h5":
        return _h5(path, roots)
    if suffix == ".pth":
        return _clean(torch.load(path, map_location="cpu", weights_only=False), roots)
    if suffix in (".md", ".html", ".txt"):
        return _clean(path.read_text(), roots)
    return path.read_bytes()


def study_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not SKIPPED.search(str(p.relative_to(folder))))


def study_differences(a: Path, b: Path) -> list[str]:
    """What differs between the study folders ``a`` and ``b`` (empty: the same study)."""
    a, b = Path(a), Path(b)
    roots = (str(a), str(b))
    files_a, files_b = study_files(a), study_files(b)
    found = [f"only in {a}: {n}" for n in sorted(set(files_a) - set(files_b))]
    found += [f"only in {b}: {n}" for n in sorted(set(files_b) - set(files_a))]
    for name in sorted(set(files_a) & set(files_b)):
        if _content(a / name, roots) != _content(b / name, roots):
            found.append(f"differs: {name}")
    return found
