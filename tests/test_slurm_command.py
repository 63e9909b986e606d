"""``--launcher slurm`` on train, landscape and sharpness against a real Slurm
(scripts/local_slurm.sh): one command as one job of 1 node x 2 tasks on the CPU (gloo).

- a small landscape through Slurm (``--no-wait``) writes the very surface the same command
  writes locally in one process (arrays equal exactly: the grid is bit-identical for any
  rank count, tests/test_landscape_resume.py);
- a training job signalled part-way (Slurm's time-limit signal) saves, is requeued with
  ``--resume`` in place of ``--overwrite`` and ends as the same command under torchrun
  with 2 processes, uninterrupted (weights and log rows equal exactly);
- a failing job is reported with its log and its error line, its exit status the command's;
- bad input is refused in one line before anything is submitted.

The tests after the Slurm ones need no cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _landscape_tools import calibrated_model, tiny_dataset, write_checkpoint
from _threads import torch_threads
from conftest import write_image_folder
from test_slurm import _slurm_reason, needs_slurm

from depthscape.analysis.landscape import read_surface
from depthscape.cli import build_parser, main
from depthscape.cli._launch import without
from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.csvlog import read_log
from depthscape.study import jobs, slurm_command, slurm_settings

ON_SLURM = ["--launcher", "slurm", "--slurm-tasks-per-node", "2", "--slurm-allow-node-local"]
SURFACE = ["--resolution", "4", "--workers", "1", "--batch-size", "8", "--no-plots",
           "--no-progress"]
#: 16 iterations of ResNet-8 (a CSV row each: a signal stops the 2 ranks at the next step)
TRAIN = ["resnet", "8", "--scale", repr(16 / 64_000), "--log-every", "1", "--eval-every", "8",
         "--checkpoint-every", "100", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny ImageFolder, its cache, and a ResNet-8 checkpoint trained on it."""
    root = tmp_path_factory.mktemp("command")
    data = write_image_folder(root / "data", train_per_class=8, test_per_class=6, size=16)
    with torch_threads(1):
        model = calibrated_model("resnet8", dataset=tiny_dataset(), steps=3)
    checkpoint = write_checkpoint(root / "run" / "resnet-8_tiny.pth", model, data_source=str(data))
    return SimpleNamespace(root=root, data=data, cache=root / "cache", checkpoint=checkpoint)


def _job_ids(log_dir: Path) -> list[str]:
    return sorted(p.name for p in log_dir.iterdir() if p.name.isdigit()) if log_dir.exists() else []


def _landscape(world, output: Path, *extra: str) -> int:
    return main(["landscape", str(world.checkpoint), *SURFACE, "--output", str(output),
                 "--cache-dir", str(world.cache), "--out", str(world.root), *extra])


@pytest.mark.slurm
@needs_slurm
def test_a_landscape_through_slurm_is_the_local_surface(world, monkeypatch, capsys):
    with torch_threads(1):
        assert _landscape(world, world.root / "local.h5") == 0
    log_dir = world.root / "logs-landscape"
    monkeypatch.setenv("DEPTHSCAPE_SLURM_POLL_S", "0.3")
    began = time.monotonic()
    assert _landscape(world, world.root / "slurm.h5", *ON_SLURM, "--no-wait",
                      "--slurm-log-dir", str(log_dir)) == 0
    submitted = time.monotonic() - began
    err = capsys.readouterr().err
    (job,) = _job_ids(log_dir)
    assert f"job {job}: depthscape landscape" in err and "1 node(s) x 2 task(s)" in err
    assert "not waiting" in err and "--launcher" not in err  # the command, less the launcher
    deadline = time.monotonic() + 120
    while jobs.queue_states().get(job) in jobs.ACTIVE:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    local, remote = read_surface(world.root / "local.h5"), read_surface(world.root / "slurm.h5")
    assert (local["settings"]["world_size"], remote["settings"]["world_size"]) == (1, 2)
    assert remote["complete"]
    for key in ("x", "y", "loss", "acc"):
        np.testing.assert_array_equal(local[key], remote[key])
    print(f"\nlandscape job: submitted in {submitted:.1f} s, "
          f"done {time.monotonic() - began:.1f} s after the command started")


