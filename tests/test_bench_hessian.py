"""benchmarks/bench_hessian.py at a tiny size: its lines, its counts, and the peers' absence
said in one line each (no timing is asserted)."""

from __future__ import annotations

import re
import sys

from test_benchmarks import load_benchmark


def test_a_tiny_run_prints_each_measure_with_its_products(trained_resnet8, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyhessian", None)  # a peer that does not import
    monkeypatch.setitem(sys.modules, "hessian_eigenthings", None)
    bench = load_benchmark("bench_hessian")
    assert bench.main([str(trained_resnet8), "--images", "8", "--trace-samples", "5",
                       "--peer-models", "resnet8", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and "torch" in lines[0] and "8 training images" in lines[0]
    assert re.match(r"resnet8: [\d,]+ parameters; one HVP [\d.]+ s$", lines[1]), lines[1]
    ours = lines[2]
    assert "depthscape" in ours and "density 2x8 (16 HVPs" in ours, ours
    trace_hvps = int(re.search(r"trace .*?\((\d+) HVPs", ours).group(1))
    assert trace_hvps == 5  # at most 5 probes and at least min_samples = 5: exactly five
    ends_hvps = int(re.search(r"extremes .*?\((\d+) HVPs", ours).group(1))
    assert 1 <= ends_hvps <= 20
    assert "PyHessian does not import" in lines[3]
    assert "hessian-eigenthings does not import" in lines[4]


def test_the_extremes_it_prints_are_the_apis(trained_resnet8, capsys, monkeypatch):
    import depthscape as ds

    monkeypatch.setitem(sys.modules, "pyhessian", None)
    bench = load_benchmark("bench_hessian")
    run = ds.load_run(trained_resnet8)
    x, y = bench._batch(run, 8)
    ours = bench._ours(run, x, y, trace_samples=5)
    direct = ds.hessian_extremes(run.model, (x, y), iters=20, tol=1e-3, batch_size=8)
    assert ours["largest"] == direct.largest and ours["smallest"] == direct.smallest


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    bench = load_benchmark("bench_hessian")
    assert bench.main([str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint" in err[0]
