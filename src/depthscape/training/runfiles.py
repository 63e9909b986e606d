"""The files of a training run: what rank 0 writes, what the other ranks do not, the trace.

:class:`RunFiles` writes the run's config, its CSV log and its layer file (gradient flow;
started, or cut back to the checkpoint a resume continues from) and its checkpoints
(resumable, final); the other
ranks under torchrun get :class:`NoFiles`, which writes nothing, so the loop has no rank
branches. :data:`TRACE_ENV` is a debugging hook every rank writes to
(:func:`write_trace`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from depthscape.core.atomic import atomic_open, atomic_write_text
from depthscape.core.checkpoint import save_checkpoint
from depthscape.core.csvlog import (
    LOG_COLUMNS,
    DamagedLog,
    append_log,
    append_rows,
    init_log_file,
    truncate_log,
)
from depthscape.core.runs import RunPaths
from depthscape.training.layerstats import LAYER_COLUMNS

#: The layer file's columns that hold names, not numbers.
_LAYER_TEXT = ("layer", "stage")


class RunFiles:
    """The run's files (config, CSV log, layer file, checkpoints) as rank 0 writes them;
    ``layers``: the rows each log row adds to the layer file (0: no layer file)."""

    def __init__(self, paths: RunPaths, layers: int = 0):
        self.paths, self.layers = paths, layers

    def start(self, settings: dict, resumed_at: int | None, log_rows: int | None = None) -> int:
        """Write the config; start the log, or cut it back to the checkpoint's step.

        ``log_rows``: how many rows the checkpoint recorded as written (None for checkpoints
        before the record): a log that lost some of them is refused. Returns the rows kept.
        """
        kept = 0
        if resumed_at is not None and self.paths.log.exists():
            kept = truncate_log(self.paths.log, resumed_at, log_rows)
        elif resumed_at is not None and log_rows:
            raise DamagedLog(f"the training log {self.paths.log} is missing, but the checkpoint "
                             f"{self.paths.resume} was saved after {log_rows} row(s) of it; "
                             "restore it from a backup, or rerun with --overwrite instead of "
                             "--resume to start over")
        else:
            init_log_file(self.paths.log, LOG_COLUMNS)
        if self.layers:
            self._start_layers(resumed_at, log_rows)
        atomic_write_text(self.paths.config, json.dumps(settings, indent=2) + "\n")
        return kept

    def _start_layers(self, resumed_at: int | None, log_rows: int | None) -> None:
        """Start the layer file, or cut it back to the checkpoint's step (it must hold the
        checkpoint's log rows' layer rows, no fewer: a resume never leaves a gap)."""
        path = self.paths.layers
        expected = None if log_rows is None else log_rows * self.layers
        if resumed_at is not None and path.exists():
            truncate_log(path, resumed_at, expected, text=_LAYER_TEXT, repeats=True)
        elif resumed_at is not None and log_rows:
            raise DamagedLog(f"the layer file {path} is missing, but the checkpoint "
                             f"{self.paths.resume} was saved after {log_rows} log row(s) of "
                             "it; restore it from a backup, or rerun with --overwrite instead "
                             "of --resume to start over")
        else:
            init_log_file(path, LAYER_COLUMNS)

    def append_row(self, row: dict) -> None:
        append_log(self.paths.log, [row[c] for c in LOG_COLUMNS])

    def append_layer_rows(self, rows: list[list]) -> None:
        """One log row's rows of the layer file (:func:`~depthscape.training.layerstats.layer_rows`)."""
        append_rows(self.paths.layers, rows)

    def save_resume(self, payload: dict) -> None:
        save_checkpoint(self.paths.resume, payload)

    def save_final(self, payload: dict) -> None:
        save_checkpoint(self.paths.final, payload)
        self.paths.resume.unlink(missing_ok=True)


class NoFiles(RunFiles):
    """What the other ranks write: nothing (rank 0 writes for every rank)."""

    def start(self, settings: dict, resumed_at: int | None, log_rows: int | None = None) -> int:
        return log_rows or 0  # rank 0 checks the log; the count only goes into its checkpoint

    def append_row(self, row: dict) -> None:
        pass

    def append_layer_rows(self, rows: list[list]) -> None:
        pass

    def save_resume(self, payload: dict) -> None:
        pass

    def save_final(self, payload: dict) -> None:
        pass


#: Debugging/testing hook: where set to a folder, each rank appends the sample indices it
#: trained on, one tensor per step, to ``<folder>/<run>.rank<r>.pt``.
TRACE_ENV = "DEPTHSCAPE_TRACE_BATCHES"


def write_trace(steps: list[torch.Tensor], run_name: str, rank: int) -> None:
    """Append this rank's traced steps to its file under :data:`TRACE_ENV`'s folder."""
    path = Path(os.environ[TRACE_ENV]) / f"{run_name}.rank{rank}.pt"
    earlier = torch.load(path) if path.exists() else []
    with atomic_open(path, "wb") as handle:
        torch.save(earlier + steps, handle)
