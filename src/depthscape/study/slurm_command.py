"""One depthscape command as one Slurm job of N nodes x T tasks, through submitit:
``depthscape train|landscape|sharpness ... --launcher slurm`` (the command line itself is
taken apart in :mod:`depthscape.cli._launch`).

Every task of the job runs the same command line in its own process, as torchrun's
processes would: :func:`task_environment` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` (the job's first node) and ``MASTER_PORT`` (from the
job id) from submitit's ``JobEnvironment``, and the command's own
:func:`depthscape.core.distributed.setup` joins the group (NCCL on ``cuda:LOCAL_RANK``, or
gloo on the CPU). So a landscape grid's points are dealt out to the ranks and resume from
the saved rows, a training is data-parallel, the sharpness' Hessian-vector products are
split: nothing of theirs knows it runs under Slurm. Each task's torch threads are the
job's CPUs per task (unless ``$OMP_NUM_THREADS`` says otherwise).

Preemption and time limits: :class:`~depthscape.study.requeue.GracefulRequeue` (a training
saves its exact state first); submitit's checkpoint then requeues the job with the command
line that resumes (``resume_argv``: ``--overwrite`` dropped, ``--resume`` added where the
command has it), so the requeued job continues: train from its resume checkpoint, a
landscape from its saved grid, sharpness from the runs it has measured.

The submitting side (:func:`launch`) checks everything first (one line each, nothing
written: :func:`depthscape.study.slurm_settings.check_settings`), submits, prints the job
id and its logs, then waits, one line per change of the job's state (``wait=False``:
returns at once), and ends with the command's own output (rank 0's), or with exit status
non-zero, the log and the last line of the error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.errors import UserError
from depthscape.study import jobs
from depthscape.study.requeue import GracefulRequeue
from depthscape.study.slurm_settings import POLL_S, SlurmSettings, check_settings

try:  # optional (depthscape[cluster]): only the slurm launcher needs it, and says so
    import submitit
    from submitit.core.utils import DelayedSubmission
except ImportError:  # pragma: no cover - checked with one line by check_settings
    submitit = None
    DelayedSubmission = None

_Checkpointable = submitit.helpers.Checkpointable if submitit is not None else object

#: MASTER_PORT is PORT_BASE + (job id mod PORT_SPAN): the same for every task of a job
#: (and for the job requeued), different for jobs that share a node.
PORT_BASE, PORT_SPAN = 20000, 40000
#: How a failed command's exit status is written in its job's error (read back by launch).
_EXIT = re.compile(r"ended with exit status (\d+)")


def master_port(job_id: str) -> int:
    """The port rank 0 listens on: from the job's id (an array task's ``123_4`` too)."""
    digits = re.sub(r"\D", "", str(job_id))
    return PORT_BASE + int(digits or 0) % PORT_SPAN


def task_environment(environment=None) -> dict[str, str]:
    """torch.distributed's ``env://`` variables for this task of the job (submitit's
    ``JobEnvironment``: global rank, local rank, task count, the nodes' host names)."""
    env = environment or submitit.JobEnvironment()
    return {"RANK": str(env.global_rank), "LOCAL_RANK": str(env.local_rank),
            "WORLD_SIZE": str(env.num_tasks),
            "LOCAL_WORLD_SIZE": str(env.num_tasks // max(1, env.num_nodes)),
            "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(master_port(env.job_id))}


class CommandFailed(RuntimeError):
    """The command ended with a non-zero exit status (its error line is in the log)."""


class CommandJob(_Checkpointable):
    """What every task of the job runs: ``run(argv)`` (the CLI's ``main``) in ``cwd``,
    as one of torchrun's processes. Its ``checkpoint`` (submitit's, on the time-limit or
    preemption signal) resubmits it with ``resume_argv``."""

    def __call__(self, run, argv: list[str], resume_argv: list[str], cwd: str,
                 threads: int) -> int:
        os.environ.update(task_environment())
        os.chdir(cwd)
        if not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(threads)
        name = f"depthscape {argv[0]}"
        with GracefulRequeue(name) as stop:
            code = int(run(list(argv)) or 0)
            if code == 130 and stop.signalled is not None:
                # stopped on the signal, its state saved: rank 0 requeues the job and exits;
                # the others end quietly (a failing task would end rank 0 before it requeues)
                stop.requeue("stopped")
                return code
        if code:
            raise CommandFailed(f"{name} ended with exit status {code}")
        return code

    def checkpoint(self, run, argv, resume_argv, cwd, threads):
        return DelayedSubmission(self, run, resume_argv, resume_argv, cwd, threads)


def launch(run, argv: list[str], resume_argv: list[str], settings: SlurmSettings, *,
           cwd: Path, log_dir: Path, shared: dict, wait: bool = True) -> int:
    """Submit ``argv`` (a command line of the CLI ``run``, less the launcher options) as
    one job; ``shared``: the paths every node must see (what -> path). Waits where asked."""
    check_settings(settings, {**shared, "job-log folder": log_dir}, log_dir / "check")
    ensure_writable_dir(log_dir, create=False)
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster="slurm")
    params = settings.parameters(argv[0])
    # one task failing ends the others, as torchrun does (else they wait in a collective)
    params.setdefault("slurm_srun_args", ["--kill-on-bad-exit=1"])
    executor.update_parameters(**params)
    try:
        job = executor.submit(CommandJob(), run, argv, resume_argv, str(cwd), settings.cpus)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        raise UserError(f"submitting to Slurm failed: {' '.join(str(exc).split())[:300]}") \
            from None
    shape = f"{settings.nodes} node(s) x {settings.tasks} task(s)"
    _say(f"job {job.job_id}: depthscape {' '.join(argv)} on {shape}; logs "
         f"{job.paths.folder} (rank 0: {job.paths.stdout.name}, {job.paths.stderr.name})")
    if not wait:
        _say(f"not waiting: see it with squeue -j {job.job_id}, stop it with scancel "
             f"{job.job_id}")
        return 0
    _wait(job.job_id)
    return _outcome(job)


def _wait(job_id: str) -> None:
    """Until the job is neither queued nor running; one line at each change of state."""
    began, seen = time.monotonic(), None
    try:
        while True:
            state = jobs.queue_states().get(job_id)
            if state not in jobs.ACTIVE:
                # gone from squeue: ended, or a moment of a requeue (seen: a requeued job
                # missed once); Slurm's own record decides, asked again one poll later
                time.sleep(float(os.environ.get("DEPTHSCAPE_SLURM_POLL_S", POLL_S)))
                state = jobs.job_state(job_id)
                if state not in jobs.ACTIVE:
                    return
            if state != seen:
                _say(f"job {job_id}: {state.lower()} ({time.monotonic() - began:.0f} s)")
                seen = state
            time.sleep(float(os.environ.get("DEPTHSCAPE_SLURM_POLL_S", POLL_S)))
    except KeyboardInterrupt:
        raise UserError(f"not waiting any more: job {job_id} goes on (see it with squeue -j "
                        f"{job_id}, stop it with scancel {job_id})", exit_code=130) from None


def _outcome(job) -> int:
    """0 and rank 0's output where every task succeeded; else the error (one line)."""
    tasks = [job.task(i) for i in range(job.num_tasks)]
    outcomes = [_result(task.paths.result_pickle) for task in tasks]
    if all(outcome == "success" for outcome in outcomes):
        out = tasks[0].paths.stdout
        text = out.read_text(errors="replace") if out.exists() else ""
        for line in text.splitlines():  # the command's own output, not submitit's log
            if not line.startswith("submitit "):
                print(line, flush=True)
        _say(f"job {job.job_id}: done")
        return 0
    error = _error_line(tasks[0].paths.stderr)
    failed = next((t for t, o in zip(tasks, outcomes) if o == "error"), tasks[0])
    trace = jobs.job_error(str(failed.paths.result_pickle), str(failed.paths.stderr))
    code = _EXIT.search(trace or "")
    if error is None:
        error = trace if any(o is not None for o in outcomes) else (
            f"it ended without a result (cancelled, or killed: {trace or 'see the log'})")
    raise UserError(f"Slurm job {job.job_id} failed (log {failed.paths.stderr}): {error}",
                    exit_code=int(code.group(1)) if code else 1)


def _result(path: Path) -> str | None:
    """``success`` or ``error`` (submitit's result file of a task), None where it has none."""
    if not path.exists():
        return None
    try:
        return jobs.pickle_load(path)[0]
    except Exception:  # noqa: BLE001 - a half-written result: as if none
        return None


def _error_line(stderr: Path) -> str | None:
    """The last ``depthscape: error:`` line rank 0 printed (its one-line error)."""
    if not stderr.exists():
        return None
    found = [line for line in stderr.read_text(errors="replace").splitlines()
             if line.startswith("depthscape: error: ")]
    return found[-1][len("depthscape: error: "):].strip() if found else None


def _say(message: str) -> None:
    print(f"[slurm] {message}", file=sys.stderr, flush=True)
