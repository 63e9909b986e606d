"""What decides a grid's values, and so its identity: the fingerprints of the weights and
the data, the evaluation subset's seed, the grid's coordinates, the directions and the
surface's file name.

A surface (and a curvature map in its file) stores these; a rerun whose identity differs
is another surface (another default file name, or a refused resume), never a mix.
``config`` below is a :class:`~depthscape.analysis.landscape.surface.LandscapeConfig`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from depthscape.analysis.landscape.directions import interpolation_direction, random_directions
from depthscape.core.data import Split
from depthscape.core.errors import UserError

#: Seed of the fixed random evaluation subset (kept apart from the direction seed, so
#: surfaces drawn with different directions are measured on the same images).
SUBSET_SEED = 0


def grid_coordinates(span: tuple[float, float], resolution: int) -> np.ndarray:
    """``resolution`` evenly spaced values over ``span``, with an exact 0 where the grid has one."""
    values = np.linspace(span[0], span[1], resolution)
    values[np.abs(values) < 1e-12 * (span[1] - span[0])] = 0.0
    return values


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def split_fingerprint(split: Split) -> str:
    """SHA-256 of a split's images and labels."""
    digest = hashlib.sha256()
    digest.update(f"{tuple(split.images.shape)}|{split.images.dtype}|".encode())
    digest.update(split.images.contiguous().numpy().tobytes())
    digest.update(split.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def grid_identity(config, split: Split) -> dict:
    """The grid and data part of a surface's identity (every surface, CLI or API, has it)."""
    return {
        "dims": config.dims,
        "resolution": config.resolution,
        "xrange": list(config.xrange),
        "yrange": list(config.yrange) if config.dims == 2 else None,
        "split": config.split,
        "subset": config.subset,
        "samples": len(split),
        "data_sha256": split_fingerprint(split),
    }


def settings_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def default_surface_path(home: str | os.PathLike, stem: str, config, identity: dict,
                         line: bool | None = None) -> Path:
    """``<home>/landscapes/<stem>_<split>_<2d|1d|line>_<settings hash>.h5``.

    ``home`` is a run's directory (:func:`~depthscape.core.runs.run_home`) or the folder a
    model's surfaces go to, ``stem`` its files' stem (a
    :class:`~depthscape.core.subject.Subject`'s); ``line``: a line to a target (default:
    where ``config`` names one). The hash keeps surfaces with different settings apart;
    the settings themselves are stored inside the file.
    """
    line = bool(config.target) if line is None else line
    kind = "line" if line else f"{config.dims}d"
    return Path(home) / "landscapes" / f"{stem}_{config.split}_{kind}_{settings_hash(identity)}.h5"


def model_directions(model: torch.nn.Module, state: dict, config,
                     directions, direction_identity: dict | None, target_state: dict | None
                     ) -> tuple[dict, Callable[[], list[dict[str, torch.Tensor]]]]:
    """The direction part of a model surface's identity, and the function that makes its
    directions (a target of another architecture, or a given direction with an entry the
    model lacks, is refused here, before any work)."""
    if target_state is not None:
        kind = {"direction": "interpolation",
                "target_weights_sha256": state_fingerprint(target_state),
                "norm": None, "seed": None}

        def make():
            return [interpolation_direction(state, target_state)]

        make()  # another architecture is refused before any work
        return kind, make
    if directions is not None:
        given = [{k: v.detach().to("cpu", torch.float32) for k, v in d.items()}
                 for d in directions]
        if len(given) != config.dims:
            raise UserError(f"{len(given)} directions given for dims={config.dims}")
        unknown = sorted({k for d in given for k in d} - set(state))
        if unknown:
            raise UserError(f"a direction has an entry the model does not: {unknown[0]!r}")
        digest = hashlib.sha256()
        for direction in given:
            digest.update(state_fingerprint(direction).encode())
        kind = {"direction": "given", "target_weights_sha256": None, "norm": None,
                "seed": None, "directions_sha256": digest.hexdigest(),
                **(direction_identity or {})}
        return kind, lambda: given
    kind = {"direction": "random", "target_weights_sha256": None, "norm": config.norm,
            "seed": config.seed}
    return kind, lambda: random_directions(model, config.dims, config.seed, config.norm)
