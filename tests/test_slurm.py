"""`depthscape study --launcher slurm` against a real Slurm (scripts/local_slurm.sh): the smoke
study through Slurm equals the local one file for file, with a training unit signalled and
requeued mid-run; a failing unit is named and alone resubmitted; --no-wait, --status, and the
folder held across the cluster. One Slurm study is shared by the tests (module fixtures).

The bad-input tests at the end need no cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _study_compare import study_differences
from _threads import torch_threads
from conftest import write_image_folder

from depthscape.cli import main
from depthscape.study import jobs, slurm, slurm_settings
from depthscape.study.runner import StudyConfig, run_study, start_study
from depthscape.study.units import plan_units

MODELS = ["resnet8", "plain8"]


def _slurm_reason() -> str | None:
    """Why the slurm tests cannot run here (None: they can)."""
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH (start a one-node Slurm with scripts/local_slurm.sh)"
    if slurm.submitit is None:
        return "submitit is not installed (pip install 'depthscape[cluster]')"
    listed = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if listed.returncode != 0 or not any(s.strip().rstrip("*") in ("idle", "mix", "alloc")
                                         for s in listed.stdout.split()):
        return f"Slurm has no node up (sinfo: {(listed.stdout + listed.stderr).strip()[:80]})"
    return None


needs_slurm = pytest.mark.skipif(_slurm_reason() is not None, reason=str(_slurm_reason()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurmdata")
    return write_image_folder(root / "tiny"), root / "cache"


def _study(out: Path, tiny, *extra: str) -> int:
    data, cache = tiny
    return main(["study", "--budget", "smoke", "--models", *MODELS, "--dataset", str(data),
                 "--cache-dir", str(cache), "--out", str(out), "--threads", "1",
                 "--no-progress", *extra])


def _slurm(out: Path, tiny, *extra: str) -> int:
    return _study(out, tiny, "--launcher", "slurm", "--slurm-allow-node-local", *extra)


@pytest.fixture(scope="module")
def local(tiny, tmp_path_factory):
    """The smoke study run here, one torch thread (as each Slurm unit)."""
    data, cache = tiny
    out = tmp_path_factory.mktemp("local") / "study"
    with torch_threads(1):
        run_study(StudyConfig(budget="smoke", out_dir=str(out), dataset=str(data),
                              cache_dir=str(cache), models=MODELS, progress=False, threads=1))
    return out


class _Requeuer(threading.Thread):
    """Sends resnet8's training unit Slurm's time-limit signal (USR2, as submitit's own
    test hook does) once its log has a row and before it finishes; times the requeue."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.signalled, self.back, self.stop = out, None, None, False
        self.log = out / "logs" / "resnet8_tiny_log.csv"
        self.final = out / "models" / "resnet-8_tiny.pth"

    def run(self):
        job = None
        while not self.stop and self.signalled is None:
            if job is None and jobs.record_path(self.out).exists():
                entry = jobs.read_record(self.out)["units"].get("training-resnet8-s0")
                job = entry and entry["job_id"]
            if job and self.log.exists() and len(self.log.read_text().splitlines()) >= 2 \
                    and not self.final.exists():
                subprocess.run(["scancel", "--signal=USR2", job], check=False)
                self.signalled = time.perf_counter()
            time.sleep(0.02)
        requeued = False
        while not self.stop and job and self.back is None:  # back in the queue, then running
            state = jobs.queue_states().get(job)
            if state == "PENDING":
                # Slurm holds a requeued job ~2 min (Reason=BeginTime) by design: released
                # here so the test stays short (docs/cluster.md gives both times)
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                               check=False, capture_output=True)
                requeued = True
            elif state == "RUNNING" and requeued:
                self.back = time.perf_counter()
            time.sleep(0.05)


@pytest.fixture(scope="module")
def on_slurm(tiny, tmp_path_factory):
    """The same smoke study through the one-node Slurm, its resnet8 training requeued."""
    if _slurm_reason():
        pytest.skip(_slurm_reason())
    out = tmp_path_factory.mktemp("slurm") / "study"
    requeuer = _Requeuer(out)
    requeuer.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("DEPTHSCAPE_SLURM_POLL_S", "0.3")
    began = time.perf_counter()
    try:
        code = _slurm(out, tiny)
    finally:
        requeuer.stop = True
        requeuer.join(5)
    seconds = time.perf_counter() - began
    lost = (requeuer.back - requeuer.signalled) if requeuer.back and requeuer.signalled else None
    print(f"\nslurm smoke study: {seconds:.1f} s; requeue: back running "
          f"{lost and round(lost, 1)} s after the signal")
    yield out, code, requeuer
    mp.undo()


