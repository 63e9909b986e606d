"""Finding the training runs under an output root, from their logs and config files."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from depthscape.errors import UserError
from depthscape.models import canonical_name, model_depth, model_family
from depthscape.runs import RunPaths, run_paths

_SEED_RE = re.compile(r"_seed(\d+)$")


@dataclass(frozen=True)
class RunInfo:
    """One training run found on disk."""

    model: str  # canonical, e.g. "plain56"
    seed: int
    dataset: str
    paths: RunPaths

    @property
    def family(self) -> str:
        return model_family(self.model)

    @property
    def depth(self) -> int | None:
        return model_depth(self.model)


def _from_config(config: Path) -> tuple[str, int, str] | None:
    try:
        data = json.loads(config.read_text())
        return (canonical_name(data["model"]), int(data["train"]["seed"]),
                str(data["dataset"]["name"]))
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None


def _from_name(run_name: str) -> tuple[str, int, str] | None:
    seed = 0
    match = _SEED_RE.search(run_name)
    if match:
        seed, run_name = int(match.group(1)), run_name[:match.start()]
    base, _, dataset = run_name.partition("_")
    try:
        return canonical_name(base), seed, dataset or "cifar10"
    except UserError:
        return None


def find_runs(run_dir: str | os.PathLike) -> list[RunInfo]:
    """Every run with a log under ``<run_dir>/logs/``, sorted by family, depth and seed."""
    logs = Path(run_dir) / "logs"
    found: dict[tuple[str, int, str], RunInfo] = {}
    if not logs.is_dir():
        return []
    for log in sorted(logs.glob("*_log.csv")):
        run_name = log.name.removesuffix("_log.csv")
        key = _from_config(logs / f"{run_name}_config.json") or _from_name(run_name)
        if key is None:
            continue
        paths = run_paths(run_dir, *key)
        if paths.log == log:
            found[key] = RunInfo(key[0], key[1], key[2], paths)
    order = {"cnn": 0, "resnet": 1, "plain": 2}
    return sorted(found.values(), key=lambda r: (order[r.family], r.depth or 0, r.seed, r.dataset))
