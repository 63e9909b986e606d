"""A training run on disk: where its files go, and finding the runs under an output root.

Where a run's files go: the spec's names under ``logs/`` and ``models/``.

For seed 0 on CIFAR-10 the names are exactly the spec's: ``logs/resnet56_log.csv``,
``models/resnet-56_cifar10.pth``, ``logs/plainnet110_log.csv``,
``models/plainnet-110.cifar10.pth``, ``logs/cnn_log.csv``, ``models/cnn_cifar10.pth``.
Other seeds add ``_seed{k}``; other datasets replace ``cifar10``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from depthscape.core.datasets import DEFAULT_DATASET
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name, model_depth, model_family, model_info


@dataclass(frozen=True)
class RunPaths:
    """Every file one training run writes."""

    run_name: str  # e.g. "resnet56", "plainnet110_seed2"
    log: Path  # CSV training log
    config: Path  # JSON settings of the run (also inside each checkpoint)
    final: Path  # final weights + config
    resume: Path  # periodic resumable checkpoint (removed once the run finishes)
    snapshots: Path  # weight snapshots for trajectories (train --snapshot-every)
    layers: Path | None = None  # per-layer gradient flow, one row per layer per log row


def run_paths(out_dir: str | os.PathLike, model: str, seed: int = 0,
              dataset: str = DEFAULT_DATASET) -> RunPaths:
    """The files of the run of ``model`` with ``seed`` on ``dataset`` under ``out_dir``."""
    out = Path(out_dir)
    info = model_info(model)  # the spec's file names come with the model's registry entry
    data_tag = "" if dataset == DEFAULT_DATASET else f"_{dataset}"
    seed_tag = f"_seed{seed}" if seed else ""
    run_name = f"{info.run_name()}{data_tag}{seed_tag}"
    final_stem = f"{info.checkpoint_name(dataset)}{seed_tag}"
    return RunPaths(
        run_name=run_name,
        log=out / "logs" / f"{run_name}_log.csv",
        config=out / "logs" / f"{run_name}_config.json",
        final=out / "models" / f"{final_stem}.pth",
        resume=out / "models" / f"{final_stem}.resume.pth",
        snapshots=snapshot_path(out / "models" / f"{final_stem}.pth"),
        layers=out / "logs" / f"{run_name}_layers.csv",
    )


def run_home(checkpoint: str | os.PathLike) -> Path:
    """The run directory of a checkpoint: the folder above ``models/`` where it lies in one
    (the layout ``depthscape train`` writes), else the checkpoint's own folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "models" else checkpoint.parent


def snapshot_path(checkpoint: str | os.PathLike) -> Path:
    """The snapshot file of the run whose final checkpoint is ``checkpoint``."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name[:-len(checkpoint.suffix)] if checkpoint.suffix else checkpoint.name
    return checkpoint.with_name(f"{stem}.snapshots.h5")


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
        return canonical_name(base), seed, dataset or DEFAULT_DATASET
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
    return sorted(found.values(), key=lambda r: (*model_info(r.model).sort_key, r.seed, r.dataset))