@pytest.mark.slurm
@needs_slurm
def test_the_study_through_slurm_equals_the_local_one_after_a_requeue(local, on_slurm):
    out, code, requeuer = on_slurm
    assert code == 0
    assert requeuer.signalled is not None, "the training finished before it could be signalled"
    record = jobs.read_record(out)["units"]
    log = Path(record["training-resnet8-s0"]["stderr"]).read_text()
    assert "saving to requeue" in log and "requeued" in log  # it stopped, saved, went back
    assert requeuer.back is not None  # and ran again
    assert "interrupted at iteration" in log
    assert study_differences(local, out) == []
    units = plan_units(start_study(StudyConfig(budget="smoke", out_dir=str(out),
                                               models=MODELS), write=False))
    assert {u.name for u in units} == set(record) and len(units) == 15
    assert all(jobs.done_path(out, u.name).exists() for u in units)


def _job_ids(out: Path) -> dict[str, str]:
    return {name: e["job_id"] for name, e in jobs.read_record(out)["units"].items()}


@pytest.mark.slurm
@needs_slurm
def test_a_failed_unit_is_named_and_a_rerun_resubmits_only_it(local, on_slurm, tiny, capsys):
    out, _, _ = on_slurm
    target = out / "sharpness" / "plainnet8_tiny.json"
    target.unlink()
    target.mkdir()  # a folder where the unit's file goes: its write fails
    jobs.done_path(out, "sharpness-plain8").unlink()
    before = _job_ids(out)
    capsys.readouterr()
    assert _slurm(out, tiny) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "unit sharpness-plain8 failed" in x)
    entry = jobs.read_record(out)["units"]["sharpness-plain8"]
    assert entry["stderr"] in line and "plainnet8_tiny.json" in line  # its log, its error
    assert "1 unit(s) failed (sharpness-plain8)" in err and "1 unit(s) after them" in err
    after = _job_ids(out)
    assert {n for n in after if after[n] != before[n]} == {"sharpness-plain8", "final"}
    target.rmdir()
    assert _slurm(out, tiny) == 0
    again = _job_ids(out)
    assert {n for n in again if again[n] != after[n]} == {"sharpness-plain8", "final"}
    assert study_differences(local, out) == []


@pytest.mark.slurm
@needs_slurm
def test_no_wait_then_status_and_the_folder_is_held_across_the_cluster(local, on_slurm, tiny,
                                                                      capsys):
    out, _, _ = on_slurm
    jobs.done_path(out, "landscapes-plain8").unlink()
    before = _job_ids(out)
    assert _slurm(out, tiny, "--no-wait") == 0
    after = _job_ids(out)
    assert {n for n in after if after[n] != before[n]} == {"landscapes-plain8",
                                                            "curvature-plain8", "final"}
    assert jobs.in_flight(out)  # the final unit waits for the other two at least
    capsys.readouterr()
    # a second study, here or on any node, is refused while they are queued or running
    assert _study(out, tiny) == 4 and _slurm(out, tiny) == 4
    err = capsys.readouterr().err
    assert "queued or running" in err and "--status" in err and err.count("\n") == 2
    deadline = time.monotonic() + 180
    while True:
        assert main(["study", "--status", "--out", str(out)]) == 0
        text = capsys.readouterr().out
        if text.strip().splitlines()[-1] == "15 done":
            break
        assert "pending" in text or "running" in text or "completing" in text
        assert time.monotonic() < deadline, text
        time.sleep(0.5)
    assert re.search(r"^landscapes-plain8 +done +job", text, re.M)
    assert study_differences(local, out) == []


@needs_slurm
def test_job_state_is_slurms_own_record_of_a_job_through_its_end():
    """jobs.job_state reads scontrol: active while the job is queued or runs, its end state
    once Slurm ended it (where squeue no longer lists it), None for a job Slurm never had."""
    submitted = subprocess.run(["sbatch", "--parsable", "--job-name", "ds-job-state",
                                "--output", "/dev/null", "--wrap", "sleep 120"],
                               capture_output=True, text=True, check=True)
    job = submitted.stdout.strip().split(";")[0]
    try:
        assert jobs.job_state(job) in jobs.ACTIVE
    finally:
        subprocess.run(["scancel", job], check=False)
    deadline, state = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        state = jobs.job_state(job)
        if state not in jobs.ACTIVE:
            break
        time.sleep(0.2)
    assert state == "CANCELLED"
    assert jobs.queue_states().get(job) not in jobs.ACTIVE
    assert jobs.job_state("999999999") is None


