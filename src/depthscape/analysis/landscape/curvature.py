"""Curvature maps (Li et al. 2018, section 6; the original's ``plot_hessian_eigen.py``).

A loss surface's 2-D picture can look convex while the loss in the millions of other
directions is not. At each point ``theta* + a d1 + b d2`` of a coarse grid over a
surface file's plane, :func:`compute_curvature` finds the Hessian's largest and smallest
eigenvalues (:func:`depthscape.analysis.hessian.extreme_eigenvalues`: Lanczos on Hessian-vector products, over
every trainable parameter, on a fixed subset of images, BatchNorm in eval mode as the
landscape evaluates it) and stores them in the same HDF5 file as extra datasets::

    f["curvature_xcoordinates"]  (nx,)      the grid (the surface's ranges, coarser)
    f["curvature_ycoordinates"]  (ny,)
    f["hessian_max_eig"]         (ny, nx)   largest (algebraic) eigenvalue; NaN = not yet
    f["hessian_min_eig"]         (ny, nx)   smallest (algebraic) eigenvalue
    f["curvature_ratio"]         (ny, nx)   |min / max|: near 0 locally convex, large where
                                            negative curvature is strong
    f["curvature_done"]          (ny, nx)   uint8, 1 where computed
    f["curvature_settings"]      JSON string: the settings, the convex share and its rule

A point counts as locally convex where ``lambda_min >= -CONVEX_TOL * |lambda_max|``: a
negative eigenvalue under 1% of the largest is within what a few Lanczos steps at float32
resolve (Li et al. read such points as blue, "convex", too).

Resume: the file is rewritten atomically as points finish; running the same call again
computes only the missing points, each by the same deterministic code (the same seeded
start vector, data and settings), so a killed and rerun computation ends with the same
file. Under torchrun the missing points are dealt out to the ranks (``parallel="points"``,
the default: the values are those of one process, bit for bit), or every rank computes
every point together, each Hessian-vector product formed on the rank's share of the images
and all-reduced (``parallel="batch"``: for a subset too large for one process; the values
agree with one process's to rounding, and the rank count is recorded). Rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from depthscape.analysis.curves import display_name
from depthscape.analysis.hessian import (
    STOP_RULE,
    EigenExtremes,
    HessianOperator,
    extreme_eigenvalues,
)
from depthscape.analysis.landscape.identity import (
    SUBSET_SEED,
    grid_coordinates,
    split_fingerprint,
    state_fingerprint,
)
from depthscape.analysis.landscape.plots import CMAP
from depthscape.analysis.landscape.storage import (
    SurfaceState,
    identity_difference,
    read_state,
    write_surface,
)
from depthscape.analysis.landscape.sweep import WorkerPool, default_workers, rank_share, sweep
from depthscape.core.atomic import save_figure
from depthscape.core.distributed import setup
from depthscape.core.errors import UserError
from depthscape.core.locking import claim_output
from depthscape.core.models import model_family
from depthscape.core.subject import Subject, subject_from_run

#: A negative curvature smaller than this fraction of the positive one counts as convex.
CONVEX_TOL = 0.01

#: How torchrun's ranks share a map: grid points dealt out, or each point's batch split.
PARALLEL = ("points", "batch")


@dataclass(frozen=True)
class CurvatureConfig:
    """Settings of a curvature map.

    ``resolution`` points per axis over the surface's ranges; the Hessian of the mean loss
    on a fixed random ``subset`` of the ``split`` (None: the surface's split); at most
    ``iterations`` Lanczos steps from a start vector drawn with ``seed``, stopping early
    once each extreme moves by less than ``tol`` times its own magnitude. ``batch_size``
    (images per Hessian-vector product chunk), ``device`` and ``workers`` change the speed, not the
    values (on the CPU each point runs on one thread, whatever the worker count).
    ``parallel`` says how torchrun's ranks share the work: ``"points"`` (each rank its own
    grid points) or ``"batch"`` (each point's Hessian-vector products split over the ranks'
    shares of the subset and all-reduced; one point at a time); alone they are the same.
    """

    resolution: int = 11
    split: str | None = None
    subset: int = 256
    iterations: int = 20
    tol: float = 1e-3
    seed: int = 0
    batch_size: int = 256
    device: str | None = None
    workers: int | None = None  # points at once, one thread each (default: CPU threads; GPU 1)
    parallel: str = "points"  # under torchrun: "points" dealt to the ranks, or "batch" split

    def validate(self) -> "CurvatureConfig":
        """Check the settings; a bad one is a one-line UserError."""
        if self.resolution < 2:
            raise UserError(f"curvature resolution must be at least 2, got {self.resolution}")
        if self.split not in (None, "train", "test"):
            raise UserError(f"curvature split must be train or test, got {self.split!r}")
        if self.subset <= 0 or self.iterations < 2 or self.batch_size <= 0:
            raise UserError("curvature subset, batch size must be positive and iterations at least 2")
        if self.parallel not in PARALLEL:
            raise UserError(f"curvature parallel must be one of {', '.join(PARALLEL)}, "
                            f"got {self.parallel!r}")
        return self


def curvature_at(model: nn.Module, base: dict[str, torch.Tensor],
                 directions: Sequence[dict[str, torch.Tensor]], coefficients: Sequence[float],
                 inputs: torch.Tensor, labels: torch.Tensor, config: CurvatureConfig,
                 dist=None) -> EigenExtremes:
    """Hessian eigen-extremes of ``model``'s mean loss on ``(inputs, labels)`` at
    ``base + sum_i c_i d_i`` (``model`` is overwritten; BatchNorm in eval mode). With
    ``dist`` (torchrun, every rank at the same point) the products are split over the ranks
    (:class:`~depthscape.analysis.hessian.HessianOperator`)."""
    with torch.no_grad():
        state = model.state_dict()
        for name, value in base.items():
            target = value.clone()
            for c, direction in zip(coefficients, directions):
                if name in direction and c != 0:
                    target.add_(direction[name].to(target), alpha=float(c))
            state[name].copy_(target)
    model.eval()
    operator = HessianOperator(model, inputs, labels, config.batch_size, dist=dist)
    return extreme_eigenvalues(operator, operator.params, config.iterations, config.tol,
                               config.seed)


def convex_mask(largest: np.ndarray, smallest: np.ndarray) -> np.ndarray:
    """Where the loss is locally convex: ``smallest >= -CONVEX_TOL * |largest|``."""
    return smallest >= -CONVEX_TOL * np.abs(largest)


def _ratio(largest: np.ndarray, smallest: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(smallest / largest)


def _settings_of(extra: dict) -> dict | None:
    raw = extra.get("curvature_settings")
    if raw is None:
        return None
    raw = raw.item() if isinstance(raw, np.ndarray) else raw
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def compute_curvature(surface_file: str | os.PathLike, checkpoint: str | os.PathLike,
                      config: CurvatureConfig | None = None, dataset=None, progress: bool = True,
                      *, overwrite: bool | str = False, save_every: float = 5.0,
                      on_point: Callable[[int], None] | None = None, data_source: str | None = None,
                      data_dir: str | None = None, cache_dir: str | None = None,
                      model_name: str | None = None) -> Path:
    """Compute (or finish) the curvature map of a 2-D surface file of the run of
    ``checkpoint`` in place; returns it: the run's Subject (its architecture ``model_name``,
    else the one the surface names; its data as :func:`subject_from_run` overrides it)
    through :func:`subject_curvature`, whose doc says the rest."""
    if model_name is None:
        model_name = read_state(surface_file, with_directions=False).identity.get("model")
    subject = subject_from_run(checkpoint, model=model_name,
                               dataset=dataset if dataset is not None else data_source,
                               data_dir=data_dir, cache_dir=cache_dir)
    return subject_curvature(surface_file, subject, config, progress, overwrite=overwrite,
                             save_every=save_every, on_point=on_point)


def subject_curvature(surface_file: str | os.PathLike, subject: Subject,
                      config: CurvatureConfig | None = None, progress: bool = True, *,
                      overwrite: bool | str = False, save_every: float = 5.0,
                      on_point: Callable[[int], None] | None = None) -> Path:
    """Compute (or finish) the curvature map of a 2-D surface file in place; returns it.

    ``subject`` is what the surface was computed around (its weights are checked against
    the file's). A map with other settings already in the file is refused unless
    ``overwrite`` (``"other-settings"``: replaced only where its settings differ, so a
    finished map with these settings is kept). ``on_point(flat_index)`` is called after each point (tests use it to
    interrupt). Under torchrun every rank calls this; rank 0 writes, holding the surface
    file's lock (the one ``landscape`` takes), so no other command rewrites it meanwhile.
    """
    config = (config or CurvatureConfig()).validate()
    surface_file = Path(surface_file)
    dist = setup(config.device)
    try:
        with claim_output(surface_file, f"surface {surface_file}", owner=dist.is_main,
                          agree=dist.all_true):
            surface = read_state(surface_file)
            if surface.dims != 2:
                raise UserError(f"{surface_file} is a 1-D curve: a curvature map needs a 2-D surface")
            if state_fingerprint(subject.model.state_dict()) != surface.identity.get("weights_sha256"):
                raise UserError(f"the weights of {subject.label} are not those {surface_file} "
                                "was computed around")
            split_name = config.split or surface.split
            split = (subject.dataset.test if split_name == "test" else subject.dataset.train
                     ).subset(config.subset, SUBSET_SEED)
            shards = dist.world_size if config.parallel == "batch" else 1
            curvature = _Map.prepare(surface, surface_file, config, split_name, split, overwrite,
                                     shards)
            dist.barrier()
            if not curvature.done.all():
                _sweep_map(curvature, surface_file, subject, split, config, dist,
                           progress=progress, save_every=save_every, on_point=on_point)
            elif dist.rank == 0 and _settings_of(surface.extra) is None:
                curvature.save(surface_file)
            return surface_file
    finally:
        dist.close()


@dataclass
class _Map:
    """A curvature map held in a surface's extra datasets (its arrays are theirs)."""

    surface: SurfaceState
    identity: dict  # the settings that decide the values
    done: np.ndarray  # bool, (ny, nx)
    shards: int = 1  # the ranks each point's Hessian-vector products are split over

    @classmethod
    def prepare(cls, surface: SurfaceState, surface_file: Path, config: CurvatureConfig,
                split_name: str, split, overwrite: bool | str, shards: int = 1) -> _Map:
        """The map of these settings in ``surface``: the one stored, or a new empty one
        (where there is none, or ``overwrite``; one of other settings is refused).
        ``shards``: the ranks each point's products are split over (1: not split)."""
        # the Hessian-vector products' chunk size changes the last digits, as a surface's batch
        # does, and so does splitting them over ranks (recorded only then: old maps still match)
        identity = {k: v for k, v in asdict(config).items()
                    if k not in ("device", "workers", "parallel")}
        identity.update(split=split_name, samples=len(split), data_sha256=split_fingerprint(split),
                        convex_tol=CONVEX_TOL, method="lanczos", stop_rule=STOP_RULE)
        if shards > 1:
            identity["hvp_shards"] = shards
        stored = _settings_of(surface.extra)
        why = None if stored is None else identity_difference(stored.get("identity") or {}, identity)
        differs = why is not None
        if overwrite == "other-settings":  # the caller owns the file (a study): replace only those
            overwrite = differs
        if differs and not overwrite:
            raise UserError(f"{surface_file} holds a curvature map with other settings ({why}); "
                            "pass --overwrite to replace it")
        if stored is None or overwrite or surface.extra.get("hessian_max_eig") is None:
            shape = (config.resolution, config.resolution)
            x, y = ((float(c.min()), float(c.max()))
                    for c in (surface.xcoordinates, surface.ycoordinates))
            surface.extra.update(curvature_xcoordinates=grid_coordinates(x, config.resolution),
                                 curvature_ycoordinates=grid_coordinates(y, config.resolution),
                                 hessian_max_eig=np.full(shape, np.nan),
                                 hessian_min_eig=np.full(shape, np.nan),
                                 curvature_done=np.zeros(shape, dtype=np.uint8))
        return cls(surface, identity, surface.extra["curvature_done"].astype(bool), shards)

    def save(self, surface_file: Path) -> None:
        """Write the surface file with the map as it stands (atomically)."""
        extra, done = self.surface.extra, self.done
        largest, smallest = extra["hessian_max_eig"], extra["hessian_min_eig"]
        extra["curvature_done"] = done.astype(np.uint8)
        extra["curvature_ratio"] = _ratio(largest, smallest)
        finished = largest[done]
        share = float(convex_mask(finished, smallest[done]).mean()) if done.all() else None
        extra["curvature_settings"] = np.bytes_(json.dumps(
            {"identity": self.identity, "convex_share": share, "points_done": int(done.sum()),
             "rule": f"convex where lambda_min >= -{CONVEX_TOL} * |lambda_max|"}, sort_keys=True))
        write_surface(surface_file, self.surface)


def _sweep_map(curvature: _Map, surface_file: Path, subject: Subject, split, config: CurvatureConfig, dist, *,
               progress: bool, save_every: float, on_point) -> None:
    """Compute the map's missing points (:func:`~depthscape.analysis.landscape.sweep.sweep`)."""
    extra = curvature.surface.extra
    x, y = extra["curvature_xcoordinates"], extra["curvature_ycoordinates"]
    largest, smallest = extra["hessian_max_eig"], extra["hessian_min_eig"]
    device = dist.device
    model = subject.model.to(device)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    directions = [{k: v.to(device) for k, v in d.items() if bool(v.ne(0).any())}
                  for d in curvature.surface.directions]
    inputs = subject.preprocess.normalize(split.images.to(device))
    labels = split.labels.to(device)
    # On the CPU, one point per core, each single-threaded (as the landscape's PointPool):
    # small-batch Hessian-vector products do not scale over threads, and every value is
    # then computed by the same one-thread code whatever the worker count (resume is exact).
    together = curvature.shards > 1  # each point's batch split over the ranks
    workers = 1 if together else default_workers(config.workers, device)
    workers = max(1, min(workers, len(rank_share(curvature.done, dist, together))))
    replicas = [model] + [copy.deepcopy(model) for _ in range(workers - 1)]

    def point(replica: nn.Module, index: int) -> tuple[float, float]:
        row, col = divmod(index, len(x))
        found = curvature_at(replica, base, directions, (float(x[col]), float(y[row])),
                             inputs, labels, config, dist if together else None)
        return found.largest, found.smallest

    def store(index: int, value: tuple[float, float]) -> None:
        largest.flat[index], smallest.flat[index] = value

    sweep(curvature.done, WorkerPool(replicas, one_thread=device.type == "cpu", name="curvature"),
          point, store, dist, save=lambda: curvature.save(surface_file), save_every=save_every,
          progress=progress, desc=f"curvature {surface_file.stem}", on_point=on_point,
          together=together)


def read_curvature(surface_file: str | os.PathLike) -> dict:
    """The curvature map of a surface file: ``x``, ``y``, ``largest``, ``smallest``, ``ratio``,
    ``done``, ``complete``, ``convex`` (mask), ``convex_share`` and ``settings``."""
    state = read_state(surface_file, with_directions=False)
    settings = _settings_of(state.extra)
    if settings is None:
        raise UserError(f"{surface_file} holds no curvature map: compute it with "
                        "`depthscape landscape ... --curvature`")
    extra = state.extra
    done = extra["curvature_done"].astype(bool)
    largest, smallest = extra["hessian_max_eig"], extra["hessian_min_eig"]
    return {"x": extra["curvature_xcoordinates"], "y": extra["curvature_ycoordinates"],
            "largest": largest, "smallest": smallest, "ratio": _ratio(largest, smallest),
            "done": done, "complete": bool(done.all()), "convex": convex_mask(largest, smallest) & done,
            "convex_share": settings.get("convex_share"), "settings": settings,
            "model": state.identity.get("model")}


#: The ratio's colour scale in every map, so maps of different models compare directly.
RATIO_MAX = 1.0


def draw_curvature(ax, curvature: dict, vmax: float = RATIO_MAX, colorbar: bool = True):
    """Draw the |lambda_min / lambda_max| map on ``ax`` (fixed scale 0..``vmax``)."""
    image = ax.pcolormesh(curvature["x"], curvature["y"], np.nan_to_num(curvature["ratio"], nan=vmax),
                          cmap=CMAP, vmin=0.0, vmax=vmax, shading="nearest")
    ax.set_xlabel("alpha (x direction)")
    ax.set_ylabel("beta (y direction)")
    share = curvature["convex_share"]
    ax.set_title(f"{curvature['model']}: |λmin/λmax|"
                 + (f", {100 * share:.0f}% locally convex" if share is not None else ""), fontsize=9)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, extend="max", label="|λmin / λmax|")
    return image


