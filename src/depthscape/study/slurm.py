"""``depthscape study --launcher slurm``: the study's units (:mod:`depthscape.study.units`)
submitted to a Slurm cluster through submitit.

The trainings go as one job array, each per-model analysis unit as a job that waits for
its trainings (``afterok``), the final unit as a job that waits for all of them. The
command waits by default with one progress bar over the units (``--no-wait`` returns once
they are submitted). Rerunning it (or ``depthscape study --status``) reads the folder's
record (:mod:`depthscape.study.jobs`): a unit whose done marker is there is never
submitted again; one that failed or was never submitted is, with every unit after it.

Preemption and time limits: submitit sends the job its signal (USR2) before the limit. A
training unit hands it to the training loop, which saves its exact resumable state at the
next step boundary; then submitit's checkpoint/requeue (:class:`StudyUnitJob.checkpoint`)
puts the same unit back in the queue, and it resumes from that state. Any other unit is
requeued at once and continues from what it had saved (finished surfaces, measured runs).

Everything a launch checks (submitit and ``sbatch`` present, the output folder visible to
other nodes, the partition, account, QoS and time limit accepted by ``sbatch
--test-only``) is checked before anything is written or submitted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.errors import UserError
from depthscape.study import jobs, runner
from depthscape.study.requeue import GracefulRequeue
from depthscape.study.slurm_settings import (  # noqa: F401  (node_local, parse_time: re-exported)
    POLL_S,
    SlurmSettings,
    check_launch,
    node_local,
    parse_time,
    settings_from,
    single_task,
)
from depthscape.study.units import Unit, plan_units, run_unit

try:  # optional (depthscape[cluster]): only the slurm launcher needs it, and says so
    import submitit
except ImportError:  # pragma: no cover - checked with one line by check_launch
    submitit = None

_Checkpointable = submitit.helpers.Checkpointable if submitit is not None else object


class StudyUnitJob(_Checkpointable):
    """The callable each job runs: :func:`depthscape.study.units.run_unit` for one unit,
    with submitit's preemption/time-limit signal turned into the training's own graceful
    stop (exact state saved) before submitit's checkpoint/requeue
    (:class:`~depthscape.study.requeue.GracefulRequeue`). ``checkpoint`` (from submitit's
    ``Checkpointable``) resubmits the same unit, which then resumes."""

    def __call__(self, config, unit: Unit) -> dict:
        with GracefulRequeue(unit.name) as stop:
            try:
                return run_unit(config, unit)
            except UserError as error:
                if error.exit_code == 130:  # checkpoint() + scontrol requeue + exit
                    stop.requeue(str(error).split(";")[0])
                raise


# ---- states -------------------------------------------------------------------------------


@dataclass
class UnitState:
    name: str
    state: str  # done, pending, running, ..., failed, cancelled, missing
    job_id: str | None = None
    log: str | None = None
    error: str | None = None  # the last line of its error


def unit_states(out: Path, units: list[str], record: dict,
                queue: dict[str, str] | None = None) -> dict[str, UnitState]:
    """Where each unit stands: done (its marker), queued or running (Slurm's queue),
    failed (ended without its marker: the error submitit recorded, or its log's last line),
    cancelled (a unit it needs failed), missing (never submitted)."""
    asked = queue is None  # a queue passed in (a launch's first look: {}) is taken as it is
    queue = jobs.queue_states() if asked else queue
    entries = record.get("units", {})
    states = {}
    for name in units:
        entry = entries.get(name, {})
        job = entry.get("job_id")
        if jobs.done_path(out, name).exists():
            states[name] = UnitState(name, "done", job, entry.get("stderr"))
        elif job is None:
            states[name] = UnitState(name, "missing")
        elif (state := _active_state(job, queue, asked)) is not None:
            states[name] = UnitState(name, state.lower(), job, entry.get("stderr"))
        else:
            states[name] = UnitState(name, "failed", job, entry.get("stderr"),
                                     jobs.job_error(entry.get("result"), entry.get("stderr")))
    for name in units:  # a unit that ended unrun because one it needs failed
        needs = entries.get(name, {}).get("needs", [])
        if states[name].state == "failed" and any(
                states.get(n) and states[n].state in ("failed", "cancelled") for n in needs):
            states[name].state = "cancelled"
    return states


def _active_state(job: str, queue: dict[str, str], ask: bool) -> str | None:
    """The job's state where it still holds the study, else None. squeue (``queue``) can
    miss a job for a moment while Slurm requeues it (the fresh-clone CI's requeue test once
    saw a requeued training reported failed): a job it does not list as active is asked of
    Slurm's own record (:func:`jobs.job_state`, where ``ask``) before it counts as ended."""
    state = queue.get(job)
    if state in jobs.ACTIVE or not ask:
        return state if state in jobs.ACTIVE else None
    state = jobs.job_state(job)
    return state if state in jobs.ACTIVE else None


# ---- launching ----------------------------------------------------------------------------


def launch(config, settings: SlurmSettings, wait: bool = True) -> int:
    """Submit what the study ``config`` still needs (see the module doc); wait where asked."""
    out = ensure_writable_dir(config.out_dir, create=False)
    settings = single_task(settings)
    check_launch(settings, config)  # before the folder is made or written
    out = ensure_writable_dir(config.out_dir)
    with runner.claim_study(out):
        # threads explicit (float sums depend on them); the units print no progress bars
        config = replace(config, out_dir=str(out), threads=config.threads or settings.cpus)
        study = runner.start_study(config)
        # the units resolve the precisions as this call did: from the study.json just written
        config = replace(config, progress=False)
        runner.run_stages(study, [s for s in runner.all_stages() if s.name == "data"])
        units = plan_units(study)
        record = jobs.read_record(out)
        states = unit_states(out, [u.name for u in units], record, queue={})
        redo = _to_submit(units, states)
        if not redo:
            _say("every unit is done")
            _report(out)
            return 0
        log_dir = Path(settings.log_dir or out / jobs.SLURM_DIR / "logs")
        submitted = _submit(config, settings, [u for u in units if u.name in redo], states,
                            record, out, log_dir)
        _say(f"submitted {len(submitted)} unit(s) (job logs in {log_dir}); "
             f"{len(units) - len(submitted)} already done")
        width = max(len(name) for name in submitted)
        for name in submitted:  # where each unit's log is
            entry = record["units"][name]
            print(f"  {name:<{width}}  job {entry['job_id']:<8}  {entry['stderr']}", flush=True)
        if not wait:
            _say(f"not waiting: see where they stand with depthscape study --status --out {out}")
            return 0
        return _wait(out, [u.name for u in units], submitted, progress=study.config.progress)


def _to_submit(units: list[Unit], states: dict[str, UnitState]) -> set[str]:
    """The units not done, and every unit after one of them (it reads what they make)."""
    redo = {u.name for u in units if states[u.name].state != "done"}
    for unit in units:  # submission order: a unit comes after those it needs
        if any(need in redo for need in unit.needs):
            redo.add(unit.name)
    return redo


def _submit(config, settings: SlurmSettings, units: list[Unit], states: dict, record: dict,
            out: Path, log_dir: Path) -> list[str]:
    """Submit ``units`` (the trainings as one array), each after the units it needs that are
    being submitted now; the record is written after each submission."""
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster="slurm")
    job_ids: dict[str, str] = {}
    entries = record.setdefault("units", {})
    record["config"] = {"out_dir": str(out), "models": list(config.models or []),
                        "seeds": config.seeds, "budget": config.budget}

    def remember(unit: Unit, job) -> None:
        job_ids[unit.name] = job.job_id
        entries[unit.name] = {"job_id": job.job_id, "stderr": str(job.paths.stderr),
                              "stdout": str(job.paths.stdout),
                              "result": str(job.paths.result_pickle),
                              "needs": list(unit.needs), "submitted": time.time()}

    for unit in units:  # a unit submitted again is not done until it says so again
        jobs.done_path(out, unit.name).unlink(missing_ok=True)
    trainings = [u for u in units if u.stage == "training"]
    try:
        if trainings:
            executor.update_parameters(**settings.parameters("training"))
            array = executor.map_array(StudyUnitJob(), [config] * len(trainings), trainings)
            for unit, job in zip(trainings, array):
                remember(unit, job)
            jobs.write_record(out, record)
        for unit in units:
            if unit.stage == "training":
                continue
            waits = [job_ids[n] for n in unit.needs if n in job_ids]
            extra = dict(settings.args.get("slurm_additional_parameters") or {})
            if waits:  # a unit whose needs fail is cancelled by Slurm, not left waiting
                extra.update(dependency="afterok:" + ":".join(waits), kill_on_invalid_dep="yes")
            executor.update_parameters(**{**settings.parameters(unit.name),
                                          "slurm_additional_parameters": extra})
            remember(unit, executor.submit(StudyUnitJob(), config, unit))
            jobs.write_record(out, record)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        jobs.write_record(out, record)
        raise UserError(f"submitting to Slurm failed after {len(job_ids)} unit(s): "
                        f"{' '.join(str(exc).split())[:300]}; rerun to submit the rest") from None
    return list(job_ids)


def _wait(out: Path, units: list[str], submitted: list[str], progress: bool = True) -> int:
    """One progress bar over the submitted units until none is queued or running."""
    bar = tqdm(total=len(submitted), desc="slurm units", unit="unit", disable=not progress,
               dynamic_ncols=True)
    try:
        while True:
            states = unit_states(out, units, jobs.read_record(out))
            mine = [states[name] for name in submitted]
            counts: dict[str, int] = {}
            for state in mine:
                counts[state.state] = counts.get(state.state, 0) + 1
            bar.n = counts.get("done", 0)
            bar.set_postfix_str(", ".join(f"{n} {s}" for s, n in sorted(counts.items())
                                          if s != "done"))
            bar.refresh()
            if not any(s.state in {a.lower() for a in jobs.ACTIVE} for s in mine):
                break
            time.sleep(float(os.environ.get("DEPTHSCAPE_SLURM_POLL_S", POLL_S)))
    finally:
        bar.close()
    return _outcome(out, states, submitted)


def _outcome(out: Path, states: dict[str, UnitState], names: list[str]) -> int:
    failed = [states[n] for n in names if states[n].state == "failed"]
    cancelled = [states[n] for n in names if states[n].state == "cancelled"]
    for state in failed:
        print(f"depthscape: unit {state.name} failed (job {state.job_id}, log {state.log}): "
              f"{state.error or 'no error recorded'}", file=sys.stderr, flush=True)
    if failed or cancelled:
        skipped = f"; {len(cancelled)} unit(s) after them not run" if cancelled else ""
        raise UserError(f"{len(failed)} unit(s) failed ({', '.join(s.name for s in failed)})"
                        f"{skipped}; rerun the same command to resubmit them", exit_code=1)
    _report(out)
    return 0


def _report(out: Path) -> None:
    paths = runner.study_paths(out)
    print(f"report: {paths['report_md']}\n        {paths['report_html']}", flush=True)


def status(out_dir: str) -> int:
    """``depthscape study --status``: each recorded unit's state and log; 0 where every unit
    is done or on its way, 1 where some failed (rerun the study command to resubmit them)."""
    out = Path(out_dir)
    record = jobs.read_record(out)
    names = list(record["units"])
    if not names:
        raise UserError(f"{out} has no Slurm units recorded (it was not run with "
                        "--launcher slurm)")
    states = unit_states(out, names, record)
    width = max(len(n) for n in names)
    for name in names:
        state = states[name]
        tail = f"  {state.error}" if state.error and state.state == "failed" else ""
        print(f"{name:<{width}}  {state.state:<9}  job {state.job_id or '-':<8}  "
              f"{state.log or ''}{tail}")
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state.state] = counts.get(state.state, 0) + 1
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
    if counts.get("failed") or counts.get("cancelled"):
        if not jobs.in_flight(out):
            raise UserError(f"{counts.get('failed', 0)} unit(s) failed: rerun the study "
                            "command to resubmit them", exit_code=1)
    return 0


def _say(message: str) -> None:
    print(f"[study] {message}", flush=True)
