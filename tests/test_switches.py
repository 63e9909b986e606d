"""GPU fast-path switches: accepted everywhere, acting only on CUDA, never changing CPU results."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_image_folder

from depthscape.cli import main
from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.csvlog import read_log
from depthscape.training.fastpath import FastPath, cpu_bf16_supported, fast_path_for
from depthscape.training.loop import _matches

OPTIONS = ["--scale", repr(8 / 64_000), "--log-every", "4", "--eval-every", "4",
           "--checkpoint-every", "4", "--no-progress"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_switches_on_cpu_are_ignored_with_one_notice_and_identical_results(
        tmp_path, cache_dir, capsys, one_thread):
    data = write_image_folder(tmp_path / "data", size=16)
    common = ["train", "resnet", "8", "--dataset", str(data), "--device", "cpu", *OPTIONS]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    plain_err = capsys.readouterr().err
    assert "notice" not in plain_err
    # CUDA-only switches (channels-last and bf16 act on the CPU: tests/test_cpu_fastpath.py)
    assert main([*common, "--out", str(tmp_path / "fast"), "--precision", "tf32", "--compile",
                 "--cuda-graph"]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == 1
    assert all(flag in notices[0] for flag in ("--precision tf32", "--compile", "--cuda-graph"))
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
    assert runtime["amp"] is None and runtime["compile"] is False and runtime["precision"] == "fp32"
    assert runtime["cuda_graph"] is False and runtime["device_type"] == "cpu"
    # resuming the finished plain run with the (ignored) switches is the same run: no error
    assert main([*common, "--out", str(tmp_path / "plain"), "--resume", "--compile"]) == 0


def test_fast_path_off_cuda_and_the_cpu_is_the_plain_path():
    fast, notice = fast_path_for("mps", amp=True, channels_last=True, compile=True)
    assert fast == FastPath(device_type="mps")
    assert "only on CUDA" in notice
    assert fast_path_for("mps") == (FastPath(device_type="mps"), None)
    _, single = fast_path_for("mps", amp=True)
    assert single.startswith("--amp acts only on CUDA")
    x = torch.ones(2, 3, 4, 4)
    assert fast.prepare_input(x) is x
    with fast.autocast():
        assert not torch.is_autocast_enabled("cpu")
    model = torch.nn.Conv2d(3, 4, 3)
    model_c = fast.compiled(fast.prepare_model(model))
    assert model_c is model and model.weight.is_contiguous()


def test_on_the_cpu_compile_is_ignored_and_the_layout_and_bf16_act():
    fast, notice = fast_path_for("cpu", channels_last=True, compile=True)
    assert fast.channels_last and not fast.compile and fast.arithmetic == "fp32"
    assert notice.startswith("--compile acts only on CUDA")
    x = torch.ones(2, 3, 4, 4)
    assert fast.prepare_input(x).is_contiguous(memory_format=torch.channels_last)
    if cpu_bf16_supported():
        fast, notice = fast_path_for("cpu", amp=True)
        assert fast.arithmetic == "bf16" and notice is None
        with fast.autocast():
            assert torch.is_autocast_enabled("cpu")


def test_resume_refuses_another_precision_but_not_another_layout_or_process_count():
    base = {"model": "resnet8", "recipe": {}, "dataset": {}, "preprocess": {}, "train": {"seed": 0}}
    saved = {**base, "runtime": {"amp": "bf16", "compile": True, "channels_last": True, "world_size": 4}}
    assert _matches(saved, {**base, "runtime": {"amp": None}}) == "precision"
    assert _matches(saved, {**base, "runtime": {"amp": "bf16", "compile": False,
                                                "channels_last": False, "world_size": 1}}) is None
    assert _matches(base, {**base, "runtime": {"amp": None}}) is None  # checkpoints from before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_path_trains_with_every_switch(tmp_path, cache_dir):
    fast, notice = fast_path_for("cuda", amp=True, channels_last=True)
    assert fast.cudnn_benchmark and fast.fused_optimizer and fast.channels_last
    data = write_image_folder(tmp_path / "data", size=16)
    assert main(["train", "resnet", "8", "--dataset", str(data), "--device", "cuda", *OPTIONS,
                 "--out", str(tmp_path / "gpu"), "--amp", "--channels-last", "--compile"]) == 0
    checkpoint = load_checkpoint(tmp_path / "gpu" / "models" / "resnet-8_data.pth")
    assert checkpoint["config"]["runtime"]["cudnn_benchmark"] is True
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()
               if t.is_floating_point())


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
                               Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0)), batch_size=16)
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

    forced = FastPath(device_type="cpu", amp=True, channels_last=True, fused_optimizer=True)
    monkeypatch.setattr(training, "fast_path_for", lambda device, **kw: (forced, None))
    data = write_image_folder(tmp_path / "data", size=16)

    def config(out, **kw):
        return training.TrainConfig(model="resnet8", dataset=str(data), out_dir=str(tmp_path / out),
                                    scale=8 / 64_000, log_every=4, eval_every=4,
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
