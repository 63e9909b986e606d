"""Where a run's files go: the spec's names under ``logs/`` and ``models/``.

For seed 0 on CIFAR-10 the names are exactly the spec's: ``logs/resnet56_log.csv``,
``models/resnet-56_cifar10.pth``, ``logs/plainnet110_log.csv``,
``models/plainnet-110.cifar10.pth``, ``logs/cnn_log.csv``, ``models/cnn_cifar10.pth``.
Other seeds add ``_seed{k}``; other datasets replace ``cifar10``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from depthscape.models import canonical_name, model_depth, model_family


@dataclass(frozen=True)
class RunPaths:
    """Every file one training run writes."""

    run_name: str  # e.g. "resnet56", "plainnet110_seed2"
    log: Path  # CSV training log
    config: Path  # JSON settings of the run (also inside each checkpoint)
    final: Path  # final weights + config
    resume: Path  # periodic resumable checkpoint (removed once the run finishes)


def run_paths(out_dir: str | os.PathLike, model: str, seed: int = 0,
              dataset: str = "cifar10") -> RunPaths:
    """The files of the run of ``model`` with ``seed`` on ``dataset`` under ``out_dir``."""
    out = Path(out_dir)
    name = canonical_name(model)
    family, depth = model_family(name), model_depth(name)
    data_tag = "" if dataset == "cifar10" else f"_{dataset}"
    seed_tag = f"_seed{seed}" if seed else ""
    if family == "cnn":
        base, final = "cnn", f"cnn_{dataset}"
    elif family == "resnet":
        base, final = f"resnet{depth}", f"resnet-{depth}_{dataset}"
    else:
        base, final = f"plainnet{depth}", f"plainnet-{depth}.{dataset}"
    run_name = f"{base}{data_tag}{seed_tag}"
    final_stem = f"{final}{seed_tag}"
    return RunPaths(
        run_name=run_name,
        log=out / "logs" / f"{run_name}_log.csv",
        config=out / "logs" / f"{run_name}_config.json",
        final=out / "models" / f"{final_stem}.pth",
        resume=out / "models" / f"{final_stem}.resume.pth",
    )
