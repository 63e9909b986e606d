"""Optimization trajectories (Li et al. 2018, section 7; the original's ``plot_trajectory.py``).

A run trained with ``--snapshot-every`` keeps its weights along the way
(:mod:`depthscape.training.snapshots`). Random directions almost never see that path:
in millions of dimensions two random vectors are nearly orthogonal to it. The path's own
principal directions do:

* :func:`principal_directions`: PCA of the matrix whose rows are ``theta_i - theta_final``
  for every snapshot but the last (parameters with two or more dimensions only, as the
  landscape directions: biases and BatchNorm left out), centred as a PCA centres.
  Computed on the device through the small ``k x k`` Gram matrix (``torch.linalg.eigh``,
  float64) rather than an SVD of the ``k x D`` matrix, so the only ``D``-wide data held
  is the snapshot matrix itself, once (k snapshots x D parameters x 4 bytes: 40 snapshots
  of ResNet-110's 1.7 M weights are 275 MB) plus the two directions.
* :func:`compute_trajectory`: the path projected onto the two unit directions
  (coordinates in weight-space units, the final weights at the origin), then the loss over
  the span the path covers, computed by the landscape engine
  (:func:`depthscape.analysis.landscape.compute_landscape`: the same grid, HDF5 layout,
  and the one grid sweep, :func:`depthscape.analysis.landscape.sweep.sweep`, for resume
  and torchrun sharding) with the principal directions in place of random ones.
  The file also holds ``path_x``, ``path_y``, ``path_steps``, ``explained_variance`` and
  ``explained_variance_ratio``.
* reading and drawing a trajectory file (the contour with the path on it, the explained
  variance in the axis labels) are :mod:`depthscape.analysis.trajectory_plots`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from depthscape.analysis.landscape.storage import SurfaceState
from depthscape.analysis.landscape.surface import LandscapeConfig, surface_of
from depthscape.core.data import Dataset
from depthscape.core.device import get_device
from depthscape.core.errors import UserError
from depthscape.core.runtime import precision_named
from depthscape.core.subject import Subject, subject_from_run
from depthscape.training.snapshots import (
    flatten_parameters,
    read_snapshot_info,
    read_snapshot_rows,
)

#: Columns of the snapshot matrix turned into the float64 Gram matrix at a time.
_CHUNK = 1 << 16
#: The fewest snapshots a trajectory's PCA is computed from (the start, one between, the end).
MIN_SNAPSHOTS = 3


@dataclass(frozen=True)
class TrajectoryConfig:
    """Settings of a trajectory: the contour's grid and data (see LandscapeConfig).

    The grid covers the path's span plus ``margin`` times that span on every side, with
    ``resolution`` points per axis.
    """

    resolution: int = 21
    margin: float = 0.2
    split: str = "test"
    subset: int | None = None
    batch_size: int = 1000
    device: str | None = None
    workers: int | None = None
    data_source: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    model: str | None = None
    precision: str = "fp32"  # of the contour's grid points (core.runtime.PRECISIONS)


@dataclass
class Trajectory:
    """A run's path in the plane of its two principal directions."""

    steps: np.ndarray  # (k,) training step of each snapshot
    path: np.ndarray  # (k, 2) coordinates; the last one (the final weights) is (0, 0)
    explained_variance: np.ndarray  # (2,) variance along each direction
    explained_variance_ratio: np.ndarray  # (2,) its share of the total variance
    directions: list[dict[str, torch.Tensor]]  # two unit directions keyed like the state