class _Signaller(threading.Thread):
    """Sends the training job Slurm's time-limit signal (USR2) once its log has two rows
    and before it ends, then releases the requeued job from Slurm's hold (~2 min)."""

    def __init__(self, log_dir: Path, log: Path):
        super().__init__(daemon=True)
        self.log_dir, self.log, self.stop = log_dir, log, False
        self.job = self.signalled_at = None
        self.released = False

    def run(self):
        while not self.stop and self.signalled_at is None:
            ids = _job_ids(self.log_dir)
            if ids and self.log.exists() and len(self.log.read_text().splitlines()) >= 3:
                self.job = ids[0]
                subprocess.run(["scancel", "--signal=USR2", self.job], check=False)
                self.signalled_at = len(self.log.read_text().splitlines()) - 1
            time.sleep(0.02)
        while not self.stop and self.job and not self.released:
            if jobs.queue_states().get(self.job) == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={self.job}", "StartTime=now"],
                               check=False, capture_output=True)
                self.released = True
            time.sleep(0.05)


@pytest.mark.slurm
@needs_slurm
def test_a_signalled_training_is_requeued_and_ends_as_an_uninterrupted_one(world, monkeypatch,
                                                                           capsys):
    common = [*TRAIN, "--dataset", str(world.data), "--cache-dir", str(world.cache)]
    log_dir, out = world.root / "logs-train", world.root / "train-slurm"
    log = out / "logs" / "resnet8_data_seed3_log.csv"
    signaller = _Signaller(log_dir, log)
    signaller.start()
    monkeypatch.setenv("DEPTHSCAPE_SLURM_POLL_S", "0.3")
    # the same thread count on both sides (the job inherits this environment): float sums
    # depend on it, whatever the caller's OMP_NUM_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:  # --overwrite: the requeued job must run with --resume instead
        code = main(["train", *common, "--out", str(out), "--overwrite", *ON_SLURM,
                     "--slurm-log-dir", str(log_dir)])
    finally:
        signaller.stop = True
        signaller.join(5)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert signaller.signalled_at is not None and signaller.released
    stderr = (log_dir / signaller.job / f"{signaller.job}_0_log.err").read_text()
    assert "saving to requeue" in stderr and "stopped: requeued" in stderr
    assert "interrupted at iteration" in stderr
    assert "test acc" in captured.out  # rank 0's result line, read back from its log
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "depthscape", "train", *common, "--out", str(world.root / "train-torchrun")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert torchrun.returncode == 0, torchrun.stderr[-2000:]
    final = "models/resnet-8_data_seed3.pth"
    ours, theirs = load_checkpoint(out / final), load_checkpoint(world.root / "train-torchrun" / final)
    assert ours["iteration"] == theirs["iteration"] == 16
    for key, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], tensor), key

    def rows(path):
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in read_log(path)]

    assert rows(log) == rows(world.root / "train-torchrun" / "logs" / log.name)


@pytest.mark.slurm
@needs_slurm
def test_a_failing_job_is_reported_with_its_log_and_error(world, monkeypatch, capsys):
    junk = world.root / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    log_dir = world.root / "logs-failing"
    monkeypatch.setenv("DEPTHSCAPE_SLURM_POLL_S", "0.3")
    code = main(["landscape", str(junk), *SURFACE, *ON_SLURM, "--slurm-log-dir", str(log_dir)])
    err = capsys.readouterr().err
    (job,) = _job_ids(log_dir)
    line = err.strip().splitlines()[-1]
    assert code == 2  # the command's own exit status
    assert line.startswith(f"depthscape: error: Slurm job {job} failed (log {log_dir / job}")
    assert "junk.pth is not a readable checkpoint" in line


