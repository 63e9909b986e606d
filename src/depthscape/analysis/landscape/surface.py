"""Loss surfaces of a trained run: the grid, resume by rerunning, torchrun sharding.

``compute_landscape(checkpoint, LandscapeConfig(...))`` evaluates the mean cross-entropy
loss and the accuracy at every point ``theta* + a d1 + b d2`` of a grid (or along one line)
and stores them in an HDF5 file (see :mod:`depthscape.analysis.landscape.storage`). BatchNorm runs
in eval mode with the trained running statistics at every point.

* Resume: the file is rewritten atomically every few seconds while points finish; running
  the same call again computes only the missing points, and the finished file holds the
  same values as an uninterrupted run (every point is computed by the same deterministic
  code, whichever run or rank computes it).
* Settings: everything that decides the values (weights, data, directions, grid, split)
  is stored in the file. A rerun with other settings writes to another file (the default
  file name carries a hash of them) or, where the file is named explicitly, is refused.
* Sharding: under ``torchrun --nproc_per_node=N`` the missing points are dealt out to the
  ranks (gloo on CPU, NCCL on GPU); rank 0 gathers the values and writes the file.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import depthscape
from depthscape.analysis.landscape.directions import NORMS
from depthscape.analysis.landscape.identity import (  # noqa: F401  (re-exported)
    SUBSET_SEED,
    default_surface_path,
    grid_coordinates,
    grid_identity,
    model_directions,
    settings_hash,
    split_fingerprint,
    state_fingerprint,
)
from depthscape.analysis.landscape.points import PointEvaluator, PointPool, effective_batch_size
from depthscape.analysis.landscape.storage import (
    SurfaceState,
    identity_difference,
    new_state,
    read_state,
    write_surface,
)
from depthscape.analysis.landscape.sweep import default_workers, sweep
from depthscape.core.data import Dataset, Split
from depthscape.core.distributed import DistContext, setup
from depthscape.core.errors import UserError
from depthscape.core.errors import notice as print_notice
from depthscape.core.limits import require_fits
from depthscape.core.locking import claim_output
from depthscape.core.plugins import copy_model
from depthscape.core.runtime import PRECISIONS, precision_named, resolve_precision
from depthscape.core.subject import Subject, subject_from_run
from depthscape.core.trained import load_trained_run


@dataclass(frozen=True)
class LandscapeConfig:
    """Settings of one loss surface (or 1-D curve).

    ``resolution`` points per axis over ``xrange`` (and ``yrange`` for ``dims=2``) on the
    ``split`` (``test`` or ``train``), optionally a fixed random ``subset`` of it. Directions
    are drawn with ``seed`` and normalised per ``norm`` (``filter`` or ``layer``);
    ``target`` (a second checkpoint, 1-D only) replaces the random direction by the line to
    it, ``x = 0`` at the checkpoint and ``x = 1`` at the target. ``data_source``,
    ``data_dir`` and ``cache_dir`` override where the run's data is read from (default:
    as stored in the checkpoint); ``model`` names the architecture of a bare state dict.
    ``device``, ``compile`` and ``workers`` (points evaluated at once, one thread each;
    default: one per CPU thread on the CPU, 1 on a GPU) change the speed, not the values.
    ``batch_size`` changes the values' last digits (a convolution's arithmetic depends on
    the batch's shape), so the batch used is part of the surface's identity.
    """

    resolution: int = 21
    xrange: tuple[float, float] = (-1.0, 1.0)
    yrange: tuple[float, float] = (-1.0, 1.0)
    split: str = "test"
    subset: int | None = None
    seed: int = 0
    norm: str = "filter"
    batch_size: int = 1000
    device: str | None = None
    dims: int = 2
    compile: bool = False
    target: str | None = None
    workers: int | None = None
    data_source: str | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    model: str | None = None
    precision: str = "fp32"  # one of core.runtime.PRECISIONS (fp32: exact, TF32 off)

    def validate(self) -> "LandscapeConfig":
        """Check the settings; a bad one is a one-line UserError. Returns self normalised."""
        if self.resolution < 2:
            raise UserError(f"resolution must be at least 2 points per axis, got {self.resolution}")
        if self.dims not in (1, 2):
            raise UserError(f"dims must be 1 or 2, got {self.dims}")
        for name, span in (("xrange", self.xrange), ("yrange", self.yrange)):
            if len(span) != 2 or not all(math.isfinite(float(v)) for v in span) \
                    or not float(span[0]) < float(span[1]):
                raise UserError(f"{name} must be two finite numbers MIN < MAX, got {tuple(span)}")
        if self.split not in ("train", "test"):
            raise UserError(f"split must be train or test, got {self.split!r}")
        if self.subset is not None and self.subset <= 0:
            raise UserError(f"subset must be a positive number of samples, got {self.subset}")
        if self.norm not in NORMS:
            raise UserError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.workers is not None and self.workers <= 0:
            raise UserError(f"workers must be positive, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, "
                            f"got {self.precision!r}")
        if self.batch_size <= 0:
            raise UserError(f"batch size must be positive, got {self.batch_size}")
        if self.target is not None and self.dims != 1:
            raise UserError("a target checkpoint gives a 1-D line: use dims=1 with it")
        # loss (float64), accuracy (float64) and done (bool) per point, held in memory at once
        points = self.resolution ** self.dims
        require_fits(points * 17, f"a grid of {self.resolution}^{self.dims} = {points} points")
        return replace(self, xrange=(float(self.xrange[0]), float(self.xrange[1])),
                       yrange=(float(self.yrange[0]), float(self.yrange[1])))


def compute_landscape(checkpoint: str | os.PathLike, config: LandscapeConfig | None = None,
                      output: str | os.PathLike | None = None, dataset: Dataset | None = None,
                      progress: bool = True, *, overwrite: bool = False,
                      save_every: float = 5.0, directions: list[dict[str, torch.Tensor]] | None = None,
                      direction_identity: dict | None = None,
                      extra: dict[str, np.ndarray] | None = None) -> Path:
    """Compute (or finish) the loss surface of ``checkpoint``; returns the HDF5 file: the
    run's Subject (``dataset``: one loaded already, else the run's, see
    :class:`LandscapeConfig`) through :func:`subject_surface`, whose doc says the rest."""
    config = (config or LandscapeConfig()).validate()
    subject = subject_from_run(checkpoint, model=config.model,  # the one loader and its rule
                               dataset=dataset if dataset is not None else config.data_source,
                               data_dir=config.data_dir, cache_dir=config.cache_dir)
    return subject_surface(subject, config, output, progress=progress, overwrite=overwrite,
                           save_every=save_every, directions=directions,
                           direction_identity=direction_identity, extra=extra)


def subject_surface(subject: Subject, config: LandscapeConfig | None = None,
                    output: str | os.PathLike | None = None, **options) -> Path:
    """Compute (or finish) the loss surface of any :class:`~depthscape.core.subject.Subject`
    (a run's, or a model of the user's); returns the HDF5 file: :func:`surface_of`'s, whose
    doc says the rest and the ``options``."""
    return surface_of(subject, config, output, **options)[1]


def surface_of(subject: Subject, config: LandscapeConfig | None = None,
               output: str | os.PathLike | None = None, *,
               root: str | os.PathLike | None = None, progress: bool = True,
               overwrite: bool = False, save_every: float = 5.0,
               directions: list[dict[str, torch.Tensor]] | None = None,
               direction_identity: dict | None = None,
               extra: dict[str, np.ndarray] | None = None,
               snapshots: Path | None = None, target: dict | None = None,
               target_name: str | None = None, notify: bool = True
               ) -> tuple[SurfaceState, Path | None]:
    """The loss surface of ``subject``: computed (or finished), with its file.

    ``output`` defaults to ``<home>/landscapes/<stem>_<split>_<2d|1d|line>_<settings
    hash>.h5``, the home the Subject's (a run's directory) or ``root``; with neither (a
    Python API model, no file named) the surface stays in memory and its file is None. A
    file with the same settings is continued (only missing points are computed), one with
    other settings refused unless ``overwrite``; it is rewritten atomically at most every
    ``save_every`` seconds and at the end. Under torchrun every rank calls this; rank 0
    writes the file. ``directions`` (keyed like the model's state) replace the random ones,
    e.g. a trajectory's, ``direction_identity`` says what they are (stored with the
    settings: a rerun with other directions must not resume this file), ``extra`` holds
    datasets stored alongside (:mod:`~depthscape.analysis.landscape.storage`) and
    ``snapshots`` the snapshot file they came from (recorded). ``target`` (a state of the
    same model, recorded as ``target_name``) is the end of a 1-D line, as
    ``config.target`` (a checkpoint) is. ``notify``: rank 0 prints a notice where the
    precision asked cannot act on the device.
    """
    config = (config or LandscapeConfig()).validate()
    dist = setup(config.device)
    try:
        config = _resolved(config, dist, notify=notify)  # the precision that runs here
        given = _Given(directions, direction_identity, extra, snapshots, target, target_name)
        # issue 11: the surface's lock (taken in fill_surface) lives as long as this call
        with contextlib.ExitStack() as held:
            return _compute(subject, config, output, root, progress, overwrite, save_every,
                            dist, held, given)
    finally:
        dist.close()


class _Given(NamedTuple):
    """What a caller gives :func:`surface_of` besides the Subject and the settings."""

    directions: list[dict[str, torch.Tensor]] | None
    direction_identity: dict | None
    extra: dict[str, np.ndarray] | None
    snapshots: Path | None
    target: dict | None
    target_name: str | None


def _resolved(config: LandscapeConfig, dist: DistContext, notify: bool) -> LandscapeConfig:
    """``config`` with its precision resolved for ``dist.device`` (a notice printed by rank
    0 where ``notify`` and the choice cannot act there)."""
    precision = resolve_precision(config.precision, dist.device)
    if precision.notice and dist.is_main and notify:
        print_notice(precision.notice)
    return replace(config, precision=precision.name)


def _precision_identity(config: LandscapeConfig) -> dict:
    """The identity's precision key: none for fp32 (the surfaces from before precisions were
    recorded keep their identity), else the (resolved) precision's name."""
    return {} if precision_named(config.precision).is_default else {"precision": config.precision}