def principal_directions(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """PCA of the rows of ``matrix`` (``n x D``, n >= 2), which is centred IN PLACE.

    Returns ``(components, explained_variance, explained_variance_ratio, mean)``: the two
    leading unit principal directions (``2 x D``, float32, orthonormal), the variance of
    the rows along each (``s_i^2 / (n - 1)``, as sklearn's PCA), its share of the total,
    and the row mean that was subtracted. Computed through the ``n x n`` Gram matrix in
    float64, so nothing ``D``-wide is allocated beyond the two components and the mean.
    """
    n, width = matrix.shape
    if n < 2:
        raise ValueError("PCA needs at least two rows")
    mean = matrix.mean(dim=0)
    matrix -= mean
    gram = torch.zeros(n, n, dtype=torch.float64, device=matrix.device)
    for start in range(0, width, _CHUNK):
        block = matrix[:, start:start + _CHUNK].double()
        gram += block @ block.T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    total = float(values.sum())
    count = min(2, n)
    components = torch.zeros(2, width, dtype=torch.float32, device=matrix.device)
    for start in range(0, width, _CHUNK):
        block = matrix[:, start:start + _CHUNK].double()
        components[:count, start:start + _CHUNK] = (vectors[:, :count].T @ block).float()
    for i in range(count):  # unit length, re-normalised after the float32 cast
        if i == 1:  # orthogonal to the first even where s_2 ~ 0 (a straight path): rounding only
            components[1] -= float(components[1].double() @ components[0].double()) * components[0]
        norm = components[i].double().norm()
        if norm > 0:
            components[i] /= norm.float()
    variance = (values[:2] / max(1, n - 1)).cpu().numpy()
    ratio = (values[:2] / total).cpu().numpy() if total > 0 else np.zeros(2)
    if len(variance) < 2:
        variance, ratio = np.pad(variance, (0, 2 - len(variance))), np.pad(ratio, (0, 2 - len(ratio)))
    return components, variance, ratio, mean


def trajectory_from_snapshots(snapshot_file: str | os.PathLike, final: torch.nn.Module,
                              device: torch.device | str = "cpu", final_step: int | None = None
                              ) -> Trajectory:
    """PCA of a run's snapshots around its final weights (``final``); see the module doc.

    The snapshot matrix is read row by row straight into one device tensor and centred in
    place: it is the only ``D``-wide matrix held. ``final_step`` (the checkpoint's
    iteration) is checked against the last snapshot.
    """
    info = read_snapshot_info(snapshot_file)
    steps = np.asarray(info["steps"], dtype=np.int64)
    names = [n for n, p in final.named_parameters() if p.dim() > 1]
    shapes = [tuple(final.get_parameter(n).shape) for n in names]
    if names != info["names"] or shapes != info["shapes"]:
        raise UserError(f"{snapshot_file} holds snapshots of another architecture than the checkpoint")
    if len(steps) < MIN_SNAPSHOTS:
        raise UserError(f"{snapshot_file} holds {len(steps)} snapshot(s); a trajectory needs at "
                        f"least {MIN_SNAPSHOTS} (train with a smaller --snapshot-every)")
    if final_step is not None and int(steps[-1]) != int(final_step):
        raise UserError(f"{snapshot_file} ends at step {int(steps[-1])} but the checkpoint is at "
                        f"{final_step}: the run is unfinished or the snapshots are another run's")
    device = torch.device(device)
    theta = torch.from_numpy(flatten_parameters(final)).to(device)
    last = read_snapshot_rows(snapshot_file, [len(steps) - 1],
                              torch.empty(1, info["width"], device=device))[0]
    if not torch.equal(last, theta):
        raise UserError(f"the last snapshot in {snapshot_file} is not the checkpoint's weights: "
                        "the snapshots belong to another run")
    del last
    rows = len(steps) - 1
    matrix = read_snapshot_rows(snapshot_file, range(rows),
                                torch.empty(rows, info["width"], dtype=torch.float32, device=device))
    return _principal_path(matrix, theta, steps, names, shapes)


def trajectory_from_states(states, final: torch.nn.Module, device: torch.device | str = "cpu"
                           ) -> Trajectory:
    """PCA of a path given as state dicts (keyed like ``final.state_dict()``, in order)
    around ``final``'s weights: the Python API's snapshots. Where the last state is not
    ``final``'s weights, they are the path's end (appended). Steps are the states' indices."""
    device = torch.device(device)
    names = [n for n, p in final.named_parameters() if p.dim() > 1]
    theta = torch.from_numpy(flatten_parameters(final)).to(device)
    rows = []
    for index, state in enumerate(states):
        try:
            row = torch.cat([state[n].detach().to(device, torch.float32).reshape(-1) for n in names])
        except (KeyError, TypeError, AttributeError):
            missing = next((n for n in names if n not in state), "?") if hasattr(state, "keys") else "?"
            raise UserError(f"snapshot {index} is not a state dict of this model (no {missing!r})") \
                from None
        except RuntimeError as error:
            raise UserError(f"snapshot {index} does not fit this model: "
                            f"{str(error).splitlines()[0][:160]}") from None
        if row.numel() != theta.numel():
            raise UserError(f"snapshot {index} holds {row.numel()} weights, the model {theta.numel()}")
        rows.append(row)
    if rows and torch.equal(rows[-1], theta):
        rows.pop()  # the end is the model's weights: the origin
    if len(rows) + 1 < MIN_SNAPSHOTS:
        raise UserError(f"a trajectory needs at least {MIN_SNAPSHOTS} snapshots (the model's own "
                        f"weights ending them), got {len(rows) + 1}")
    shapes = [tuple(final.get_parameter(n).shape) for n in names]
    steps = np.arange(len(rows) + 1, dtype=np.int64)
    return _principal_path(torch.stack(rows), theta, steps, names, shapes)


def _principal_path(matrix: torch.Tensor, theta: torch.Tensor, steps: np.ndarray, names, shapes
                    ) -> Trajectory:
    """The :class:`Trajectory` of the path whose rows are ``matrix`` (every snapshot but the
    last), ending at ``theta``; ``matrix`` is changed in place."""
    device = matrix.device
    matrix -= theta
    components, variance, ratio, mean = principal_directions(matrix)
    # the path: (theta_i - theta_final) . d_j, the centred rows plus the mean's projection
    path = (matrix.double() @ components.double().T + mean.double() @ components.double().T)
    path = torch.cat([path, torch.zeros(1, 2, dtype=torch.float64, device=device)]).cpu().numpy()
    del matrix
    signs = np.where(path[0] < 0, -1.0, 1.0)  # the start on the positive side: a fixed sign
    path = path * signs
    components = components * torch.tensor(signs, dtype=torch.float32, device=device).view(2, 1)
    directions = []
    for component in components.cpu():
        direction, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            direction[name] = component[offset:offset + size].reshape(shape).clone()
            offset += size
        directions.append(direction)
    return Trajectory(steps, path, variance, ratio, directions)


def directions_key(trajectory: Trajectory) -> str:
    """The sha256 of a trajectory's directions (its surface's identity and file name)."""
    digest = hashlib.sha256()
    for direction in trajectory.directions:
        for name in direction:
            digest.update(direction[name].numpy().tobytes())
    return digest.hexdigest()


def trajectory_extra(trajectory: Trajectory) -> dict[str, np.ndarray]:
    """The arrays a trajectory's surface file holds besides the surface."""
    return {"path_x": trajectory.path[:, 0], "path_y": trajectory.path[:, 1],
            "path_steps": trajectory.steps,
            "explained_variance": np.asarray(trajectory.explained_variance, dtype=np.float64),
            "explained_variance_ratio": np.asarray(trajectory.explained_variance_ratio,
                                                   dtype=np.float64)}


def path_span(path: np.ndarray, margin: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """x and y ranges covering ``path`` plus ``margin`` times its extent on every side."""
    spans = []
    extent = float(np.ptp(path, axis=0).max()) or 1.0
    for axis in range(2):
        low, high = float(path[:, axis].min()), float(path[:, axis].max())
        pad = margin * max(high - low, 0.05 * extent)
        spans.append((low - pad, high + pad))
    return spans[0], spans[1]


def default_trajectory_path(home: str | os.PathLike, stem: str, split: str, key: str) -> Path:
    """``<home>/landscapes/<stem>_trajectory_<split>_<key>.h5`` (``home`` and ``stem``: as
    :func:`~depthscape.analysis.landscape.identity.default_surface_path`'s)."""
    return Path(home) / "landscapes" / f"{stem}_trajectory_{split}_{key}.h5"


def _checked(config: TrajectoryConfig | None) -> TrajectoryConfig:
    config = config or TrajectoryConfig()
    if not config.margin >= 0:
        raise UserError(f"margin must be non-negative, got {config.margin}")
    return config


def _contour(trajectory: Trajectory, config: TrajectoryConfig) -> LandscapeConfig:
    """The landscape settings of a trajectory's contour: the path's span and margin."""
    xrange, yrange = path_span(trajectory.path, config.margin)
    return LandscapeConfig(
        resolution=config.resolution, xrange=xrange, yrange=yrange, split=config.split,
        subset=config.subset, batch_size=config.batch_size, device=config.device,
        workers=config.workers, dims=2, precision=config.precision)


def _pca_identity(trajectory: Trajectory, key: str, config: TrajectoryConfig) -> dict:
    return {"direction": "pca", "directions_sha256": key, "snapshots": len(trajectory.steps),
            "margin": config.margin}


def compute_trajectory(checkpoint: str | os.PathLike, config: TrajectoryConfig | None = None,
                       output: str | os.PathLike | None = None, dataset: Dataset | None = None,
                       progress: bool = True, *, overwrite: bool = False) -> Path:
    """Compute (or finish) the trajectory surface of the run of ``checkpoint``; returns the
    file: its :class:`~depthscape.core.subject.Subject` through :func:`subject_trajectory`.

    The snapshots are read from the run's snapshot file (see
    :func:`depthscape.training.snapshots.snapshot_path`); a missing file is a one-line
    UserError, raised before any other work. Resume and sharding are the landscape's.
    """
    config = _checked(config)
    subject = subject_from_run(checkpoint, model=config.model,
                               dataset=dataset if dataset is not None else config.data_source,
                               data_dir=config.data_dir, cache_dir=config.cache_dir)
    return subject_trajectory(subject, config, output=output, progress=progress,
                              overwrite=overwrite)


def subject_trajectory(subject: Subject, config: TrajectoryConfig | None = None,
                       **options) -> Path:
    """Compute (or finish) the trajectory surface of any
    :class:`~depthscape.core.subject.Subject` (a run's, or a model of the user's); returns
    the file: :func:`trajectory_of`'s, whose doc says the rest and the ``options``."""
    return trajectory_of(subject, config, **options)[1]


def trajectory_of(subject: Subject, config: TrajectoryConfig | None = None, *,
                  snapshots: str | os.PathLike | Sequence[Mapping] | None = None,
                  output: str | os.PathLike | None = None,
                  root: str | os.PathLike | None = None, progress: bool = True,
                  overwrite: bool = False, notify: bool = True
                  ) -> tuple[SurfaceState, Path | None]:
    """The trajectory surface of ``subject`` from ``snapshots`` to its weights, computed (or
    finished), with its file.

    ``snapshots``: a snapshot file (default: the file its run kept;
    :func:`trajectory_from_snapshots`) or a list of state dicts
    (:func:`trajectory_from_states`). ``output`` defaults to :func:`default_trajectory_path`
    under the Subject's home (a run's directory) or ``root``; with neither the surface
    stays in memory and its file is None. A contour of another precision is another file.
    A missing snapshot file is one line, before any other work; resume, sharding and
    ``notify`` are the landscape's (:func:`~depthscape.analysis.landscape.surface.surface_of`).
    """
    config = _checked(config)
    if snapshots is not None and not isinstance(snapshots, (str, os.PathLike)):
        trajectory = trajectory_from_states(list(snapshots), subject.model,
                                            get_device(config.device))
        snapshots = None  # no file to record
    else:
        snapshots = _snapshot_file(subject, snapshots)
        trajectory = trajectory_from_snapshots(snapshots, subject.model,
                                               get_device(config.device), subject.step)
    key = directions_key(trajectory)
    home = subject.home if subject.home is not None else root
    if output is None and home is not None:  # another precision's contour: another file
        tag = precision_named(config.precision).tag
        output = default_trajectory_path(home, subject.stem, config.split, key[:10] + tag)
    return surface_of(subject, _contour(trajectory, config), output, progress=progress,
                      overwrite=overwrite, directions=trajectory.directions,
                      direction_identity=_pca_identity(trajectory, key, config),
                      extra=trajectory_extra(trajectory), snapshots=snapshots, notify=notify)


def _snapshot_file(subject: Subject, snapshots: str | os.PathLike | None) -> Path:
    """The snapshot file given, else the one ``subject``'s run kept; missing: one line."""
    given = snapshots is not None
    snapshots = Path(snapshots) if given else subject.snapshots
    if snapshots is None:
        raise UserError(f"{subject.label} has no weight snapshots named: give a snapshot file")
    if not snapshots.is_file():
        raise UserError(f"no snapshot file {snapshots}" if given else
                        f"{subject.label} has no weight snapshots ({snapshots} does not exist): "
                        "train its run with --snapshot-every N")
    return snapshots
