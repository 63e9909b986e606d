"""The study's record of its Slurm units, and the lock it makes across the cluster.

``depthscape study --launcher slurm`` writes ``<out>/slurm/units.json``: every unit it
submitted, with its Slurm job id, its logs and the units it waits for; each unit that
finishes writes ``<out>/slurm/done/<unit>.json``. A process-level lock
(:func:`depthscape.core.locking.claim` on ``.study.lock``) only holds while its process
lives, on its own host; the units of a study submitted with ``--no-wait`` outlive the
command. So while any recorded unit is still queued or running (Slurm's queue, read with
``squeue``, is the same from every node), every other study command on the folder is
refused (:func:`refuse_if_in_flight`), on whichever host it starts.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from depthscape.core.atomic import atomic_write_text
from depthscape.core.errors import UserError
from depthscape.core.locking import LockHeld

try:  # optional (depthscape[cluster]): only the slurm launcher needs it, and says so
    from submitit.core.utils import pickle_load
except ImportError:  # pragma: no cover - checked with one line by check_launch
    pickle_load = None

#: The folder under the study folder with the record, the done markers and (by default) the
#: units' job logs.
SLURM_DIR = "slurm"

#: Slurm job states in which a unit still holds the study (queued, running or on its way back).
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED",
          "RESV_DEL_HOLD", "SPECIAL_EXIT"}


def record_path(out: Path) -> Path:
    return Path(out) / SLURM_DIR / "units.json"


def done_path(out: Path, unit: str) -> Path:
    """The marker a unit writes once its work is done (the study's own record of it)."""
    return Path(out) / SLURM_DIR / "done" / f"{unit}.json"


def read_record(out: Path) -> dict:
    """The folder's record of submitted units (empty where none was ever submitted)."""
    path = record_path(out)
    if not path.exists():
        return {"units": {}}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); move it away") from None
    if not isinstance(record, dict) or not isinstance(record.get("units"), dict):
        raise UserError(f"{path} is not a record of Slurm units; move it away")
    return record


def write_record(out: Path, record: dict) -> None:
    path = record_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def job_state(job_id: str) -> str | None:
    """Slurm's own record of one job (``scontrol show job``): its state, None where it
    knows no such job any more (or there is no ``scontrol``). squeue can miss a job for a
    moment while Slurm requeues it; this does not."""
    if shutil.which("scontrol") is None:
        return None
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                               text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\bJobState=(\S+)", shown.stdout) if shown.returncode == 0 else None
    return found.group(1) if found else None


def queue_states() -> dict[str, str]:
    """Slurm's queue: job id (``123`` or an array task's ``123_4``) -> state. Empty where
    there is no ``squeue`` (no cluster: nothing of ours can be queued)."""
    if shutil.which("squeue") is None:
        return {}
    try:
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"squeue failed ({exc}); cannot tell whether the study's units run") \
            from None
    if listed.returncode != 0:
        raise UserError(f"squeue failed: {listed.stderr.strip().splitlines()[-1:] or '?'}")
    states = {}
    for line in listed.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state
    return states


def job_error(result: str | None, stderr: str | None) -> str | None:
    """The last line of the error a job (one task of it) ended with: from submitit's result
    file where it holds one, else its log's last line (None: neither says anything)."""
    if result and Path(result).exists() and pickle_load is not None:
        with contextlib.suppress(Exception):  # a half-written result: read the log instead
            outcome, trace = pickle_load(result)
            if outcome == "error":
                lines = [line for line in str(trace).splitlines() if line.strip()]
                return lines[-1].strip() if lines else "an error without a message"
    if stderr and Path(stderr).exists():
        lines = [line for line in Path(stderr).read_text(errors="replace").splitlines()
                 if line.strip()]
        return lines[-1].strip() if lines else None
    return None


def in_flight(out: Path, queue: dict[str, str] | None = None) -> dict[str, str]:
    """The folder's recorded units still queued or running: unit -> Slurm state. A unit
    whose done marker is written has finished its work (its job may still be exiting)."""
    units = read_record(out)["units"]
    if not units:
        return {}
    queue = queue_states() if queue is None else queue
    return {name: queue[entry["job_id"]] for name, entry in units.items()
            if queue.get(entry.get("job_id")) in ACTIVE and not done_path(out, name).exists()}


def refuse_if_in_flight(out: Path) -> None:
    """Refuse (one line, exit 4) while any of the folder's Slurm units is queued or running."""
    flying = in_flight(out)
    if flying:
        first = sorted(flying)[:3]
        more = f" and {len(flying) - 3} more" if len(flying) > 3 else ""
        raise LockHeld(f"study folder {out} has Slurm units queued or running "
                       f"({', '.join(f'{u} {flying[u].lower()}' for u in first)}{more}); "
                       f"wait for them (depthscape study --status --out {out}) or scancel them")