def _run_info(config: LandscapeConfig, dist: DistContext) -> dict:
    """How a surface is computed (stored with it, free to differ between its runs)."""
    return {"batch_size": config.batch_size, "device": str(dist.device),
            "world_size": dist.world_size, "compile": config.compile,
            "depthscape_version": depthscape.__version__, "torch_version": torch.__version__,
            "subset_seed": SUBSET_SEED, "precision": config.precision}


def surface_identity(name: str, state: dict, kind: dict, config: LandscapeConfig, split: Split,
                     preprocess, dist: DistContext, loss_name: str | None = None) -> dict:
    """What decides a surface's values, the one place it is built (a file resumes only a
    surface of the same identity): the model's name and weights, the directions (``kind``,
    :func:`~depthscape.analysis.landscape.identity.model_directions`), the grid and its data,
    the preprocessing, the loss (a model's surface; a run's is always its cross-entropy and
    records none), the batch size and the precision."""
    return {
        "model": name,
        "weights_sha256": state_fingerprint(state),
        **kind,
        **grid_identity(config, split),
        "preprocess": None if preprocess is None else {"scale": preprocess.scale,
                                                       "mean": list(preprocess.mean)},
        **({"loss": loss_name} if loss_name is not None else {}),
        # a convolution's last digits depend on the batch's shape: one surface, one batch size
        "batch_size": effective_batch_size(config.batch_size, dist.device),
        **_precision_identity(config),
    }


