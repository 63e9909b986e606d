"""The step a CUDA graph captures, driven the graph's way on the CPU: static input buffers,
a learning rate held in a tensor, metric sums on the device, the warm-up undone; and the
GPU switches (--precision, --cuda-graph) ignored off CUDA with a notice."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_image_folder

from depthscape.cli import main
from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.distributed import DistContext
from depthscape.core.models import get_model
from depthscape.core.recipes import recipe_for
from depthscape.training import graph
from depthscape.training.graph import (
    CapturedStep,
    StateSnapshot,
    capture_or_eager,
    use_float_lr,
    use_tensor_lr,
)
from depthscape.training.loop import make_optimizer
from depthscape.training.state import TrainState
from depthscape.training.step import MetricSums, make_loss, make_train_step, set_learning_rate

LRS = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batches(count: int, batch: int = 8):
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, 3, 16, 16, generator=generator),
             torch.randint(0, 3, (batch,), generator=generator)) for _ in range(count)]


def fresh_run(optimizer_name: str = "sgd"):
    torch.manual_seed(0)
    model = get_model("resnet8", num_classes=3).train()
    recipe = recipe_for("resnet20" if optimizer_name == "sgd" else "cnn")
    optimizer = make_optimizer(recipe, model)
    sums = MetricSums.on("cpu")
    return model, optimizer, sums, make_train_step(model, optimizer, make_loss(), sums)


def test_static_buffers_tensor_lr_and_device_sums_give_the_eager_loops_weights_bit_for_bit(one_thread):
    data = batches(len(LRS))
    model_a, opt_a, sums_a, step_a = fresh_run()
    for lr, (x, y) in zip(LRS, data):
        set_learning_rate(opt_a, lr)
        step_a(x, y)

    model_b, opt_b, sums_b, step_b = fresh_run()
    use_tensor_lr(opt_b, torch.device("cpu"))
    lr_tensor = opt_b.param_groups[0]["lr"]
    static_x, static_y = torch.empty_like(data[0][0]), torch.empty_like(data[0][1])
    # the graph's way, with "replay" the eager step on the static buffers
    driven = CapturedStep(lambda: step_b(static_x, static_y), static_x, static_y, step_b)
    for lr, (x, y) in zip(LRS, data):
        set_learning_rate(opt_b, lr)
        driven(x, y)
    assert opt_b.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(0.001)
    for (key, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), key
    assert torch.equal(sums_a.loss, sums_b.loss) and torch.equal(sums_a.correct, sums_b.correct)
    assert int(sums_a.correct) > 0


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_warm_up_steps_are_undone_so_the_run_continues_exactly(optimizer_name, one_thread):
    data = batches(4)
    model_a, opt_a, sums_a, step_a = fresh_run(optimizer_name)
    step_a(*data[0])  # the optimizer has state before the "capture" (a resumed run's case)
    model_b, opt_b, sums_b, step_b = fresh_run(optimizer_name)
    step_b(*data[0])
    fresh_params = list(model_b.parameters())[-1:]
    snapshot = StateSnapshot.take(model_b, opt_b, sums_b, torch.device("cpu"))
    for _ in range(3):  # warm-up: real updates, BatchNorm statistics, sums
        step_b(*data[1])
    snapshot.restore(model_b, opt_b, sums_b)
    for x, y in data[1:]:
        step_a(x, y)
        step_b(x, y)
    for (key, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), key
    assert torch.equal(sums_a.loss, sums_b.loss)
    assert fresh_params  # (the model has parameters to compare)


def test_state_created_by_the_warm_up_is_zeroed_which_is_a_fresh_state(one_thread):
    data = batches(3)
    model_a, opt_a, _, step_a = fresh_run()
    model_b, opt_b, sums_b, step_b = fresh_run()
    snapshot = StateSnapshot.take(model_b, opt_b, sums_b, torch.device("cpu"))
    assert snapshot.optimizer == {}  # nothing yet: the warm-up creates the momentum buffers
    step_b(*data[0])
    snapshot.restore(model_b, opt_b, sums_b)
    assert all(torch.count_nonzero(s["momentum_buffer"]) == 0 for s in opt_b.state.values())
    for x, y in data:
        step_a(x, y)
        step_b(x, y)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


def test_a_failed_capture_leaves_the_eager_steps_and_float_lrs_with_a_notice(monkeypatch):
    model, optimizer, sums, step = fresh_run()

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(graph, "CAPTURE", refuse)
    steps = {8: step}
    x, y = batches(1)[0]
    result, notice = capture_or_eager(steps, 8, model, optimizer, sums, x, y)
    assert result is steps and result[8] is step
    assert notice.startswith("CUDA graph capture failed (RuntimeError: operation not permitted")
    assert "more detail" not in notice and notice.endswith("running eager")
    assert isinstance(optimizer.param_groups[0]["lr"], float)


def test_tensor_lrs_round_trip_as_floats_and_adam_is_capturable_only_while_captured():
    model, optimizer, sums, step = fresh_run("adam")
    use_tensor_lr(optimizer, torch.device("cpu"))
    assert optimizer.param_groups[0]["capturable"] is True  # (capturable Adam steps only on a GPU)
    state = TrainState(model, optimizer, torch.Generator(), DistContext(), sums)
    saved = state.state_dict()
    assert isinstance(saved["optimizer_state"]["param_groups"][0]["lr"], float)
    assert torch.is_tensor(optimizer.param_groups[0]["lr"])  # the live optimizer keeps its tensor
    use_float_lr(optimizer)
    assert optimizer.param_groups[0]["capturable"] is False
    assert isinstance(optimizer.param_groups[0]["lr"], float)


def test_tf32_and_cuda_graph_on_cpu_are_ignored_with_a_notice_and_identical_results(
        tmp_path, cache_dir, capsys, one_thread):
    data = write_image_folder(tmp_path / "data", size=16)
    common = ["train", "resnet", "8", "--dataset", str(data), "--device", "cpu", "--scale",
              repr(6 / 64_000), "--log-every", "3", "--eval-every", "3", "--no-progress",
              "--no-channels-last"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert "notice" not in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "gpu"), "--precision", "tf32", "--cuda-graph"]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == 1 and "--precision tf32" in notices[0] and "--cuda-graph" in notices[0]
    assert "--channels-last" not in notices[0]  # turning a switch off is never a notice
    name = "resnet-8_data.pth"
    plain = load_checkpoint(tmp_path / "plain" / "models" / name)["state_dict"]
    gpu = load_checkpoint(tmp_path / "gpu" / "models" / name)["state_dict"]
    for key, tensor in plain.items():
        assert torch.equal(tensor, gpu[key]), key
    runtime = json.loads((tmp_path / "gpu" / "logs" / "resnet8_data_config.json").read_text())["runtime"]
    assert runtime["precision"] == "fp32" and runtime["cuda_graph"] is False
    assert runtime["channels_last"] is False
    # --precision fp32 is what ran, so resuming with it is the same run
    assert main([*common, "--out", str(tmp_path / "gpu"), "--resume", "--precision", "fp32"]) == 0


def test_amp_with_another_precision_is_one_line_error(tmp_path, capsys):
    code = main(["train", "resnet", "8", "--dataset", str(tmp_path), "--amp", "--precision", "fp32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("depthscape: error: --amp means")


def test_tf32_switch_uses_one_api_and_reads_back():
    from depthscape.training.fastpath import set_tf32, tf32_enabled

    before = tf32_enabled()
    try:
        set_tf32(True)
        assert tf32_enabled()
        set_tf32(False)
        assert not tf32_enabled()
        torch.backends.cudnn.is_available()  # reading the flags after the switch must not raise
    finally:
        set_tf32(before)


def test_study_passes_the_gpu_switches_to_every_training_and_landscape(monkeypatch, tmp_path):
    import depthscape.study.runner as runner
    from depthscape.study.runner import StudyConfig, get_budget, training_configs

    seen = {}

    def fake_run_study(config):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run_study", fake_run_study)
    with pytest.raises(SystemExit):
        main(["study", "--out", str(tmp_path), "--precision", "tf32", "--no-cuda-graph",
              "--no-channels-last", "--compile", "--runs-per-gpu", "3", "--landscape-precision", "bf16"])
    config = seen["config"]
    assert (config.precision, config.cuda_graph, config.channels_last, config.compile) == (
        "tf32", False, False, True)
    assert config.runs_per_gpu == 3 and config.landscape_precision == "bf16"
    for train_config in training_configs(config, get_budget("quick"), ["resnet20", "cnn"]):
        assert (train_config.precision, train_config.cuda_graph, train_config.channels_last,
                train_config.compile) == ("tf32", False, False, True)
    # the paper budget leaves every switch to the device's defaults (on CUDA: graph, bf16, NHWC)
    (paper,) = training_configs(StudyConfig(out_dir="x"), get_budget("paper"), ["resnet20"])
    assert (paper.precision, paper.cuda_graph, paper.channels_last) == (None, None, None)


def test_the_graph_is_off_under_torchrun_and_with_compile_with_one_notice():
    from depthscape.training.fastpath import FastPath
    from depthscape.training.graph import graph_allowed

    on = FastPath(device_type="cuda", cuda_graph=True, precision="bf16", amp=True)
    assert graph_allowed(on, distributed=False) == (on, None)
    off, notice = graph_allowed(on, distributed=True)
    assert not off.cuda_graph and off.amp and "torchrun" in notice
    off, notice = graph_allowed(FastPath(device_type="cuda", cuda_graph=True, compile=True), False)
    assert not off.cuda_graph and "--compile" in notice
    plain = FastPath(device_type="cpu")
    assert graph_allowed(plain, distributed=True) == (plain, None)  # nothing to turn off: no notice
    assert on.to_dict()["precision"] == "bf16" and FastPath(amp=True).arithmetic == "bf16"
