"""Data-parallel training with 2 CPU processes (torchrun, gloo) against the single-process run.

The torchrun runs are shared by the tests of this module (module-scoped fixture): one run
straight through, one stopped at iteration 7 and resumed, each recording the sample
indices every rank trained on (``DEPTHSCAPE_TRACE_BATCHES``), plus the same config in
one process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _threads import torch_threads
from conftest import write_image_folder

from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.csvlog import LOG_COLUMNS, read_log
from depthscape.core.data import Preprocess
from depthscape.core.distributed import shard_bounds
from depthscape.core.errors import UserError
from depthscape.core.trained import load_trained_run
from depthscape.training.loop import TRACE_ENV, TrainConfig, shard_batch, train

ITERATIONS = 12
SCALE = ITERATIONS / 64_000  # the ResNet-20 recipe shrunk to 12 iterations (decays at 6, 9)
OPTIONS = ["--scale", repr(SCALE), "--log-every", "4", "--eval-every", "6",
           "--checkpoint-every", "5", "--no-progress", "--seed", "3"]


def torchrun(args: list[str], env: dict, processes: int = 2, timeout: float = 240,
             **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "depthscape", "train", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def rows_without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in read_log(path)]


def load_trace(folder: Path, rank: int) -> list[torch.Tensor]:
    files = list(folder.glob(f"*.rank{rank}.pt"))
    assert len(files) == 1, files
    return torch.load(files[0])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as torchrun gives each worker: far faster on a small busy machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("ddp")
    data = write_image_folder(root / "data", size=16)
    cache = root / "cache"
    env = {**os.environ, "DEPTHSCAPE_DATA": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH")]))}
    common = ["resnet", "8", "--dataset", str(data), "--cache-dir", str(cache), *OPTIONS]
    out = {"root": root, "data": data, "cache": cache, "env": env, "common": common}

    whole = torchrun([*common, "--out", str(root / "whole")],
                     {**env, TRACE_ENV: str(root / "trace_whole")})
    assert whole.returncode == 0, whole.stderr
    out["whole"] = whole

    traced = {**env, TRACE_ENV: str(root / "trace_split")}
    stopped = torchrun([*common, "--out", str(root / "split"), "--stop-after", "7"], traced)
    assert stopped.returncode == 0, stopped.stderr
    out["stopped"] = stopped
    shutil.copytree(root / "split", root / "at7")  # the stopped run, for a 1-process resume
    resumed = torchrun([*common, "--out", str(root / "split"), "--resume"], traced)
    assert resumed.returncode == 0, resumed.stderr
    out["resumed"] = resumed

    previous = os.environ.get(TRACE_ENV)
    os.environ[TRACE_ENV] = str(root / "trace_single")
    try:
        out["single"] = train(TrainConfig(
            model="resnet8", dataset=str(data), cache_dir=str(cache), out_dir=str(root / "single"),
            seed=3, scale=SCALE, log_every=4, eval_every=6, checkpoint_every=5, progress=False))
    finally:
        if previous is None:
            os.environ.pop(TRACE_ENV)
        else:
            os.environ[TRACE_ENV] = previous
    return out


def test_shard_bounds_cover_the_batch_in_order():
    for n in (1, 7, 64, 128, 129):
        for world in (1, 2, 3, 4, 8):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_rank_slices_of_a_batch_are_the_single_process_batch_with_its_augmentation():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(50)
    index = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:20]
    preprocess = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0), augment=True)
    single_gen = torch.Generator().manual_seed(5)
    expected = preprocess.train_batch(images[index], single_gen)
    parts, label_parts = [], []
    for rank in range(2):
        generator = torch.Generator().manual_seed(5)  # every rank holds the same state
        x, y = shard_batch(preprocess, images, labels, index, generator, rank, 2)
        assert len(y) == 10
        assert torch.equal(generator.get_state(), single_gen.get_state())  # same draws used up
        parts.append(x)
        label_parts.append(y)
    assert torch.equal(torch.cat(parts), expected)
    assert torch.equal(torch.cat(label_parts), labels[index])


def test_ddp_writes_one_csv_with_the_same_columns_and_rows(runs):
    logs = sorted((runs["root"] / "whole" / "logs").glob("*_log.csv"))
    assert len(logs) == 1
    header = logs[0].read_text().splitlines()[0].split(",")
    assert tuple(header) == LOG_COLUMNS
    rows = read_log(logs[0])
    single_rows = read_log(runs["single"].paths.log)
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in single_rows] == [4, 8, 12]
    assert [r["lr"] for r in rows] == [r["lr"] for r in single_rows]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in single_rows]
    models = sorted(p.name for p in (runs["root"] / "whole" / "models").iterdir())
    assert models == [runs["single"].paths.final.name]  # no resume file left, one final file
    # rank 0 alone printed the result line
    assert runs["whole"].stdout.count("test acc") == 1, runs["whole"].stdout


def test_ddp_checkpoint_loads_in_a_single_process(runs):
    final = runs["root"] / "whole" / "models" / runs["single"].paths.final.name
    trained = load_trained_run(final)
    model, checkpoint = trained.model, trained.checkpoint
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in load_checkpoint(final)["state_dict"])
    assert checkpoint["config"]["runtime"]["world_size"] == 2
    assert checkpoint["iteration"] == ITERATIONS
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def test_ddp_resume_after_a_stop_matches_the_uninterrupted_run(runs):
    assert "stopped at iteration 7" in runs["stopped"].stdout
    whole = load_checkpoint(runs["root"] / "whole" / "models" / runs["single"].paths.final.name)
    split = load_checkpoint(runs["root"] / "split" / "models" / runs["single"].paths.final.name)
    for key, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, split["state_dict"][key]), key
    log_name = runs["single"].paths.log.name
    assert rows_without_time(runs["root"] / "whole" / "logs" / log_name) == \
        rows_without_time(runs["root"] / "split" / "logs" / log_name)


def test_ddp_ranks_train_on_the_single_process_samples_in_order(runs):
    single = load_trace(runs["root"] / "trace_single", 0)
    assert len(single) == ITERATIONS
    for folder in ("trace_whole", "trace_split"):
        rank0, rank1 = (load_trace(runs["root"] / folder, r) for r in (0, 1))
        assert len(rank0) == len(rank1) == ITERATIONS
        for step, expected in enumerate(single):
            assert len(rank0[step]) == len(rank1[step]) == 64  # 128 / 2 per rank
            assert torch.equal(torch.cat([rank0[step], rank1[step]]), expected), (folder, step)


def test_ddp_resume_checkpoint_continues_in_a_single_process(runs, capsys):
    resume_file = runs["root"] / "at7" / "models" / runs["single"].paths.resume.name
    assert load_checkpoint(resume_file)["iteration"] == 7
    result = train(TrainConfig(
        model="resnet8", dataset=str(runs["data"]), cache_dir=str(runs["cache"]),
        out_dir=str(runs["root"] / "at7"), seed=3, scale=SCALE, log_every=4, eval_every=6,
        checkpoint_every=5, progress=False, resume=True))
    assert result.finished and result.iteration == ITERATIONS
    assert "started with 2 process(es) on 1" in capsys.readouterr().err
    assert [r["iteration"] for r in read_log(result.paths.log)] == [4, 8, 12]


def test_batch_that_does_not_split_over_the_processes_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from depthscape.cli import main

    monkeypatch.setenv("WORLD_SIZE", "3")  # refused before any process group is joined
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="batch of 128 does not split evenly over 3"):
        train(TrainConfig(model="resnet8", out_dir=str(tmp_path)))
    assert main(["train", "resnet", "8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("depthscape: error:")
    monkeypatch.setenv("RANK", "2")  # the other ranks stay quiet
    assert main(["train", "resnet", "8", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_under_torchrun_saves_a_resumable_checkpoint(runs):
    out = runs["root"] / "interrupted"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "depthscape", "train", *runs["common"], "--out", str(out),
               "--scale", repr(2000 / 64_000), "--log-every", "2"]
    process = subprocess.Popen(command, env=runs["env"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = out / "logs" / runs["single"].paths.log.name
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not (log.exists() and len(read_log(log)) >= 2):
            time.sleep(0.2)
        assert log.exists(), "the run never wrote a row"
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process gets it
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "interrupted at iteration" in stderr, stderr[-2000:]
    resume_file = out / "models" / runs["single"].paths.resume.name
    saved = load_checkpoint(resume_file)
    assert 0 < saved["iteration"] < 2000
    assert len(saved["rng_cpu_ranks"]) == 2


def test_several_runs_in_one_torchrun_job_each_data_parallel(runs, tmp_path):
    """A study under torchrun: run_trainings trains its runs one after another, each over
    both processes, reusing the one process group (torchrun's rendezvous cannot be redone)."""
    script = tmp_path / "two_runs.py"
    script.write_text(
        "import os\n"
        "from depthscape.study.launcher import run_trainings\n"
        "from depthscape.training.loop import TrainConfig\n"
        f"common = dict(model='resnet8', dataset={str(runs['data'])!r}, "
        f"cache_dir={str(runs['cache'])!r}, out_dir={str(tmp_path / 'out')!r}, "
        f"scale={2 / 64_000!r}, progress=False)\n"
        "results = run_trainings([TrainConfig(seed=0, **common), TrainConfig(seed=1, **common)])\n"
        # One file per rank: the ranks' stdout lines interleave.
        f"path = {str(tmp_path)!r} + '/done' + os.environ['RANK']\n"
        "open(path, 'w').write(repr([(r.paths.run_name, r.iteration, r.finished) for r in results]))\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script)]
    done = subprocess.run(command, env=runs["env"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"done{rank}").read_text() == (
            "[('resnet8_data', 2, True), ('resnet8_data_seed1', 2, True)]")
    for name in ("resnet-8_data.pth", "resnet-8_data_seed1.pth"):
        assert load_checkpoint(tmp_path / "out" / "models" / name)["config"]["runtime"]["world_size"] == 2
