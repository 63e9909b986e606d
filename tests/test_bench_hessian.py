"""benchmarks/bench_hessian.py at a tiny size: its lines, its counts, and the peers' absence
said in one line each (no timing is asserted)."""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch
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


def test_the_products_mode_compares_every_way_with_the_fields(capsys):
    bench = load_benchmark("bench_hessian")
    assert bench.main(["--products", "resnet8", "--images", "4", "6", "--rounds", "1",
                       "--float64", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and "1 threads" in lines[0] and "fp32" in lines[0]
    rows = lines[1:]
    assert len(rows) == 2 * 4  # two image counts, four ways each
    pattern = (r"resnet8 (\d+) images  (.+?) +([\d.]+) products/s  x([\d.]+)  rel (\S+) max"
               r" (\S+); vs float64 (\S+)$")
    parsed = [re.match(pattern, row) for row in rows]
    assert all(parsed), rows
    assert [int(m.group(1)) for m in parsed] == [4] * 4 + [6] * 4
    assert parsed[0].group(2).startswith("field (double backward")
    assert float(parsed[0].group(4)) == 1.0 and float(parsed[0].group(5)) == 0.0
    for match in parsed:  # every way gives the field's product to float32 rounding
        assert float(match.group(5)) < 1e-5 and float(match.group(7)) < 1e-4


def test_neither_checkpoint_nor_products_is_a_usage_error(capsys):
    bench = load_benchmark("bench_hessian")
    with pytest.raises(SystemExit) as exit_info:
        bench.main([])
    assert exit_info.value.code == 2 and "--products" in capsys.readouterr().err


def test_the_reference_is_the_exact_hessians_top_five():
    from _landscape_tools import TinyNet
    from test_sharpness import exact_hessian

    bench = load_benchmark("bench_hessian")
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.randn(12, 1, 4, 4)
    with torch.no_grad():  # BatchNorm's running statistics off their defaults
        model.train()
        model(x + 0.5)
    y = torch.randint(0, 3, (12,))
    reference = bench._reference_top(model.eval(), x, y, 5, steps=200, tol=1e-9)
    exact = torch.linalg.eigvalsh(exact_hessian(copy.deepcopy(model).double(), x.double(), y))
    top = exact.flip(0)[:5]
    assert reference["converged"] and reference["steps"] < 200
    assert reference["values"] == pytest.approx(top.tolist(), rel=1e-8)
    assert all(b <= 1e-9 * abs(v) for v, b in zip(reference["values"], reference["bounds"]))


def test_time_to_accuracy_reaches_each_target_and_says_so(trained_resnet8, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "pyhessian", None)
    monkeypatch.setitem(sys.modules, "hessian_eigenthings", None)
    bench = load_benchmark("bench_hessian")
    cached = tmp_path / "reference.json"
    argv = [str(trained_resnet8), "--time-to-accuracy", "--images", "8", "--threads", "1",
            "--density", "1", "4", "--trace-cap", "60", "--repeats", "2",
            "--reference", str(cached)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# ") and "resnet8" in out[0] and "8 training images" in out[0]
    assert "PyHessian does not import" in out[1]
    assert "hessian-eigenthings does not import" in out[2]
    reference = next(line for line in out if line.startswith("reference "))
    assert "converged to residual" in reference and "NOT" not in reference
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out
            if line.startswith("| top") or line.startswith("| trace")
            or line.startswith("| density")}
    assert set(rows) == {"top1", "top5", "trace", "density"}
    retimed = [line for line in out if "re-timed:" in line]
    assert len(retimed) == 4 and all(line.count(" s") == 1 and "," in line for line in retimed)
    for target in ("top1", "top5"):  # depthscape's own rule at tol 1e-3, checked
        row = rows[target]
        assert row[1] == "depthscape" and "not reached" not in row[2]
        assert float(row[6]) <= 1e-3
    trace = rows["trace"]
    assert ("not reached" in trace[2]) == (float(trace[6]) > 0.05)
    assert int(rows["density"][4]) == 4  # 1 run x 4 steps
    saved = json.loads(cached.read_text())
    assert len(saved["reference"]["values"]) == 5
    assert bench.main(argv[:-4] + ["--reference", str(cached), "--reference-only"]) == 0
    assert f"read from {cached}" in capsys.readouterr().out  # the same model and images


def test_time_to_accuracy_refuses_bad_input_before_work(trained_resnet8, tmp_path, capsys):
    bench = load_benchmark("bench_hessian")
    for argv in ([str(trained_resnet8)] * 2 + ["--time-to-accuracy"],
                 [str(trained_resnet8), "--time-to-accuracy", "--max-steps", "0"],
                 [str(trained_resnet8), "--time-to-accuracy", "--reference-only"],
                 [str(trained_resnet8), "--time-to-accuracy", "--reference",
                  str(tmp_path / "missing" / "r.json")]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "error:" in err[-1], err
