"""The benchmarks' own logic, and a dry run of bench_train.py on the CPU at a tiny scale
(no timing is asserted: the speed lives in the benchmarks' output)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from depthscape.training.fastpath import cpu_bf16_supported, set_tf32, tf32_enabled

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--device", "cpu", "--models", "resnet8", "--iterations", "2", "--window", "1",
        "--baseline-iterations", "1", "--baseline-warmup", "1", "--synthetic", "256",
        "--workers", "0"]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_train():
    return load_benchmark("bench_train")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_a_graph_asked_for_and_not_used_exits_non_zero(bench_train, capsys, cache_dir, one_thread,
                                                       monkeypatch):
    monkeypatch.setattr(bench_train, "cpu_bf16_supported", lambda: False)  # fewer runs
    assert bench_train.main([*TINY, "--cuda-graph"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: the captured step was asked for and not used for resnet8" in out
