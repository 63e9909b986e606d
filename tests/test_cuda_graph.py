"""The captured training step on a real GPU (skipped without CUDA): it trains like the eager
step, resumes exactly, and falls back to eager with a notice where capture fails."""

from __future__ import annotations

import pytest
import torch
from conftest import write_image_folder

from depthscape.core.checkpoint import load_checkpoint
from depthscape.training import graph
from depthscape.training.fastpath import tf32_enabled
from depthscape.training.loop import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: How far a captured run may drift from an eager one after 30 steps, per precision: the
#: captured step reads a float32 learning rate (eager: a Python float) and cuDNN may pick
#: other algorithms, so only rounding differs; bf16 rounds far more coarsely.
TOLERANCE = {"fp32": 2e-3, "bf16": 5e-2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), size=16)


def config(data, out, model="resnet8", steps=30, device="cuda", **kw) -> TrainConfig:
    # the CNN: two epochs of 32 + 32 + 8 images (Adam, dropout, cosine, a smaller last batch)
    scale = steps / 64_000 if model != "cnn" else 2 / 50
    return TrainConfig(model=model, dataset=str(data), out_dir=str(out), device=device, scale=scale,
                       log_every=10, eval_every=10, checkpoint_every=7, progress=False, **kw)


def final_state(result) -> dict:
    return load_checkpoint(result.paths.final)["state_dict"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captured_and_eager_runs_of_30_steps_agree_within_the_precisions_tolerance(
        precision, data, tmp_path, cache_dir):
    captured = train(config(data, tmp_path / "graph", precision=precision, cuda_graph=True))
    eager = train(config(data, tmp_path / "eager", precision=precision, cuda_graph=False))
    runtime = load_checkpoint(captured.paths.final)["config"]["runtime"]
    assert runtime["cuda_graph"] is True and runtime["precision"] == precision
    assert load_checkpoint(eager.paths.final)["config"]["runtime"]["cuda_graph"] is False
    assert captured.iteration == eager.iteration == 30
    for a, b in zip(captured.rows, eager.rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=TOLERANCE[precision])
    a, b = final_state(captured), final_state(eager)
    for key, tensor in a.items():
        if tensor.is_floating_point():
            scale = max(1.0, float(b[key].abs().max()))
            assert float((tensor - b[key]).abs().max()) <= TOLERANCE[precision] * scale * 10, key


@pytest.mark.parametrize("model", ["resnet8", "cnn"])
def test_a_captured_run_stopped_and_resumed_gives_the_uninterrupted_weights(
        model, data, tmp_path, cache_dir, monkeypatch):
    # deterministic cuDNN algorithms, so two runs in this process compute the same sums
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    whole = train(config(data, tmp_path / "whole", model=model, precision="fp32"))
    stopped = train(config(data, tmp_path / "split", model=model, precision="fp32",
                            stop_after=4 if model == "cnn" else 12))
    assert not stopped.finished
    resumed = train(config(data, tmp_path / "split", model=model, precision="fp32", resume=True))
    assert resumed.finished and resumed.iteration == whole.iteration
    assert load_checkpoint(whole.paths.final)["config"]["runtime"]["cuda_graph"] is True
    a, b = final_state(whole), final_state(resumed)
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key
    assert [r["train_loss"] for r in whole.rows][-1] == [r["train_loss"] for r in resumed.rows][-1]


def test_a_capture_failure_falls_back_to_eager_with_a_notice(data, tmp_path, cache_dir, monkeypatch,
                                                             capsys):
    def refuse(*args, **kwargs):  # found before the capture began: the process is intact
        raise graph.GraphNotCaptured("RuntimeError: an op that cannot be captured")

    monkeypatch.setattr(graph, "CAPTURE", refuse)
    result = train(config(data, tmp_path / "fallback", steps=10))
    assert result.finished and result.iteration == 10
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if "CUDA graph capture failed" in line]
    assert len(notices) == 1 and "an op that cannot be captured" in notices[0]
    runtime = load_checkpoint(result.paths.final)["config"]["runtime"]
    assert runtime["cuda_graph"] is False  # the config records what ran
    assert all(torch.isfinite(t).all() for t in final_state(result).values() if t.is_floating_point())


def test_cuda_defaults_are_bf16_channels_last_and_the_graph(data, tmp_path, cache_dir):
    result = train(config(data, tmp_path / "defaults", steps=5))
    runtime = load_checkpoint(result.paths.final)["config"]["runtime"]
    assert runtime["precision"] == "bf16" and runtime["amp"] == "bf16"
    assert runtime["channels_last"] is True and runtime["cuda_graph"] is True
    assert not tf32_enabled()  # bf16 and fp32 run with TF32 explicitly off