def _compute(subject: Subject, config: LandscapeConfig, output, root, progress: bool,
             overwrite: bool, save_every: float, dist: DistContext,
             held: contextlib.ExitStack, given: _Given) -> tuple[SurfaceState, Path | None]:
    """:func:`surface_of`'s work: the identity, the file name and the record made once,
    from the Subject."""
    model, state = subject.model, subject.model.state_dict()
    target, target_name = given.target, given.target_name
    if config.target is not None:  # the same model (name checked), at other weights
        target = load_trained_run(config.target, model=subject.name).model.state_dict()
        target_name = str(config.target)
    if given.directions is not None and target is not None:
        raise ValueError("directions and a target: give one of them")
    kind, make_directions = model_directions(model, state, config, given.directions,
                                             given.direction_identity, target)
    dataset = subject.dataset
    split = (dataset.test if config.split == "test" else dataset.train).subset(config.subset, SUBSET_SEED)
    # before any file or folder: the model reads the data to a finite output, and can be
    # copied (the evaluator works on a copy)
    subject.check_reads(split)
    copy_model(model)
    identity = surface_identity(subject.recorded_name, state, kind, config, split,
                                subject.preprocess, dist, subject.loss_name)
    home = subject.home if subject.home is not None else root
    path = Path(output) if output is not None else None if home is None else \
        default_surface_path(home, subject.stem, config, identity, line=target is not None)
    info = {**subject.record(dataset.name, target_name, given.snapshots),
            **_run_info(config, dist)}
    surface = fill_surface(path, model, split, subject.preprocess, identity, config, dist,
                           held=held, info=info, directions=make_directions, extra=given.extra,
                           overwrite=overwrite, save_every=save_every, progress=progress,
                           loss_fn=subject.loss)
    return surface, path


