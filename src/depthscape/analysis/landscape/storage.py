"""HDF5 surface files, laid out like tomgoldstein/loss-landscape's, written atomically.

Layout (``f`` is the open file)::

    f["xcoordinates"]          (nx,)      float64, the alpha values
    f["ycoordinates"]          (ny,)      float64, the beta values (2-D surfaces only)
    f["test_loss"]             (ny, nx)   float64 mean cross-entropy; (nx,) for a 1-D curve
    f["test_acc"]              (ny, nx)   float64 accuracy in percent
                                          (train_loss / train_acc for --split train)
    f["done"]                  like test_loss, uint8: 1 where the point is computed
    f["xdirection"]["0"], ...  the x direction, one dataset per tensor (the original's
    f["ydirection"]["0"], ...  direction-file layout); attribute "names" lists the tensors
    f["dir_file"]              this file's own name (the original points at its direction file)
    f.attrs["settings"]        JSON of every setting; each one also as its own attribute
    f[name] for name in settings["extra"]   datasets other views add to the same file
                                          (a trajectory's path, a curvature map), kept
                                          as they are by every rewrite

``loss[j, i]`` is the value at ``(x[i], y[j])``: rows are y, as ``np.meshgrid(x, y)`` and the
original's plotting and ParaView scripts read it. Points not yet computed hold NaN.

The file is rewritten as a whole through a temporary file and a rename, so a kill at any
moment leaves either the previous or the new complete file, never a torn one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from depthscape.core.atomic import atomic_path
from depthscape.core.errors import UserError

#: Bumped when the file layout changes; older files are then refused, not misread.
FORMAT_VERSION = 1


@dataclass
class SurfaceState:
    """Everything a surface file holds, in memory."""

    split: str
    xcoordinates: np.ndarray
    ycoordinates: np.ndarray | None
    loss: np.ndarray
    acc: np.ndarray
    done: np.ndarray
    directions: list[dict[str, torch.Tensor]]
    identity: dict  # the settings that decide the values: must match to resume
    info: dict = field(default_factory=dict)  # how it was computed: free to differ
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other views' datasets

    @property
    def dims(self) -> int:
        return 1 if self.ycoordinates is None else 2

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def coordinates(self, flat_index: int) -> tuple[float, ...]:
        """(alpha,) or (alpha, beta) of the point at ``flat_index`` of ``loss.ravel()``."""
        nx = len(self.xcoordinates)
        if self.ycoordinates is None:
            return (float(self.xcoordinates[flat_index]),)
        row, col = divmod(int(flat_index), nx)
        return float(self.xcoordinates[col]), float(self.ycoordinates[row])


def new_state(split: str, xcoordinates: np.ndarray, ycoordinates: np.ndarray | None,
              directions: list[dict[str, torch.Tensor]], identity: dict, info: dict) -> SurfaceState:
    """An empty surface (all points missing) on the given grid."""
    shape = (len(xcoordinates),) if ycoordinates is None else (len(ycoordinates), len(xcoordinates))
    return SurfaceState(split, np.asarray(xcoordinates, dtype=np.float64),
                        None if ycoordinates is None else np.asarray(ycoordinates, dtype=np.float64),
                        np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=bool),
                        directions, identity, info)


def _to_attr(value):
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        return str(value)  # a numpy str_ has no HDF5 type
    return value


def write_surface(path: str | os.PathLike, state: SurfaceState) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + rename)."""
    # deferred on purpose: h5py loads only where an HDF5 file is read or written
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f["xcoordinates"] = state.xcoordinates
            if state.ycoordinates is not None:
                f["ycoordinates"] = state.ycoordinates
            f[f"{state.split}_loss"] = state.loss
            f[f"{state.split}_acc"] = state.acc
            f["done"] = state.done.astype(np.uint8)
            f["dir_file"] = path.name
            for key, direction in zip(("xdirection", "ydirection"), state.directions):
                group = f.create_group(key)
                names = list(direction)
                group.attrs["names"] = json.dumps(names)
                for index, name in enumerate(names):
                    group.create_dataset(str(index), data=direction[name].detach().cpu().numpy())
            for name, values in state.extra.items():
                f[name] = values
            settings = {"format": "depthscape-landscape", "format_version": FORMAT_VERSION,
                        "split": state.split, "identity": state.identity, "info": state.info,
                        "extra": sorted(state.extra)}
            f.attrs["settings"] = json.dumps(settings, sort_keys=True)
            for key, value in {**state.info, **state.identity}.items():
                f.attrs[key] = _to_attr(value)
            f.attrs["format_version"] = FORMAT_VERSION
    return path


