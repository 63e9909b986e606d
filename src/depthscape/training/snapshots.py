"""Weight snapshots of a training run, for optimization trajectories (Li et al. 2018, s. 7).

A run with ``snapshot_every`` set keeps its weights every ``snapshot_every`` iterations
(epochs for epoch recipes), at the start (step 0) and at the end, in ONE HDF5 file beside
its checkpoint (``models/<checkpoint stem>.snapshots.h5``)::

    f["steps"]     (k,)    int64    training iteration of each snapshot (0 = initial weights)
    f["weights"]   (k, D)  float32  one row per snapshot: the parameters with two or more
                                    dimensions (no biases, no BatchNorm), flattened in
                                    ``named_parameters`` order and concatenated
    f.attrs["names"], f.attrs["shapes"]   JSON: which tensor each slice of a row is
    f.attrs["every"], f.attrs["unit"], f.attrs["every_steps"], f.attrs["model"]

Only those parameters are stored because only they span the trajectory's PCA (the
landscape directions leave 1-D parameters and BatchNorm out too).

Writes follow the checkpoints: snapshots wait in memory and are written when the loop
saves a resumable checkpoint (just before it), when it stops and at the end, each time
through a temporary file and a rename, so the file on disk never holds a snapshot later
than the checkpoint beside it (a kill in between is undone on resume: rows after the
resume step are dropped). A stopped and resumed run therefore ends with the same file as
an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from depthscape.core.atomic import atomic_path
from depthscape.core.errors import UserError
from depthscape.core.runs import snapshot_path  # noqa: F401  (re-exported)

FORMAT = "depthscape-snapshots"
FORMAT_VERSION = 1


def trajectory_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The (name, parameter) pairs a trajectory spans: every parameter with two or more dims."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() > 1]


def flatten_parameters(model: nn.Module) -> np.ndarray:
    """The trajectory parameters of ``model`` as one float32 row (on the CPU)."""
    with torch.no_grad():
        parts = [p.detach().to("cpu", torch.float32).reshape(-1) for _, p in trajectory_parameters(model)]
    return torch.cat(parts).numpy()


class SnapshotWriter:
    """Collects a run's snapshots and writes them to one file, atomically and resumably.

    ``every_steps`` is the interval in optimizer steps (``every`` times the steps of an
    epoch for epoch recipes); ``total_steps`` the run's length (the last step is always
    kept). ``resume_step`` is the step of the checkpoint a resumed run continues from
    (None: a fresh start, an existing file is replaced at the first write). ``enabled``
    False (no snapshots asked, or a torchrun rank other than 0) makes every call a no-op.
    """

    def __init__(self, path: str | os.PathLike, every: int | None, every_steps: int,
                 total_steps: int, unit: str = "iteration", model_name: str = "",
                 resume_step: int | None = None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = bool(enabled and every)
        self.every, self.every_steps, self.total = every, max(1, int(every_steps)), int(total_steps)
        self.unit, self.model_name = unit, model_name
        self.pending: list[tuple[int, np.ndarray]] = []
        self.layout: tuple[list[str], list[list[int]]] | None = None
        self.kept = 0  # rows of the file on disk that stay (the rest are after the resume step)
        self.on_disk = 0
        self.last_step = -1
        if not self.enabled:
            return
        if resume_step is not None and not self.path.exists():
            raise UserError(f"{self.path} is missing: the run being resumed kept weight snapshots "
                            "there; restore it, or rerun with --overwrite to start over")
        if resume_step is not None:
            steps = read_snapshot_steps(self.path)
            self.on_disk = len(steps)
            self.kept = int(np.searchsorted(steps, resume_step, side="right"))
            if self.kept:
                self.last_step = int(steps[self.kept - 1])

    def due(self, step: int) -> bool:
        """Whether the weights after ``step`` optimizer steps are a snapshot not yet taken."""
        return self.enabled and step > self.last_step and (
            step % self.every_steps == 0 or step == self.total)

    def add(self, step: int, model: nn.Module) -> None:
        """Keep ``model``'s trajectory parameters as the snapshot of ``step`` (in memory)."""
        if not self.enabled or step <= self.last_step:
            return
        if self.layout is None:
            params = trajectory_parameters(model)
            self.layout = ([n for n, _ in params], [list(p.shape) for _, p in params])
        self.pending.append((int(step), flatten_parameters(model)))
        self.last_step = int(step)

    def maybe_add(self, step: int, model: nn.Module) -> None:
        """:meth:`add` where :meth:`due`."""
        if self.due(step):
            self.add(step, model)

    def flush(self) -> None:
        """Write the pending snapshots (call before saving a checkpoint, on stop, at the end)."""
        if not self.enabled or (not self.pending and self.kept == self.on_disk):
            return
        # deferred on purpose: h5py loads only where an HDF5 file is read or written
        import h5py

        with atomic_path(self.path) as tmp:
            if self.kept and self.kept == self.on_disk:
                shutil.copyfile(self.path, tmp)  # appending: the old rows are copied as they are
                with h5py.File(tmp, "a") as f:
                    self._append(f)
            else:
                with h5py.File(tmp, "w") as f:
                    self._create(f)
                    if self.kept:
                        with h5py.File(self.path, "r") as old:
                            for row in range(self.kept):  # one row at a time: bounded memory
                                f["steps"][row] = old["steps"][row]
                                f["weights"][row] = old["weights"][row]
                    self._append(f)
        self.on_disk = self.kept = self.kept + len(self.pending)
        self.pending = []

    def _create(self, f) -> None:
        names, shapes = self.layout if self.layout is not None else ([], [])
        width = len(self.pending[0][1]) if self.pending else 0
        if self.kept and not width:
            # deferred on purpose: h5py loads only where an HDF5 file is read or written
            import h5py

            with h5py.File(self.path, "r") as old:
                width = old["weights"].shape[1]
                names, shapes = json.loads(old.attrs["names"]), json.loads(old.attrs["shapes"])
        f.create_dataset("steps", shape=(self.kept,), maxshape=(None,), dtype=np.int64, chunks=(64,))
        f.create_dataset("weights", shape=(self.kept, width), maxshape=(None, width),
                         dtype=np.float32, chunks=(1, max(1, width)))
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                        "names": json.dumps(names), "shapes": json.dumps(shapes),
                        "every": int(self.every), "every_steps": self.every_steps,
                        "unit": self.unit, "model": self.model_name})

    def _append(self, f) -> None:
        if not self.pending:
            return
        start = f["steps"].shape[0]
        stop = start + len(self.pending)
        f["steps"].resize((stop,))
        f["weights"].resize((stop, f["weights"].shape[1]))
        for offset, (step, row) in enumerate(self.pending):
            f["steps"][start + offset] = step
            f["weights"][start + offset] = row