@needs_slurm
def test_a_unit_squeue_misses_is_asked_of_slurms_record_before_it_counts_as_failed(tmp_path,
                                                                                  monkeypatch):
    """The fresh-clone CI once saw a requeued training missing from squeue for a poll and the
    study reported it failed: a unit whose job squeue does not list is active while Slurm's
    own record (scontrol) says so, failed once that record says the job ended."""
    submitted = subprocess.run(["sbatch", "--parsable", "--job-name", "ds-missed",
                                "--output", "/dev/null", "--wrap", "sleep 120"],
                               capture_output=True, text=True, check=True)
    job = submitted.stdout.strip().split(";")[0]
    record = {"units": {"training-x": {"job_id": job, "stderr": None, "result": None}}}
    monkeypatch.setattr(jobs, "queue_states", dict)  # squeue's answer, missing the job
    try:
        state = slurm.unit_states(tmp_path, ["training-x"], record)
        assert state["training-x"].state in {s.lower() for s in jobs.ACTIVE}
    finally:
        subprocess.run(["scancel", job], check=False)
    deadline = time.monotonic() + 60
    while jobs.job_state(job) in jobs.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slurm.unit_states(tmp_path, ["training-x"], record)["training-x"].state == "failed"
    # a queue taken as it is (a launch's first look) asks nothing more
    assert slurm.unit_states(tmp_path, ["training-x"], record, queue={})[
        "training-x"].state == "failed"


def test_job_state_without_scontrol_is_none(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no scontrol on PATH
    assert jobs.job_state("1") is None


# ---- bad input: one line, before anything is submitted (no cluster needed) -------------


def test_bad_slurm_input_is_one_line_and_leaves_the_folder_alone(tiny, tmp_path, capsys,
                                                                 monkeypatch):
    out = tmp_path / "study"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")

    def refused(*extra, code=2):
        assert _study(out, tiny, "--launcher", "slurm", *extra) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
        return err

    monkeypatch.setattr(slurm_settings, "submitit", None)
    assert "depthscape[cluster]" in refused("--slurm-allow-node-local")
    monkeypatch.undo()
    if slurm.submitit is not None:
        monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
        assert "needs Slurm's sbatch" in refused("--slurm-allow-node-local")
        monkeypatch.undo()
    if shutil.which("sbatch") and slurm.submitit is not None:
        assert "under /tmp" in refused()  # tmp_path: other nodes cannot see it
        assert "time limit" in refused("--slurm-allow-node-local", "--slurm-time", "soon")
        assert "invalid partition" in refused("--slurm-allow-node-local",
                                              "--slurm-partition", "nosuchpartition").lower()
        assert "submitit refuses" in refused("--slurm-allow-node-local", "--slurm-arg",
                                             "no_such_parameter=1")
    assert "KEY=VALUE" in refused("--slurm-arg", "nokey")


def test_slurm_settings_come_from_toml_env_and_options(tmp_path):
    toml = tmp_path / "cluster.toml"
    toml.write_text('[slurm]\npartition = "gpu"\ntime = "1:30:00"\ncpus = 4\n'
                    'args = {slurm_mail_type = "END"}\n')
    settings = slurm.settings_from({"cpus": 8, "args": ["slurm_signal_delay_s=120"]}, str(toml),
                                   environ={"DEPTHSCAPE_SLURM_QOS": "high",
                                            "DEPTHSCAPE_SLURM_CPUS": "2"})
    assert (settings.partition, settings.qos, settings.time_min, settings.cpus) == (
        "gpu", "high", 90, 8)
    params = settings.parameters("final")
    assert params["slurm_mail_type"] == "END" and params["slurm_signal_delay_s"] == 120
    assert params["slurm_partition"] == "gpu" and params["name"] == "ds-final"
    assert slurm.parse_time("2-00:00:00") == 2880 and slurm.parse_time("45") == 45
    assert slurm.node_local(Path("/dev/shm/x")) == "/dev/shm"
    assert slurm.node_local(Path("/home/me/study")) is None


def test_units_and_their_dependencies(tmp_path):
    study = start_study(StudyConfig(budget="smoke", seeds=2, out_dir=str(tmp_path),
                                    models=MODELS, density=False), write=False)
    units = {u.name: u for u in plan_units(study)}
    assert [n for n in units if n.startswith("training")] == [
        "training-resnet8-s0", "training-plain8-s0", "training-resnet8-s1", "training-plain8-s1"]
    assert units["sharpness-plain8"].needs == ("training-plain8-s0", "training-plain8-s1")
    assert units["curvature-resnet8"].needs[-1] == "landscapes-resnet8"
    assert not any(n.startswith("density") for n in units)
    assert set(units["final"].needs) == set(units) - {"final"}
    assert not (tmp_path / "study.json").exists()  # a unit's view: the submitter writes it
