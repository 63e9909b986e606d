"""The benchmarks' own logic, and a dry run of bench_train.py on the CPU at a tiny scale
(no timing is asserted: the speed lives in the benchmarks' output)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

from depthscape.training.fastpath import cpu_bf16_supported, set_tf32, tf32_enabled

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--device", "cpu", "--models", "resnet8", "--iterations", "2", "--window", "1",
        "--baseline-iterations", "1", "--baseline-warmup", "1", "--synthetic", "256",
        "--workers", "0", "--layer-stats-repeats", "1"]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_train():
    return load_benchmark("bench_train")


def test_the_rate_is_read_over_whole_windows_without_the_first_and_the_last(bench_train):
    rows = [{"iteration": 100, "elapsed_s": 5.0},  # start-up, capture and the first steps
            {"iteration": 200, "elapsed_s": 5.5}, {"iteration": 300, "elapsed_s": 6.0},
            {"iteration": 400, "elapsed_s": 9.0}]  # the last window holds the final evaluation
    rate, steps, windows = bench_train.window_rate(rows, batch=128)
    assert (steps, windows) == (200, 2) and rate == pytest.approx(200 * 128 / 1.0)
    with pytest.raises(ValueError, match="at least 3"):
        bench_train.window_rate(rows[:2])


def test_the_process_wide_flags_are_put_back_as_they_were(bench_train):
    before = bench_train.ProcessFlags.read()
    try:
        torch.backends.cudnn.benchmark = not before.benchmark
        set_tf32(not tf32_enabled())
        assert bench_train.ProcessFlags.read() != before
        before.restore()
        assert bench_train.ProcessFlags.read() == before
    finally:
        before.restore()


def test_the_first_line_names_the_cpu_and_its_bf16_flags(bench_train):
    line = bench_train.describe(torch.device("cpu"))
    assert line.startswith("cpu: CPU ") and "avx512_bf16 " in line and "amx_bf16 " in line
    assert f"oneDNN bf16 {'yes' if cpu_bf16_supported() else 'no'}" in line
    assert torch.__version__ in line


def test_a_cpu_dry_run_prints_every_cpu_variant_with_its_runtime_and_ratio(
        bench_train, capsys, cache_dir, one_thread):
    assert bench_train.main(TINY) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cpu: CPU ")
    results = [line for line in lines if line.startswith("resnet8 | ")]
    assert "seed-style DataLoader loop" in results[0] and results[0].endswith("img/s")
    expected = ["NCHW fp32 (the CPU path before channels-last) [eager fp32 NCHW]",
                "channels-last fp32 (the CPU default) [eager fp32 channels-last]"]
    if cpu_bf16_supported():
        expected.append("channels-last bf16 [eager bf16 channels-last]")
    assert len(results) == 1 + len(expected)
    for line, label in zip(results[1:], expected):
        assert label in line and "x the DataLoader loop (2 steps in 2 windows)" in line, line
    cost = [line for line in lines if line.startswith("resnet8 : layer statistics on / off")]
    assert len(cost) == 1 and "(depthscape channels-last fp32 (the CPU default))" in cost[0]
    assert "% (median of 1 interleaved pairs)" in cost[0], cost


def test_a_graph_asked_for_and_not_used_exits_non_zero(bench_train, capsys, cache_dir, one_thread,
                                                       monkeypatch):
    monkeypatch.setattr(bench_train, "baseline", lambda *args, **kwargs: 100.0)  # fewer runs
    monkeypatch.setattr(bench_train, "cpu_bf16_supported", lambda: False)
    assert bench_train.main([*TINY, "--cuda-graph"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: the captured step was asked for and not used for resnet8" in out


def test_a_dry_run_of_bench_api_prints_both_paths_times_and_their_ratio(capsys, cache_dir,
                                                                         one_thread):
    import re

    bench = load_benchmark("bench_api")
    assert bench.main(["--model", "resnet8", "--images", "20", "--size", "8",
                       "--resolution", "2", "--repeats", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("cpu: CPU ") and torch.__version__ in lines[0]
    number = r"\d+\.\d{3}"
    assert re.fullmatch(
        rf"resnet8 \| 20 images 8x8 \| 4 points \| CLI \(depthscape landscape\) {number} s \| "
        rf"API \(ds\.loss_surface\) {number} s \| API/CLI speed {number} \| "
        r"max \|loss difference\| 0 \| best of 1", lines[1]), lines[1]


# ---- the device check script ------------------------------------------------------------

REPO = BENCHMARKS.parent
RESULT_COLUMNS = ("date,device,device_name,precision,model,recipe,iterations,seed,train_acc,"
                  "test_acc,train_loss,test_loss,wall_s,commit")


def run_gpu_check(tmp_path, archive, **env):
    import os
    import subprocess

    environment = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu",
                   "GPU_CHECK_WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
                   "GPU_CHECK_COMMIT": "abc1234", **env}
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(out), str(archive)],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    return done, out


def tiny_archive(tmp_path):
    import tarfile

    root = write_image_folder(tmp_path / "tiny", train_per_class=48, test_per_class=8)
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="tiny")
    return archive


def assert_what_comes_back(out):
    files = sorted(out.iterdir())
    assert 1 <= len(files) <= 8 and all(f.is_file() for f in files)
    assert (out / "summary.txt").read_text().startswith("depthscape gpu_check, ")


def test_the_device_check_never_runs_past_its_budget_and_always_leaves_a_summary(tmp_path):
    done, out = run_gpu_check(tmp_path, tmp_path / "missing.tar.gz", GPU_CHECK_BUDGET="17",
                              GPU_CHECK_STAGES="data bench_train train")
    assert_what_comes_back(out)
    summary = (out / "summary.txt").read_text()
    assert "data: skipped (no time left)" in summary and "bench_train: skipped" in summary
    assert "train_plain: skipped (ResNet-20 did not finish)" in summary
    assert done.returncode == 0  # nothing failed; it only ran out of time


@pytest.mark.slow  # about ten Python start-ups and six tiny trainings: tens of seconds
def test_a_tiny_dry_run_of_the_device_check_on_the_cpu(tmp_path):
    archive = tiny_archive(tmp_path)
    done, out = run_gpu_check(tmp_path, archive, GPU_CHECK_TINY="1",
                              GPU_CHECK_STAGES="data bench_train bench_landscape train")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_what_comes_back(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "bench_landscape.log", "bench_train.log", "plainnet8_log.csv", "resnet8_log.csv",
        "results.csv", "summary.txt", "train.log"]
    summary = (out / "summary.txt").read_text()
    for name in ("data", "bench_train", "bench_landscape", "train_resnet", "train_plain",
                 "tables", "report"):
        assert f"\n{name}: exit 0, " in summary, name
    assert "x the DataLoader loop" in summary and "points/s" in summary
    assert "resnet8: finished; iteration 4" in summary and "plain8: finished" in summary
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == RESULT_COLUMNS and len(lines) == 3
    rows = [dict(zip(RESULT_COLUMNS.split(","), line.split(","))) for line in lines[1:]]
    assert [r["model"] for r in rows] == ["resnet8", "plain8"]
    assert all(r["device"] == "cpu" and r["recipe"] == "scaled" and r["iterations"] == "4"
               and r["commit"] == "abc1234" and r["precision"] == "fp32" for r in rows)
    assert all(0 <= float(r["test_acc"]) <= 100 for r in rows)


def test_lanczos_steps_replays_the_same_steps_and_reads_where_an_end_settles():
    """benchmarks/lanczos_steps.py reads Lanczos after every k steps from one recorded run:
    the replay must give exactly what a run of k steps gives, and "settled from" is the
    first step after which every value stays within the tolerance of the last."""
    from depthscape.analysis.hessian import extreme_eigenvalues

    steps = load_benchmark("lanczos_steps")
    spectrum = torch.cat([torch.tensor([50.0, -3.0]), torch.linspace(0, 4, 98)]).double()
    params = [torch.zeros(100, dtype=torch.float64)]
    recorded = steps._Recorded(lambda v: [spectrum * v[0]])
    extreme_eigenvalues(recorded, params, 12, 0.0, 3)
    for k in (1, 5, 12):
        replayed = extreme_eigenvalues(steps._Replayed(recorded.products), params, k, 0.0, 3)
        direct = extreme_eigenvalues(lambda v: [spectrum * v[0]], params, k, 0.0, 3)
        assert replayed == direct
    assert steps.settled_from([1.0, 5.0, 9.9, 10.0], 10.0, 10.0, 0.02) == 3
    assert steps.settled_from([9.9, 5.0, 9.95, 10.0], 10.0, 10.0, 0.02) == 3  # left, came back
    assert steps.settled_from([1.0, 2.0], 10.0, 10.0, 0.02) is None


def test_lanczos_steps_refuses_fewer_steps_than_the_budget_replays(monkeypatch, capsys, tmp_path):
    """The budget's rule is replayed from the recorded products: --steps below the budget's
    step count would run out of them, so it is refused in one line before any work."""
    steps = load_benchmark("lanczos_steps")
    monkeypatch.setattr(sys, "argv", ["lanczos_steps.py", "--run-dir", str(tmp_path),
                                      "--budget", "quick", "--steps", "5"])
    with pytest.raises(SystemExit) as exit_:
        steps.main()
    assert exit_.value.code == 2
    assert "--steps must be at least the quick budget's 40 Lanczos steps, got 5" in \
        capsys.readouterr().err


def test_the_reference_resnet20_is_the_same_network_read_from_the_same_archive(tmp_path):
    """benchmarks/reference_resnet20.py shares no code with depthscape: its model must still
    be ResNet-20 (the same parameter shapes, the same 0.27 M parameters) and its reader must
    give the archive's images and labels as depthscape's ImageFolder reader does."""
    import tarfile

    from depthscape.core.data import load_dataset
    from depthscape.core.models import get_model

    reference = load_benchmark("reference_resnet20")
    ours = [tuple(p.shape) for p in get_model("resnet20").parameters()]
    for init in ("fan-out", "fan-in"):
        theirs = [tuple(p.shape) for p in reference.ResNet20(init=init).parameters()]
        assert theirs == ours and sum(map(math.prod, theirs)) == 269722
    # the same function: depthscape's weights copied in, parameter by parameter, give its
    # outputs (eval mode and training mode, where BatchNorm uses the batch)
    model, twin = get_model("resnet20"), reference.ResNet20()
    mine, theirs = model.state_dict(), twin.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in theirs.values()]
    twin.load_state_dict(dict(zip(theirs, mine.values())))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 60
    for train in (False, True):
        model.train(train), twin.train(train)
        assert torch.allclose(model(x), twin(x), atol=1e-5, rtol=1e-5)
    write_image_folder(tmp_path / "tiny", train_per_class=3, test_per_class=2)
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tiny", arcname="tiny")
    splits = reference.read_archive(str(archive))
    ours = load_dataset(str(archive), cache_dir=str(tmp_path / "cache"))
    for name, split in (("train", ours.train), ("test", ours.test)):
        images, labels = splits[name]
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        # the same multiset of (image, label): the two readers may order files differently
        key = sorted(zip(images.flatten(1).sum(1).tolist(), labels.tolist()))
        assert key == sorted(zip(split.images.flatten(1).sum(1).tolist(), split.labels.tolist()))