def fill_surface(path: Path | None, model: torch.nn.Module, split: Split, preprocess,
                 identity: dict, config: LandscapeConfig, dist: DistContext, *,
                 held: contextlib.ExitStack, info: dict,
                 directions: Callable[[], list[dict[str, torch.Tensor]]],
                 extra: dict[str, np.ndarray] | None = None, overwrite: bool = False,
                 save_every: float = 5.0, progress: bool = True,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> SurfaceState:
    """Compute (or finish) one surface of ``model`` on ``split``: the grid, resume, sharding.

    The engine under :func:`compute_landscape` and the Python API's ``loss_surface``.
    ``identity`` is every setting that decides the values: a file at ``path`` holding the
    same identity is continued (only its missing points are computed), one holding another
    is refused unless ``overwrite``. ``directions()`` makes the directions of a new surface;
    ``info`` is stored as how it was computed. ``preprocess`` and ``loss_fn`` go to the
    :class:`PointEvaluator` (``None``: inputs as given; cross-entropy). ``path=None`` keeps
    the surface in memory only. The file is rewritten atomically at most every
    ``save_every`` seconds and when the work ends or is interrupted; under torchrun the
    missing points are dealt out to the ranks and rank 0 writes (:func:`sweep`).
    ``config.precision`` must already be resolved for ``dist.device``. Returns the
    (complete) surface.
    """
    surface = _open_surface(path, identity, config, dist, held, directions, extra, overwrite)
    surface.info = dict(info)
    if surface.done.all():
        return surface
    evaluator = PointEvaluator(model, surface.directions, split, preprocess, config.batch_size,
                               dist.device, compile=config.compile,
                               precision=precision_named(config.precision, dist.device.type),
                               loss_fn=loss_fn)
    surface.info["batchnorms_folded"] = len(evaluator.folded_pairs)
    workers = default_workers(config.workers, dist.device)
    workers = 1 if config.compile else workers  # one compiled network is enough to wait for
    surface.info["workers"] = workers

    def store(index: int, value: tuple[float, float]) -> None:
        surface.loss.flat[index], surface.acc.flat[index] = value

    sweep(surface.done, PointPool(evaluator, workers),
          lambda replica, index: replica.evaluate(surface.coordinates(index)), store, dist,
          save=(lambda: write_surface(path, surface)) if path is not None else None,
          save_every=save_every, progress=progress,
          desc=f"landscape {path.stem if path is not None else 'surface'}")
    return surface


def _open_surface(path: Path | None, identity: dict, config: LandscapeConfig, dist: DistContext,
                  held: contextlib.ExitStack, directions, extra, overwrite: bool) -> SurfaceState:
    """The surface at ``path`` to continue (its lock held in ``held``), refused if it holds
    another ``identity``; else a new one with ``directions()`` and the ``extra`` datasets."""
    if path is not None:
        if path.exists() and path.is_dir():
            raise UserError(f"{path} is a directory; give a file name for the surface")
        # issue 11: one writer per surface (rank 0 holds the lock); stale temporaries go
        held.enter_context(claim_output(path, f"surface {path}", owner=dist.is_main,
                                        agree=dist.all_true))
    surface: SurfaceState | None = None
    if path is not None and path.exists() and not overwrite:
        surface = read_state(path)
        difference = identity_difference(surface.identity, identity)
        if difference:
            raise UserError(f"{path} holds a surface computed with other settings ({difference}); "
                            "choose another output file or pass --overwrite")
    dist.barrier()  # every rank has read the old file before rank 0 replaces it
    if surface is None:
        y = grid_coordinates(config.yrange, config.resolution) if config.dims == 2 else None
        surface = new_state(config.split, grid_coordinates(config.xrange, config.resolution), y,
                            directions(), identity, {})
        surface.extra.update(extra or {})
    return surface


def read_surface(surface_file: str | os.PathLike) -> dict:
    """The contents of a surface file as plain arrays.

    Keys: ``x``, ``y`` (None for a 1-D curve), ``loss``, ``acc`` (shape ``(ny, nx)`` with
    ``loss[j, i]`` at ``(x[i], y[j])``, or ``(nx,)``), ``done`` (bool mask), ``split``,
    ``dims``, ``complete``, ``path`` and ``settings`` (every stored setting).
    """
    state = read_state(surface_file, with_directions=False)
    return {
        "x": state.xcoordinates, "y": state.ycoordinates, "loss": state.loss, "acc": state.acc,
        "done": state.done, "split": state.split, "dims": state.dims, "complete": state.complete,
        "path": Path(surface_file), "settings": {**state.info, **state.identity},
    }


def read_directions(surface_file: str | os.PathLike) -> list[dict[str, torch.Tensor]]:
    """The directions stored in a surface file (x first), keyed like the model's state."""
    return read_state(surface_file).directions


