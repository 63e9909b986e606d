"""One writer per output: the lock (core/locking.py), and two real `depthscape train` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthscape.core.csvlog import read_log
from depthscape.core.errors import UserError
from depthscape.core.locking import LockHeld, claim, exclusive_lock

HOLD = ("import sys, time\nfrom depthscape.core.locking import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1], 'thing'):\n    print('held', flush=True)\n"
        "    time.sleep(60)\n")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_second_holder_gets_one_line_naming_the_first(tmp_path):
    lock = tmp_path / ".x.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as caught:
            with exclusive_lock(lock, "thing"):
                pass
        message = str(caught.value)
        assert f"PID {holder.pid} on " in message and " since " in message
        assert "\n" not in message and caught.value.exit_code != 0
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the file it left is taken over with a notice
    with exclusive_lock(lock, "thing"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_left_by_a_dead_process_is_taken_over_with_a_notice(tmp_path, capsys):
    lock = tmp_path / ".x.lock"
    dead = _dead_pid()
    lock.write_text(json.dumps({"pid": dead, "host": "somewhere", "since": 0}))
    with exclusive_lock(lock, "run resnet8"):
        pass
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taking over the lock of run resnet8" in err[0]
    assert f"PID {dead}" in err[0]


def test_group_claim_fails_for_every_member_where_the_owner_cannot_lock(tmp_path):
    lock = tmp_path / ".x.lock"
    with exclusive_lock(lock, "thing"):
        # a non-owner (torchrun rank > 0) fails too when the owner's agreement says no
        with pytest.raises(UserError, match="could not be locked"):
            with claim(lock, "thing", owner=False, agree=lambda ok: False):
                pass


# ---- two real processes -------------------------------------------------------------------

def _train_args(data: Path, out: Path, *extra: str, iterations: int = 24) -> list[str]:
    return [sys.executable, "-m", "depthscape", "train", "resnet", "8", "--dataset", str(data),
            "--out", str(out), "--scale", str(iterations / 64_000), "--log-every", "4",
            "--eval-every", "1000", "--test-subset", "8", "--no-progress", *extra]


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_trainings_of_one_run_second_is_refused(tiny_data, cache_dir, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "out"
    lock = out / "logs" / f".resnet8_{tiny_data.name}.lock"
    first = subprocess.Popen(_train_args(tiny_data, out, iterations=40), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lock.exists, first)
        second = subprocess.run(_train_args(tiny_data, out, iterations=40), env=env,
                                capture_output=True, text=True, timeout=300)
        resume = subprocess.run(_train_args(tiny_data, out, "--resume", iterations=40), env=env,
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the others tried; make it longer"
        for other in (second, resume):
            lines = other.stderr.strip().splitlines()
            assert other.returncode == LockHeld.exit_code, other.stderr
            assert len(lines) == 1, other.stderr
            assert f"PID {first.pid} on " in lines[0] and "since" in lines[0], lines[0]
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    iterations = [int(r["iteration"]) for r in read_log(out / "logs" / f"resnet8_{tiny_data.name}_log.csv")]
    assert iterations == list(range(4, 41, 4))  # each row once, in order
    assert not lock.exists()


def test_killed_overwrite_does_not_resume_the_old_run(tiny_data, cache_dir, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "out"
    name = f"resnet8_{tiny_data.name}"
    old = subprocess.run(_train_args(tiny_data, out, "--stop-after", "4", "--train-subset", "48",
                                     iterations=12), env=env, capture_output=True, text=True,
                         timeout=300)
    assert old.returncode == 0, old.stderr
    resume_file = out / "models" / f"resnet-8_{tiny_data.name}.resume.pth"
    assert resume_file.exists()
    # overwrite with other settings; kill it once it holds the run, before any checkpoint
    new_args = _train_args(tiny_data, out, "--train-subset", "60", "--checkpoint-every", "1000",
                           iterations=12)
    lock = out / "logs" / f".{name}.lock"
    new = subprocess.Popen([*new_args, "--overwrite"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: lock.exists() and not resume_file.exists(), new)
    finally:
        new.send_signal(signal.SIGKILL)
        new.communicate()
    assert new.returncode == -signal.SIGKILL
    assert not (out / "logs" / f"{name}_log.csv").exists() or \
        read_log(out / "logs" / f"{name}_log.csv") == []  # no row of the old run is left
    resumed = subprocess.run([*new_args, "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # the old run's checkpoint would refuse
    assert "taking over the lock" in resumed.stderr  # the killed run's lock file
    config = json.loads((out / "logs" / f"{name}_config.json").read_text())
    assert config["train"]["train_subset"] == 60
    assert [int(r["iteration"]) for r in read_log(out / "logs" / f"{name}_log.csv")] == [4, 8, 12]
