"""One precision object (issue 30): every precision is a record, resolved once per device,
and the engines only call it; the TF32 switches inside every Hessian-vector product and every
landscape point read what the precision says, whatever the process had set before.

The CPU has no TF32, but PyTorch's switches exist and read back on it, so the defect this
guards against (``depthscape sharpness --precision fp32`` measuring with TF32 on when
something earlier in the process had turned it on) is tested here by recording the switches
at each product.
"""

from __future__ import annotations

import threading

import pytest
import torch
from _study_tools import write_fake_run

from depthscape import api as ds
from depthscape.analysis import hessian
from depthscape.analysis.landscape import points
from depthscape.cli import main
from depthscape.cli._common import add_gpu_arguments
from depthscape.core import runtime
from depthscape.core.errors import UserError

FACTORY = '''
from torch import nn


def small(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def _switches() -> tuple:
    """Every TF32 switch as it reads now (the cuDNN convolutions' and the matmuls')."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


OFF = None  # filled by the fixture: how the switches read with TF32 off


@pytest.fixture
def tf32_on_before():
    """TF32 turned on process-wide before the call (as a training earlier in the process
    leaves it); restored afterwards to what the process had."""
    global OFF
    before = _switches()
    with runtime.tf32_scope(False):
        OFF = _switches()
    runtime.set_tf32(True)
    on = _switches()
    assert on != OFF
    yield on
    runtime.set_tf32(before[0] in (True, "tf32"))


@pytest.fixture
def recorded(monkeypatch):
    """The TF32 switches as each Hessian-vector product and each landscape point saw them."""
    seen = {"products": [], "points": []}
    product = hessian.HessianOperator._local
    point = points.PointEvaluator._evaluate_async

    def recording_product(self, vector):
        seen["products"].append(_switches())
        return product(self, vector)

    def recording_point(self, coefficients):
        seen["points"].append(_switches())
        return point(self, coefficients)

    monkeypatch.setattr(hessian.HessianOperator, "_local", recording_product)
    monkeypatch.setattr(points.PointEvaluator, "_evaluate_async", recording_point)
    return seen


def _sharpness_args(run_dir, data, *extra):
    return ["sharpness", "--run-dir", str(run_dir), "--dataset", str(data), "--subset", "4",
            "--power-iters", "3", "--trace-samples", "2", "--no-progress", "--precision", "fp32",
            *extra]


def test_cli_sharpness_and_density_products_run_with_tf32_off(tmp_path, tiny_data, cache_dir,
                                                               tf32_on_before, recorded, capsys):
    write_fake_run(tmp_path, "resnet8", dataset=tiny_data.name)
    assert main(_sharpness_args(tmp_path, tiny_data, "--top-k", "2")) == 0
    assert main(_sharpness_args(tmp_path, tiny_data, "--density", "--density-steps", "3",
                                "--density-runs", "1", "--out", str(tmp_path / "dens"))) == 0
    assert len(recorded["products"]) >= 8
    assert set(recorded["products"]) == {OFF}
    assert _switches() == tf32_on_before  # the process's own setting, restored


def test_plugin_sharpness_products_run_with_tf32_off(tmp_path, tiny_data, cache_dir,
                                                     tf32_on_before, recorded, capsys):
    (tmp_path / "nets.py").write_text(FACTORY)
    code = main(["sharpness", "--model-from", f"{tmp_path / 'nets.py'}:small", "--dataset",
                 str(tiny_data), "--subset", "4", "--power-iters", "3", "--trace-samples", "2",
                 "--precision", "fp32", "--out", str(tmp_path / "sharp"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert recorded["products"] and set(recorded["products"]) == {OFF}
    assert _switches() == tf32_on_before


def test_the_study_sharpness_stage_and_the_api_run_with_tf32_off(tmp_path, tiny_data, cache_dir,
                                                                 tf32_on_before, recorded):
    from types import SimpleNamespace

    from depthscape.analysis.sharpness import SharpnessConfig
    from depthscape.core.data import load_dataset
    from depthscape.core.runs import find_runs
    from depthscape.study.stages.sharpness import SharpnessStage

    write_fake_run(tmp_path, "plainnet8", dataset=tiny_data.name)
    study = SimpleNamespace(  # what the stage reads of a study
        finished_runs=lambda: find_runs(tmp_path), dataset=load_dataset(str(tiny_data)), partial=False,
        models=["plain8"], switched_on=lambda name: True,  # no depth pair: no blocks
        out=tmp_path / "study", result=SimpleNamespace(sharpness=[]),
        config=SimpleNamespace(device="cpu", progress=False),
        budget=SimpleNamespace(sharpness=SharpnessConfig(subset=4, power_iters=3,
                                                         trace_samples=2)))
    SharpnessStage().run(study)
    assert len(study.result.sharpness) == 1 and recorded["products"]
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    data = (torch.randn(12, 5), torch.randint(0, 3, (12,)))
    count = len(recorded["products"])
    ds.hessian_extremes(model, data, iters=4, precision="fp32")
    ds.hessian_trace(model, data, samples=3, precision="fp32")
    assert len(recorded["products"]) > count
    assert set(recorded["products"]) == {OFF}
    assert _switches() == tf32_on_before


def test_landscape_points_and_flatness_slices_run_with_tf32_off(tmp_path, tiny_data, cache_dir,
                                                                tf32_on_before, recorded):
    write_fake_run(tmp_path, "resnet8", dataset=tiny_data.name)
    assert main(["landscape", str(tmp_path / "models" / f"resnet-8_{tiny_data.name}.pth"),
                 "--dataset", str(tiny_data), "--resolution", "3", "--subset", "4",
                 "--no-plots", "--no-progress", "--out", str(tmp_path / "surf")]) == 0
    grid = len(recorded["points"])
    assert grid == 9
    assert main(["flatness", "--run-dir", str(tmp_path), "--dataset", str(tiny_data),
                 "--subset", "4", "--directions", "2", "--points", "3", "--no-progress",
                 "--out", str(tmp_path / "flat")]) == 0
    assert len(recorded["points"]) > grid
    assert set(recorded["points"]) == {OFF}
    assert _switches() == tf32_on_before


def test_tf32_asked_for_turns_the_switches_on_only_inside_and_restores_them():
    before = _switches()
    tf32 = runtime.precision_named("tf32", "cuda")
    with tf32.scope():
        assert runtime.tf32_enabled()
        with runtime.precision_named("fp32", "cuda").scope():
            assert not runtime.tf32_enabled()
        assert runtime.tf32_enabled()
    assert _switches() == before


def test_threads_sharing_a_scope_keep_it_until_the_last_one_leaves():
    """Worker threads each enter their precision's scope; one leaving must not undo the
    setting another is still computing in (the switches are process-wide)."""
    runtime.set_tf32(True)
    try:
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        seen = []

        def first():
            with runtime.tf32_scope(False):
                first_in.set()
                second_in.wait(5)
            first_out.set()

        def second():
            first_in.wait(5)
            with runtime.tf32_scope(False):
                second_in.set()
                first_out.wait(5)
                seen.append(runtime.tf32_enabled())  # the first has left: still off

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen == [False]
        assert runtime.tf32_enabled()  # restored once both left
    finally:
        runtime.set_tf32(False)


# ------------------------------------------------------------------------- the records


def test_every_precision_is_a_record_that_says_what_it_does_on_every_device(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(runtime, "cpu_fp16_supported", lambda: True)
    monkeypatch.setattr(runtime, "_cuda_bf16", lambda: True)
    assert runtime.PRECISIONS == tuple(runtime.RECORDS)
    for name in runtime.PRECISIONS:
        for device in ("cpu", "cuda", "mps"):
            resolved = runtime.resolve_precision(name, device)
            assert resolved.device_type == device
            # it runs as asked, or says why not: never replaced in silence
            assert resolved.name == name or resolved.notice, (name, device)
        assert runtime.resolve_precision(name, "cuda").name == name  # CUDA runs them all
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        runtime.resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        runtime.Precision("fp8")
    assert runtime.resolve_precision(None, "cuda", default_cuda="bf16").name == "bf16"
    assert runtime.resolve_precision(None, "cpu", default_cuda="bf16").name == "fp32"


def test_a_precision_refused_on_this_device_is_one_line(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    with pytest.raises(UserError, match="no native bf16") as error:
        runtime.resolve_precision("bf16", "cpu")
    assert "\n" not in str(error.value)
    for name in runtime.FORWARD_ONLY:
        with pytest.raises(UserError, match="gradient scaler"):
            runtime.resolve_precision(name, "cuda", backward=True)
        with pytest.raises(UserError, match="gradient scaler"):
            hessian.HessianOperator(torch.nn.Linear(2, 2), torch.ones(1, 2), torch.zeros(1).long(),
                                    precision=runtime.precision_named(name))


def test_a_precision_names_its_files_and_what_runs_record():
    assert runtime.precision_named("fp32").tag == ""  # older results keep their names
    assert runtime.precision_named("bf16").tag == "_bf16"
    assert runtime.precision_named("bf16").runtime_record() == {"precision": "bf16", "amp": "bf16"}
    assert runtime.precision_named("tf32").runtime_record() == {"precision": "tf32", "amp": None}
    assert runtime.recorded_precision({"amp": "bf16"}) == "bf16"  # runs from before precision
    assert runtime.recorded_precision(None) == "fp32"
    assert runtime.caveat_of("bf16, channels-last") and runtime.caveat_of("fp32") is None
    assert runtime.caveat_of("something else") is None


def test_the_command_line_takes_its_choices_and_help_from_the_records():
    import argparse

    parser = argparse.ArgumentParser()
    add_gpu_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "precision")
    assert tuple(action.choices) == runtime.PRECISIONS
    for name, info in runtime.RECORDS.items():
        assert f"{name}: {info.summary}" in action.help
    # --amp is the deprecated alias of bf16, resolved at the boundary
    assert runtime.amp_alias(True, None) == "bf16" and runtime.amp_alias(False, "tf32") == "tf32"
    with pytest.raises(UserError, match="--amp means --precision bf16"):
        runtime.amp_alias(True, "fp32")


def test_a_scope_joined_sets_the_switches_again():
    """A block asking for the setting an open scope holds sets it again: something inside
    the open scope (a training's set_tf32) may have changed it."""
    before = _switches()
    with runtime.tf32_scope(False):
        runtime.set_tf32(True)
        with runtime.tf32_scope(False):
            assert not runtime.tf32_enabled()
    assert _switches() == before
