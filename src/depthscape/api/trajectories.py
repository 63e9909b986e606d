"""Optimization paths of any model: :func:`trajectory` (the CLI's ``depthscape trajectory``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from depthscape.analysis.trajectory import TrajectoryConfig, trajectory_of
from depthscape.api._inputs import SPLIT, Data, LossFn, check_model, subject_of
from depthscape.api.surfaces import TrajectorySurface


def trajectory(snapshots: str | os.PathLike | Sequence[Mapping[str, torch.Tensor]],
               model: nn.Module, data: Data, *, resolution: int = 21, margin: float = 0.2,
               loss: LossFn | None = None, device: str | torch.device | None = None,
               precision: str = "fp32", output: str | os.PathLike | None = None,
               progress: bool = True, batch_size: int = 1000, overwrite: bool = False
               ) -> TrajectorySurface:
    """The path the weights took in training, drawn on the loss over its own plane.

    ``snapshots`` are the weights along the way: a list of state dicts (keyed like
    ``model.state_dict()``, in order; the model's own weights end the path, appended where
    the last one is not them), or a snapshot file of ``depthscape train --snapshot-every``
    (``models/<run>.snapshots.h5``, ending at ``model``'s weights). At least three points.
    The path's two principal directions (PCA of the snapshots minus the model's weights,
    parameters with two or more dimensions) span the plane; the loss is computed on a
    ``resolution`` x ``resolution`` grid over the path's extent plus ``margin`` of it on
    every side, by :func:`loss_surface`'s engine (the same resume with ``output``, the same
    BatchNorm folding); the model's weights are the origin. Other arguments as
    :func:`loss_surface`'s. Returns a :class:`TrajectorySurface` (``.points``, ``.steps``,
    ``.explained_variance_ratio`` and a surface's attributes; ``.plot()`` draws the path).

    Example::

        >>> snapshots = []
        >>> for step in range(300):                     # your training loop
        ...     ...
        ...     if step % 30 == 0:
        ...         snapshots.append(copy.deepcopy(model.state_dict()))
        >>> path = ds.trajectory(snapshots, model, data, resolution=21)
        >>> path.plot().savefig("path.png")
    """
    check_model(model)
    if not isinstance(snapshots, (str, os.PathLike)):
        snapshots = [dict(s) for s in snapshots]
    subject = subject_of(model, data, loss)
    config = TrajectoryConfig(resolution=int(resolution), margin=float(margin), split=SPLIT,
                              batch_size=int(batch_size),
                              device=None if device is None else str(device),
                              precision=precision)
    state, path = trajectory_of(subject, config, snapshots=snapshots, output=output,
                                progress=progress, overwrite=overwrite, notify=progress)
    return TrajectorySurface(state, path)