def read_snapshot_steps(path: str | os.PathLike) -> np.ndarray:
    """The steps stored in a snapshot file; an unreadable file is a one-line UserError."""
    return _open(path, lambda f: f["steps"][()])


def read_snapshot_info(path: str | os.PathLike) -> dict:
    """``steps``, ``names``, ``shapes``, ``width`` (floats per row), ``every``, ``unit``, ``model``."""
    def info(f):
        return {"steps": f["steps"][()], "names": json.loads(f.attrs["names"]),
                "shapes": [tuple(s) for s in json.loads(f.attrs["shapes"])],
                "width": int(f["weights"].shape[1]), "every": int(f.attrs["every"]),
                "unit": str(f.attrs["unit"]), "model": str(f.attrs["model"])}
    return _open(path, info)


def read_snapshot_rows(path: str | os.PathLike, rows, out: torch.Tensor) -> torch.Tensor:
    """Read the snapshot rows ``rows`` into ``out`` (shape ``(len(rows), width)``), one at a
    time, so no second copy of the matrix is ever held."""
    def read(f):
        weights = f["weights"]
        for index, row in enumerate(rows):
            out[index].copy_(torch.from_numpy(weights[int(row)]))
        return out
    return _open(path, read)


def _open(path, reader):
    # deferred on purpose: h5py loads only where an HDF5 file is read or written
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"snapshot file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise UserError(f"{path} is not a depthscape snapshot file")
            return reader(f)
    except UserError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise UserError(f"{path} is not a readable snapshot file: "
                        f"{str(error).splitlines()[0][:160]}") from None