#: The splits a surface is evaluated on (its loss and accuracy datasets are named after it).
SPLITS = ("train", "test")


def _damaged(path: Path, what: str) -> UserError:
    return UserError(f"{path} is a damaged surface file: {what}; compute it again")


def _settings_of(path: Path, f) -> dict:
    """The file's settings attribute, checked for the types every reader relies on."""
    try:
        settings = json.loads(f.attrs["settings"])
    except (TypeError, ValueError) as error:
        raise _damaged(path, f"its settings are not JSON ({str(error)[:80]})") from None
    if not isinstance(settings, dict):
        raise _damaged(path, f"its settings are a {type(settings).__name__}, not a mapping")
    if settings.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has surface format {settings.get('format_version')}, "
                        f"this version reads {FORMAT_VERSION}; compute it again")
    for key, kind, required in (("identity", dict, True), ("info", dict, False),
                                ("extra", list, False)):
        if key not in settings:
            if required:
                raise _damaged(path, f"its settings have no {key!r}")
            continue
        if not isinstance(settings[key], kind):
            raise _damaged(path, f"its settings' {key!r} is a {type(settings[key]).__name__}, "
                                 f"not a {'mapping' if kind is dict else 'list'}")
    if settings.get("split") not in SPLITS:
        raise _damaged(path, f"its settings' split is {settings.get('split')!r}, not one of "
                             f"{', '.join(SPLITS)}")
    if not all(isinstance(name, str) for name in settings.get("extra", [])):
        raise _damaged(path, "its settings' 'extra' names are not all strings")
    return settings