def test_landscape_precision_is_part_of_a_cuda_surfaces_identity(tmp_path):
    from dataclasses import replace

    import h5py
    import numpy as np
    from _landscape_tools import calibrated_model, tiny_dataset, write_checkpoint

    from depthscape.analysis.landscape import LandscapeConfig, compute_landscape, read_surface
    from depthscape.core.errors import UserError

    data = tiny_dataset()
    checkpoint = write_checkpoint(tmp_path / "m.pth", calibrated_model("resnet8", dataset=data))
    config = LandscapeConfig(resolution=3, device="cuda", precision="bf16", batch_size=20)
    bf16 = compute_landscape(checkpoint, config, output=tmp_path / "bf16.h5", dataset=data,
                             progress=False)
    with h5py.File(bf16, "r") as f:
        assert f.attrs["precision"] == "bf16"
    with pytest.raises(UserError, match="precision"):  # a resume never mixes two precisions
        compute_landscape(checkpoint, replace(config, precision="fp32"), output=bf16, dataset=data,
                          progress=False)
    fp32 = compute_landscape(checkpoint, replace(config, precision="fp32"), output=tmp_path / "fp32.h5",
                             dataset=data, progress=False)
    a, b = read_surface(bf16)["loss"], read_surface(fp32)["loss"]
    assert np.allclose(a, b, rtol=5e-2, atol=5e-2) and not np.array_equal(a, b)


def test_a_step_that_synchronises_is_found_in_the_warm_up_and_the_cnn_then_trains_eager(
        data, tmp_path, cache_dir, monkeypatch, capsys):
    """A real step that cannot be captured (it reads the loss back) must never reach the
    capture: it is found in the warm-up, so dropout (the CUDA RNG) still works eagerly."""
    import depthscape.training.loop as training

    original = training.make_train_step

    def syncing(net, optimizer, loss_fn, sums, autocast):
        step = original(net, optimizer, loss_fn, sums, autocast)

        def step_and_read(x, y):
            step(x, y)
            float(sums.loss)  # a host read: waits for the GPU
        return step_and_read

    monkeypatch.setattr(training, "make_train_step", syncing)
    result = train(config(data, tmp_path / "sync", model="cnn"))
    assert result.finished
    notices = [line for line in capsys.readouterr().err.splitlines() if "capture failed" in line]
    assert len(notices) == 1 and "synchroniz" in notices[0]
    assert load_checkpoint(result.paths.final)["config"]["runtime"]["cuda_graph"] is False
    torch.nn.functional.dropout(torch.ones(8, device="cuda"), 0.5, training=True)  # RNG not poisoned


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_run_on_the_second_gpu_captures_a_graph_that_trains(data, tmp_path, cache_dir):
    torch.cuda.set_device(0)
    result = train(config(data, tmp_path / "gpu1", steps=10, device="cuda:1"))
    assert load_checkpoint(result.paths.final)["config"]["runtime"]["cuda_graph"] is True
    eager = train(config(data, tmp_path / "eager1", steps=10, device="cuda:1", cuda_graph=False))
    assert result.rows[-1]["train_loss"] == pytest.approx(eager.rows[-1]["train_loss"], rel=5e-2)


def test_the_steps_between_two_log_rows_never_wait_for_the_gpu(data, tmp_path, cache_dir,
                                                                 monkeypatch):
    """Between the sync points (log rows, evaluations, checkpoints) nothing in the loop may
    synchronise: set_sync_debug_mode("error") there raises on any host-device wait."""
    import depthscape.training.loop as training
    from depthscape.training.state import TrainState

    after_step, start_clock = training._Run.after_step, TrainState.start_clock

    def guarded_after_step(self, lr, images, signalled):
        due = self.due()
        if not (any(due) or signalled):
            return after_step(self, lr, images, signalled)
        torch.cuda.set_sync_debug_mode("default")  # a sync point: reading back is its job
        try:
            return after_step(self, lr, images, signalled)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    def strict_start(self):
        start_clock(self)
        torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(training._Run, "after_step", guarded_after_step)
    monkeypatch.setattr(TrainState, "start_clock", strict_start)
    try:
        for graphed in (True, False):
            result = train(config(data, tmp_path / f"strict{graphed}", steps=25, cuda_graph=graphed))
            torch.cuda.set_sync_debug_mode("default")
            assert result.finished and len(result.rows) == 3
    finally:
        torch.cuda.set_sync_debug_mode("default")