@pytest.mark.slurm
@needs_slurm
def test_sharpness_through_slurm_measures_what_one_process_measures(world, monkeypatch, capsys):
    from _study_tools import write_fake_run

    write_fake_run(world.root / "sharp", "resnet8", dataset="data")
    options = ["--run-dir", str(world.root / "sharp"), "--dataset", str(world.data),
               "--cache-dir", str(world.cache), "--subset", "11", "--batch-size", "4",
               "--power-iters", "5", "--power-tol", "1e-6", "--trace-samples", "3",
               "--trace-tol", "1e-9", "--top-k", "2", "--no-progress"]
    with torch_threads(1):
        assert main(["sharpness", *options, "--out", str(world.root / "sharp-one")]) == 0
    monkeypatch.setenv("DEPTHSCAPE_SLURM_POLL_S", "0.3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    log_dir = world.root / "logs-sharpness"
    code = main(["sharpness", *options, "--out", str(world.root / "sharp-two"), *ON_SLURM,
                 "--slurm-log-dir", str(log_dir)])
    err = capsys.readouterr().err
    assert code == 0, err
    (job,) = _job_ids(log_dir)
    assert f"job {job}: depthscape sharpness" in err and "1 node(s) x 2 task(s)" in err
    one, two = (json.loads((world.root / side / "resnet8_data.json").read_text())["result"]
                for side in ("sharp-one", "sharp-two"))
    assert two["subset_size"] == one["subset_size"] == 11
    for key in ("largest_eigenvalue", "smallest_eigenvalue", "trace", "top_eigenvalues"):
        # the ranks' all-reduced products differ from one process's only in rounding
        # (tests/test_hessian_distributed.py: measured <= 2.5e-7 relative)
        assert np.allclose(two[key], one[key], rtol=1e-4, atol=1e-7), key
    assert two["eigen_steps"] == one["eigen_steps"]


# ---- bad input: one line, before anything is submitted ------------------------------------


def test_bad_input_is_one_line_and_submits_nothing(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")
    log_dir = tmp_path / "logs"

    def refused(*extra, code=2):
        assert main(["landscape", str(world.checkpoint), *SURFACE, "--out", str(out),
                     "--slurm-log-dir", str(log_dir), *extra]) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and not log_dir.exists()
        return err

    slurm = ["--launcher", "slurm"]
    assert "--slurm-nodes, --slurm-log-dir: only with --launcher slurm" in refused(
        "--slurm-nodes", "2")
    assert "write --launcher and the --slurm-* options in full" in refused(
        *slurm, "--slurm-allow-node-local", "--slurm-n", "2")
    assert "write --overwrite in full" in refused(*slurm, "--slurm-allow-node-local", "--overw")
    assert "KEY=VALUE" in refused(*slurm, "--slurm-arg", "nokey")
    monkeypatch.setenv("DEPTHSCAPE_SLURM_TASKS_PER_NODE", "0")
    assert "tasks per node must be at least 1" in refused(*slurm)
    monkeypatch.undo()
    monkeypatch.setattr(slurm_settings, "submitit", None)
    assert "depthscape[cluster]" in refused(*slurm, "--slurm-allow-node-local")
    monkeypatch.undo()
    if slurm_command.submitit is None:
        return
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert "needs Slurm's sbatch" in refused(*slurm, "--slurm-allow-node-local")
    monkeypatch.undo()
    if _slurm_reason() is None:
        assert "under /tmp" in refused(*slurm)  # tmp_path: other nodes cannot see it
        assert "time limit" in refused(*slurm, "--slurm-allow-node-local", "--slurm-time", "soon")
        assert "invalid partition" in refused(*slurm, "--slurm-allow-node-local",
                                              "--slurm-partition", "nosuchpartition").lower()
        assert "not available" in refused(*slurm, "--slurm-allow-node-local",
                                          "--slurm-nodes", "64")


def test_a_study_refuses_more_than_one_task_per_unit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEPTHSCAPE_SLURM_NODES", "2")
    assert main(["study", "--budget", "smoke", "--out", str(tmp_path / "study"),
                 "--launcher", "slurm", "--slurm-allow-node-local"]) == 2
    assert "units run one process each" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


# ---- the pieces ---------------------------------------------------------------------------


def test_the_job_runs_the_command_less_its_launcher_options():
    parser = build_parser("landscape", every=False)
    argv = ["landscape", "ck.pth", "--launcher=slurm", "--slurm-nodes", "4", "--resolution",
            "51", "--slurm-allow-node-local", "--slurm-arg", "a=1", "--no-wait",
            "--slurm-gpus-per-node=8", "--overwrite"]
    args = parser.parse_args(argv)
    assert (args.slurm_nodes, args.slurm_gpus, args.slurm_tasks_per_node) == (4, 8, None)
    assert without(argv, args._launcher) == ["landscape", "ck.pth", "--resolution", "51",
                                             "--overwrite"]


def test_each_task_gets_torchrun_s_environment():
    env = SimpleNamespace(global_rank=5, local_rank=1, num_tasks=8, num_nodes=2,
                          hostnames=["gpu07", "gpu08"], job_id="4242")
    assert slurm_command.task_environment(env) == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07", "MASTER_PORT": str(slurm_command.PORT_BASE + 4242)}
    ports = {slurm_command.master_port(str(job)) for job in range(100_000, 100_050)}
    assert len(ports) == 50 and all(20000 <= p < 60000 for p in ports)


def test_tasks_per_node_default_to_the_gpus_and_go_to_submitit():
    settings = slurm_settings.settings_from({"nodes": 4, "gpus": 8}, environ={})
    params = settings.parameters("landscape")
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (4, 8, 8)
    cpu = slurm_settings.settings_from({"nodes": 2, "tasks_per_node": 3}, environ={})
    assert (cpu.tasks, cpu.parameters("x").get("gpus_per_node")) == (3, None)
    assert slurm_settings.settings_from({}, environ={}).tasks == 1
    two_gpus = slurm_settings.settings_from({"gpus": 2}, environ={})
    assert two_gpus.tasks == 2 and slurm_settings.single_task(two_gpus).tasks == 1
