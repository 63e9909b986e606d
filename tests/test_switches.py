"""GPU fast-path switches: accepted everywhere; on the CPU channels-last and bf16 act, the
CUDA-only ones are ignored with one notice and never change CPU results.

Every test names its device: on a machine with a GPU nothing here may drift onto it (a
CPU bit-identity test run on CUDA with ``cudnn.benchmark`` left on by an earlier test is
flaky), and the CUDA test compiles nothing (a cold Inductor compile takes tens of seconds;
``--compile`` has its own slow test).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import write_image_folder

from depthscape.cli import main
from depthscape.core import runtime
from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.csvlog import read_log
from depthscape.core.errors import UserError
from depthscape.training.config import first_difference
from depthscape.training.fastpath import FastPath, fast_path_for, set_tf32, tf32_enabled

OPTIONS = ["--scale", repr(8 / 64_000), "--log-every", "4", "--eval-every", "4",
           "--checkpoint-every", "4", "--no-progress"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def process_wide_switches_restored():
    """cuDNN's and TF32's process-wide flags as they were before each test (training on CUDA
    turns ``cudnn.benchmark`` on for the rest of the process)."""
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    tf32 = tf32_enabled()
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic
    set_tf32(tf32)


def test_cuda_only_switches_on_cpu_are_ignored_with_one_notice_and_identical_results(
        tmp_path, cache_dir, capsys, one_thread):
    data = write_image_folder(tmp_path / "data", size=16)
    common = ["train", "resnet", "8", "--dataset", str(data), "--device", "cpu", *OPTIONS]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    plain_err = capsys.readouterr().err
    assert "notice" not in plain_err
    assert main([*common, "--out", str(tmp_path / "fast"), "--compile", "--cuda-graph",
                 "--precision", "tf32"]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == 1
    assert all(flag in notices[0] for flag in ("--compile", "--cuda-graph", "--precision tf32"))
    assert "ignored on cpu" in notices[0]

    name = "resnet-8_data.pth"
    plain = load_checkpoint(tmp_path / "plain" / "models" / name)
    fast = load_checkpoint(tmp_path / "fast" / "models" / name)
    for key, tensor in plain["state_dict"].items():
        assert torch.equal(tensor, fast["state_dict"][key]), key

    def rows(out):
        return [{k: v for k, v in r.items() if k != "elapsed_s"}
                for r in read_log(tmp_path / out / "logs" / "resnet8_data_log.csv")]

    assert rows("plain") == rows("fast") and len(rows("plain")) == 2
    runtime = json.loads((tmp_path / "fast" / "logs" / "resnet8_data_config.json").read_text())["runtime"]
    assert runtime["amp"] is None and runtime["compile"] is False and runtime["cuda_graph"] is False
    assert runtime["precision"] == "fp32" and runtime["device_type"] == "cpu"
    assert runtime["channels_last"] is True  # the CPU's default layout
    # resuming the finished plain run with the (ignored) switches is the same run: no error
    assert main([*common, "--out", str(tmp_path / "plain"), "--resume", "--compile"]) == 0


def test_the_cpu_fast_path_is_channels_last_fp32_unless_asked_and_mps_is_plain(monkeypatch):
    # channels_last=None is the device's default (what the command line passes)
    fast, notice = fast_path_for(CPU, channels_last=None, compile=True, cuda_graph=True,
                                 precision="tf32")
    assert fast == FastPath(device_type="cpu", channels_last=True)
    assert "only on CUDA" in notice and "ignored on cpu" in notice
    assert fast_path_for(CPU, channels_last=None) == (FastPath(device_type="cpu", channels_last=True),
                                                      None)
    _, single = fast_path_for(CPU, compile=True)
    assert single.startswith("--compile acts only on CUDA")
    plain, notice = fast_path_for(CPU, channels_last=False)
    assert plain == FastPath(device_type="cpu") and notice is None
    x = torch.ones(2, 3, 4, 4)
    assert plain.prepare_input(x) is x
    with plain.autocast():
        assert not torch.is_autocast_enabled("cpu")
    model = torch.nn.Conv2d(3, 4, 3)
    assert plain.compiled(plain.prepare_model(model)) is model and model.weight.is_contiguous()
    # bf16 acts on the CPU only where it has native bf16, and is refused in one line elsewhere
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)
    bf16, notice = fast_path_for(CPU, channels_last=None, precision="bf16")
    assert bf16.arithmetic == "bf16" and bf16.channels_last and notice is None
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    with pytest.raises(UserError, match="no native bf16"):
        fast_path_for(CPU, precision="bf16")
    # MPS: every switch off, one notice
    mps, notice = fast_path_for(torch.device("mps"), precision="bf16", channels_last=True)
    assert mps == FastPath(device_type="mps") and "ignored on mps" in notice


def test_resume_refuses_another_precision_but_not_another_layout_or_process_count():
    base = {"model": "resnet8", "recipe": {}, "dataset": {}, "preprocess": {}, "train": {"seed": 0}}
    saved = {**base, "runtime": {"amp": "bf16", "compile": True, "channels_last": True, "world_size": 4}}
    assert first_difference(saved, {**base, "runtime": {"amp": None}}) == "precision"
    assert first_difference(saved, {**base, "runtime": {"amp": "bf16", "compile": False,
                                                "channels_last": False, "world_size": 1}}) is None
    assert first_difference(base, {**base, "runtime": {"amp": None}}) is None  # checkpoints from before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_path_trains_with_every_switch_but_compile(tmp_path, cache_dir):
    fast, notice = fast_path_for(torch.device("cuda"), precision="bf16", channels_last=True)
    assert fast.cudnn_benchmark and fast.fused_optimizer and fast.channels_last and fast.cuda_graph
    data = write_image_folder(tmp_path / "data", size=16)
    assert main(["train", "resnet", "8", "--dataset", str(data), "--device", "cuda", *OPTIONS,
                 "--out", str(tmp_path / "gpu"), "--amp", "--channels-last", "--cuda-graph"]) == 0
    checkpoint = load_checkpoint(tmp_path / "gpu" / "models" / "resnet-8_data.pth")
    runtime = checkpoint["config"]["runtime"]
    assert runtime["cudnn_benchmark"] is True and runtime["cuda_graph"] is True
    assert runtime["precision"] == "bf16" and runtime["channels_last"] is True
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()
               if t.is_floating_point())


@pytest.mark.slow  # a cold Inductor compile: tens of seconds
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
                    reason="needs CUDA and Triton")
def test_cuda_fast_path_trains_compiled(tmp_path, cache_dir):
    data = write_image_folder(tmp_path / "data", size=16)
    assert main(["train", "resnet", "8", "--dataset", str(data), "--device", "cuda", *OPTIONS,
                 "--out", str(tmp_path / "gpu"), "--compile"]) == 0
    runtime = load_checkpoint(tmp_path / "gpu" / "models" / "resnet-8_data.pth")["config"]["runtime"]
    assert runtime["compile"] is True and runtime["cuda_graph"] is False  # compiled, not captured


def test_several_landscape_points_in_one_batched_call_equal_one_at_a_time(one_thread):
    from depthscape.analysis.landscape.batched import evaluate_points
    from depthscape.analysis.landscape.directions import random_directions
    from depthscape.analysis.landscape.points import PointEvaluator
    from depthscape.core.data import Preprocess, Split
    from depthscape.core.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet8", num_classes=3).eval()
    for module in model.modules():  # trained-looking BatchNorm statistics, so the fold matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    generator = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 3, (40,), generator=generator))
    evaluator = PointEvaluator(model, random_directions(model, 2, 0, "filter"), split,
                               Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0)), batch_size=16,
                               device=CPU)
    points = [(0.0, 0.0), (0.5, -0.25), (-1.0, 1.0)]
    batched = evaluate_points(evaluator, points)
    assert batched.shape == (3, 2)
    for row, point in zip(batched.tolist(), points):
        loss, acc = evaluator.evaluate(point)
        assert row[0] == pytest.approx(loss, rel=1e-4)
        assert row[1] == pytest.approx(acc, abs=1e-9)
    assert len({round(r[0], 3) for r in batched.tolist()}) == 3  # the points really differ


def test_the_cuda_code_path_forced_on_cpu_trains_and_resumes_exactly(tmp_path, cache_dir, monkeypatch,
                                                                     one_thread):
    """The fast path's code (bf16 autocast, channels_last, fused SGD) runs here only if forced:
    it must train, record itself, and resume to the same weights as an uninterrupted run."""
    import depthscape.training.loop as training

    forced = FastPath(device_type="cpu", precision="bf16", channels_last=True, fused_optimizer=True)
    monkeypatch.setattr(training, "fast_path_for", lambda device, **kw: (forced, None))
    data = write_image_folder(tmp_path / "data", size=16)

    def config(out, **kw):
        return training.TrainConfig(model="resnet8", dataset=str(data), out_dir=str(tmp_path / out),
                                    device="cpu", scale=8 / 64_000, log_every=4, eval_every=4,
                                    checkpoint_every=3, progress=False, **kw)

    whole = training.train(config("whole"))
    assert not training.train(config("split", stop_after=5)).finished
    split = training.train(config("split", resume=True))
    assert split.finished and split.iteration == 8
    a = load_checkpoint(whole.paths.final)
    b = load_checkpoint(split.paths.final)
    assert a["config"]["runtime"]["amp"] == "bf16" and a["config"]["runtime"]["fused_optimizer"]
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert all(torch.isfinite(t).all() for t in a["state_dict"].values() if t.is_floating_point())
