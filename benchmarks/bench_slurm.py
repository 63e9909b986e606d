"""The smoke study here and through Slurm, in one go: wall time of each, the ratio, and
whether the two folders are the same study (tests/_study_compare.py).

Both are the same command (``depthscape study --budget smoke --models resnet8 plain8`` on a
tiny generated ImageFolder dataset, one torch thread each), run as subprocesses from a cold
start: ``--launcher local`` and ``--launcher slurm`` (one CPU per unit, the job logs in the
study folder). The Slurm time is from the command's start to its return, so it holds the
submission, the queue, each unit's start-up (a Python with torch, the dataset read from the
cache) and the final unit; the ratio is slurm / local. ``--requeue`` also signals the resnet8
training unit mid-run (USR2, Slurm's time-limit signal) and prints how long the requeued
unit waited before it ran again (Slurm holds a requeued job about two minutes, Reason
BeginTime; ``--release`` lets it go at once with ``scontrol update StartTime=now``).

Needs a running Slurm (``bash scripts/local_slurm.sh``) and submitit.

    python benchmarks/bench_slurm.py [--models resnet8 plain8] [--work DIR] [--requeue [--release]]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _study_compare import study_differences  # noqa: E402
from conftest import write_image_folder  # noqa: E402

from depthscape.study import jobs  # noqa: E402


def study_command(out: Path, data: Path, cache: Path, models: list[str], *extra: str) -> list:
    return [sys.executable, "-m", "depthscape", "study", "--budget", "smoke", "--models",
            *models, "--dataset", str(data), "--cache-dir", str(cache), "--out", str(out),
            "--threads", "1", "--no-progress", *extra]


def timed(command: list, env: dict) -> float:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"bench_slurm: {' '.join(command[3:6])} failed ({done.returncode}):\n"
                 f"{done.stderr[-2000:]}")
    return seconds


def requeue_watch(out: Path, model_log: Path, release: bool) -> dict:
    """Signal the first training unit once its log has a row; time its return."""
    found: dict = {}
    job = None
    while "signalled" not in found:
        if job is None and jobs.record_path(out).exists():
            entry = jobs.read_record(out)["units"].get("training-resnet8-s0")
            job = entry and entry["job_id"]
        if job and model_log.exists() and len(model_log.read_text().splitlines()) >= 2:
            subprocess.run(["scancel", "--signal=USR2", job], check=False)
            found["signalled"] = time.perf_counter()
        time.sleep(0.02)
    requeued = False
    while "back" not in found:
        state = jobs.queue_states().get(job)
        if state == "PENDING":
            requeued = True
            if release:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                               check=False, capture_output=True)
        elif state == "RUNNING" and requeued:
            found["back"] = time.perf_counter()
        elif state is None and requeued:
            break
        time.sleep(0.05)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "plain8"])
    parser.add_argument("--work", default=None, help="folder for both studies (default: a temp)")
    parser.add_argument("--requeue", action="store_true",
                        help="signal the resnet8 training unit mid-run and time the requeue")
    parser.add_argument("--release", action="store_true",
                        help="release the requeued unit at once (scontrol update StartTime=now)")
    args = parser.parse_args(argv)
    if shutil.which("sinfo") is None:
        sys.exit("bench_slurm: no Slurm here (start one with bash scripts/local_slurm.sh)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-slurm-"))
    data = write_image_folder(work / "tiny")
    cache = work / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEPTHSCAPE_SLURM_POLL_S": "0.5",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    # the cache filled once, outside both timings
    timed(study_command(work / "warm", data, cache, args.models[:1], "--no-landscapes",
                        "--no-sharpness", "--no-trajectories", "--no-density",
                        "--no-flatness"), env)
    local = timed(study_command(work / "local", data, cache, args.models), env)
    slurm_cmd = study_command(work / "slurm", data, cache, args.models, "--launcher", "slurm",
                              "--slurm-allow-node-local")
    watched: dict = {}
    if args.requeue:
        log = work / "slurm" / "logs" / "resnet8_tiny_log.csv"
        thread = threading.Thread(target=lambda: watched.update(
            requeue_watch(work / "slurm", log, args.release)), daemon=True)
        thread.start()
    slurm = timed(slurm_cmd, env)
    differences = study_differences(work / "local", work / "slurm")
    print(f"smoke study, {len(args.models)} models, one thread per unit, "
          f"{os.cpu_count()} CPUs, one-node Slurm")
    print(f"local   {local:7.1f} s")
    print(f"slurm   {slurm:7.1f} s   ratio {slurm / local:.2f}x   overhead {slurm - local:.1f} s")
    if args.requeue:
        back = watched.get("back")
        waited = f"{back - watched['signalled']:.1f} s" if back else "not seen"
        how = "released at once" if args.release else "Slurm's own hold"
        print(f"requeue: the signalled training ran again {waited} after the signal ({how})")
    print("same study:", "yes" if not differences else f"NO: {differences[:5]}")
    return 0 if not differences else 1


if __name__ == "__main__":
    sys.exit(main())