def plot_curvature(surface_file: str | os.PathLike, out_dir: str | os.PathLike,
                   vmax: float = RATIO_MAX, formats=("png", "pdf")) -> list[Path]:
    """The curvature map as ``<stem>_curvature.<png|pdf>``; returns the files written."""
    # deferred on purpose: matplotlib is slow to import and only figures need it
    from matplotlib.figure import Figure

    curvature = read_curvature(surface_file)
    if not curvature["complete"]:
        raise UserError(f"the curvature map in {surface_file} is not finished: run the same "
                        "command again")
    fig = Figure(figsize=(6.0, 5.0))
    draw_curvature(fig.add_subplot(), curvature, vmax)
    return save_figure(fig, Path(out_dir) / f"{Path(surface_file).stem}_curvature", formats)


def plot_curvature_grid(maps, stem: str | os.PathLike, vmax: float = RATIO_MAX,
                        formats=("png", "pdf")) -> list[Path]:
    """Several curvature maps (``(label, surface_file)`` pairs) in one figure, one row per
    model family (CNN, ResNet, PlainNet, ...) and one colour scale for all."""
    # deferred on purpose: matplotlib is slow to import and only figures need it
    from matplotlib.figure import Figure

    rows: dict[str, list] = {}
    for label, surface_file in maps:
        rows.setdefault(model_family(label), []).append((label, surface_file))
    ncols = max(len(r) for r in rows.values())

    fig = Figure(figsize=(4.2 * ncols + 1.0, 3.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    image = None
    for r, row in enumerate(rows.values()):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(row):
                ax.set_axis_off()
                continue
            curvature = read_curvature(row[c][1])
            curvature["model"] = display_name(row[c][0])
            image = draw_curvature(ax, curvature, vmax, colorbar=False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), extend="max", label="|λmin / λmax|")
    return save_figure(fig, stem, formats)