def _check_layout(path: Path, f, settings: dict) -> None:
    """Shapes and direction count agree with each other and with the recorded settings."""
    # deferred on purpose: h5py loads only where an HDF5 file is read or written
    import h5py

    def dataset(name: str):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise _damaged(path, f"it has no {name!r} dataset")
        return f[name]

    axes = [dataset("xcoordinates")] + ([dataset("ycoordinates")] if "ycoordinates" in f else [])
    for axis in axes:
        if axis.ndim != 1 or axis.shape[0] < 2:
            raise _damaged(path, f"{axis.name.lstrip('/')} has shape {axis.shape}, not a line of "
                                 "at least 2 points")
    dims = len(axes)
    recorded = settings["identity"].get("dims")
    if recorded is not None and recorded != dims:
        raise _damaged(path, f"its settings say dims={recorded} but it holds {dims} coordinate "
                             f"{'axis' if dims == 1 else 'axes'}")
    resolution = settings["identity"].get("resolution")
    if isinstance(resolution, int) and any(axis.shape[0] != resolution for axis in axes):
        raise _damaged(path, f"its coordinates have {' and '.join(str(a.shape[0]) for a in axes)} "
                             f"points, its settings say resolution={resolution}")
    # loss[j, i] is the value at (x[i], y[j]): rows are y
    shape = tuple(axis.shape[0] for axis in reversed(axes))
    split = settings["split"]
    for name in (f"{split}_loss", f"{split}_acc", "done"):
        if dataset(name).shape != shape:
            raise _damaged(path, f"{name} has shape {dataset(name).shape}, the grid is {shape}")
    groups = [key for key in ("xdirection", "ydirection") if key in f]
    wanted = ["xdirection", "ydirection"][:dims]
    if groups != wanted:
        raise _damaged(path, f"it holds {len(groups)} direction(s) ({', '.join(groups) or 'none'}) "
                             f"for a {dims}-D surface ({', '.join(wanted)} wanted)")
    layouts = []
    for key in groups:
        group = f[key]
        try:
            names = json.loads(group.attrs["names"])
        except (KeyError, TypeError, ValueError):
            raise _damaged(path, f"{key} has no readable list of tensor names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _damaged(path, f"{key}'s tensor names are not a list of strings")
        if len(names) != len(group) or any(str(i) not in group for i in range(len(names))):
            raise _damaged(path, f"{key} names {len(names)} tensor(s) but holds {len(group)}")
        layouts.append([(name, group[str(i)].shape) for i, name in enumerate(names)])
    if len(layouts) == 2 and layouts[0] != layouts[1]:
        raise _damaged(path, "its xdirection and ydirection hold different tensors")


def read_state(path: str | os.PathLike, with_directions: bool = True) -> SurfaceState:
    """Read a surface file written by :func:`write_surface`; a bad file is a UserError.

    Every read checks that the file agrees with itself (issue 19): the settings' types, the
    coordinates (lines of at least 2 points), the loss, accuracy and ``done`` shapes against
    the grid, one direction per axis (tensor names and shapes alike) and the recorded dims
    and resolution; a mismatch is one line naming the file and what is wrong.
    """
    # deferred on purpose: h5py loads only where an HDF5 file is read or written
    import h5py

    path = Path(path)
    if not path.exists():
        raise UserError(f"surface file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "settings" not in f.attrs:
                raise UserError(f"{path} is not a depthscape surface file (no settings attribute)")
            settings = _settings_of(path, f)
            _check_layout(path, f, settings)
            split = settings["split"]
            directions = []
            if with_directions:
                for key in ("xdirection", "ydirection"):
                    if key in f:
                        names = json.loads(f[key].attrs["names"])
                        directions.append({name: torch.from_numpy(f[key][str(i)][()])
                                           for i, name in enumerate(names)})
            return SurfaceState(
                split=split,
                xcoordinates=f["xcoordinates"][()],
                ycoordinates=f["ycoordinates"][()] if "ycoordinates" in f else None,
                loss=f[f"{split}_loss"][()], acc=f[f"{split}_acc"][()],
                done=f["done"][()].astype(bool), directions=directions,
                identity=settings["identity"], info=settings.get("info", {}),
                extra={name: f[name][()] for name in settings.get("extra", [])},
            )
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise UserError(f"{path} is not a readable surface file: {str(error).splitlines()[0][:160]}") \
            from None


def _short(value):
    """A setting as a message shows it: strings quoted (so "1" is not read as 1), long ones
    cut to their first 12 characters."""
    if isinstance(value, str):
        return repr(value[:12] + "...") if len(value) > 16 else repr(value)
    return value


def same_setting(a, b) -> bool:
    """Whether two identity values, as JSON holds them, are the same setting: numbers by value
    (a 1 read back from a file is the 1.0 asked for), booleans, strings and None only as
    themselves, lists and objects item by item."""
    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if number(a) and number(b):
        return a == b or (a != a and b != b)  # NaN, as JSON writes it, is the NaN asked for
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_setting(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(same_setting, a, b))
    return type(a) is type(b) and a == b


def identity_difference(stored: dict, wanted: dict) -> str | None:
    """A short description of the first setting where ``stored`` and ``wanted`` differ (by
    ``same_setting``), None where they are the same identity: the one test of a file's
    settings, so the decision and the message that explains it cannot disagree. Both sides
    are compared as JSON holds them (a tuple is a list, keys are strings)."""
    stored, wanted = (json.loads(json.dumps(side)) for side in (stored, wanted))
    for key in sorted(set(stored) | set(wanted)):
        if key not in stored or key not in wanted or not same_setting(stored[key], wanted[key]):
            there = _short(stored[key]) if key in stored else "not recorded"
            here = _short(wanted[key]) if key in wanted else "not set"
            return f"{key} is {there} there, {here} here"
    return None
