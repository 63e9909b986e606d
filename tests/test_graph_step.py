"""The step a CUDA graph captures, driven the graph's way on the CPU: static input buffers,
a learning rate held in a tensor, metric sums on the device, the warm-up undone; and the
GPU switches (--precision, --cuda-graph) ignored off CUDA with a notice."""

from __future__ import annotations

import contextlib
import functools
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
from depthscape.training.fastpath import FastPath
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

    def refuse(*args, **kwargs):  # found before any capture began: the process is intact
        raise graph.GraphNotCaptured("RuntimeError: operation not permitted when stream is capturing")

    monkeypatch.setattr(graph, "CAPTURE", refuse)
    steps = {8: step}
    x, y = batches(1)[0]
    result, notice = capture_or_eager(steps, 8, model, optimizer, sums, x, y)
    assert result is steps and result[8] is step
    assert notice.startswith("CUDA graph capture failed (RuntimeError: operation not permitted")
    assert notice.endswith("running eager")
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

    on = FastPath(device_type="cuda", cuda_graph=True, precision="bf16")
    assert graph_allowed(on, distributed=False) == (on, None)
    off, notice = graph_allowed(on, distributed=True)
    assert not off.cuda_graph and off.arithmetic == "bf16" and "torchrun" in notice
    off, notice = graph_allowed(FastPath(device_type="cuda", cuda_graph=True, compile=True), False)
    assert not off.cuda_graph and "--compile" in notice
    plain = FastPath(device_type="cpu")
    assert graph_allowed(plain, distributed=True) == (plain, None)  # nothing to turn off: no notice
    assert on.to_dict()["precision"] == "bf16" and FastPath(precision="bf16").arithmetic == "bf16"


# ---- the capture itself, driven on the CPU through a stand-in for torch.cuda ------------


class FakeCuda:
    """What :func:`graph.capture_step` uses of ``torch.cuda``, recording how it is used.

    Streams carry the device they were made on; ``graph`` checks that the capture runs
    with that device current (the real one captures nothing otherwise), runs the step
    eagerly as a capture would record it, and ``CUDAGraph.replay`` runs ``on_replay``
    (default: nothing, an empty graph). ``capture_fails`` makes the capture's end raise
    and leave the capture stream current, as PyTorch does.
    """

    def __init__(self, on_replay=None, capture_fails=False):
        self.current_device = None
        self.on_replay = on_replay or (lambda: None)
        self.capture_fails = capture_fails
        self.mode = 0
        self.modes_seen, self.captures, self.replays, self.set_streams = [], [], 0, []
        self.default = self.Stream(None)
        self.current = self.default

    def Stream(self, device=None):  # noqa: N802 (torch.cuda's name)
        fake = self

        class Stream:
            def __init__(self):
                self.device = torch.device(device) if device is not None else fake.current_device

            def wait_stream(self, other):
                pass
        return Stream()

    @contextlib.contextmanager
    def device(self, device):
        before, self.current_device = self.current_device, torch.device(device)
        try:
            yield
        finally:
            self.current_device = before

    def current_stream(self, device=None):
        return self.current

    @contextlib.contextmanager
    def stream(self, stream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before

    def set_stream(self, stream):
        self.set_streams.append(stream)
        self.current = stream

    def CUDAGraph(self):  # noqa: N802
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1
                fake.on_replay()
        return Graph()

    @contextlib.contextmanager
    def graph(self, graph, stream=None):
        self.captures.append((self.current_device, stream.device))
        self.current = stream
        yield
        if self.capture_fails:  # capture_end raises: the stream context is never left
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.current = self.default

    def synchronize(self, device=None):
        pass

    def get_sync_debug_mode(self):
        return self.mode

    def set_sync_debug_mode(self, mode):
        self.mode = mode
        self.modes_seen.append(mode)

    def synchronizing_op(self):
        """What ``.item()`` does under ``set_sync_debug_mode("error")``."""
        if self.mode == "error":
            raise RuntimeError("called a synchronizing CUDA operation")


def capture_with(fake, monkeypatch):
    monkeypatch.setattr(graph, "CAPTURE", functools.partial(graph.capture_step, cuda=fake))


def model_state(model, optimizer, sums):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()},
            (sums.loss.clone(), sums.correct.clone()))


def assert_same_state(a, b):
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    for key, slot in a[1].items():
        assert all(torch.equal(v, b[1][key][name]) for name, v in slot.items())
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[2][1], b[2][1])


def test_the_capture_runs_on_the_inputs_device_and_a_good_first_replay_passes_the_check(
        monkeypatch, one_thread):
    model, optimizer, sums, step = fresh_run()
    x, y = batches(1)[0]
    step(x, y)  # optimizer state exists (a resumed run's case)
    before = model_state(model, optimizer, sums)
    fake = FakeCuda(on_replay=lambda: step(x, y))
    capture_with(fake, monkeypatch)
    steps, notice = capture_or_eager({8: step}, 8, model, optimizer, sums, x, y)
    assert notice is None and isinstance(steps[8], CapturedStep) and fake.replays == 1
    # captured with the inputs' device current, on a stream made on that device
    assert fake.captures == [(torch.device("cpu"), torch.device("cpu"))]
    assert fake.current_device is None and fake.current is fake.default  # all put back
    # warm-up steps after the first ran with synchronisation as an error; then the old mode
    assert fake.modes_seen == ["error", 0, "error", 0] and fake.mode == 0
    assert_same_state(model_state(model, optimizer, sums), before)  # the check replay is undone
    assert torch.is_tensor(optimizer.param_groups[0]["lr"])


def test_a_first_replay_that_changes_no_parameter_falls_back_to_eager_with_the_state_restored(
        monkeypatch, one_thread):
    model, optimizer, sums, step = fresh_run()
    x, y = batches(1)[0]
    before = model_state(model, optimizer, sums)
    fake = FakeCuda()  # an empty graph: replays do nothing (what a wrong-device capture gives)
    capture_with(fake, monkeypatch)
    steps, notice = capture_or_eager({8: step}, 8, model, optimizer, sums, x, y)
    assert steps[8] is step and fake.replays == 1
    assert notice.startswith("CUDA graph capture failed (its first replay changed no parameter")
    assert notice.endswith("running eager") and "\n" not in notice
    assert isinstance(optimizer.param_groups[0]["lr"], float)
    after = model_state(model, optimizer, sums)
    assert torch.equal(after[2][0], before[2][0])
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0])
    assert all(torch.count_nonzero(s["momentum_buffer"]) == 0 for s in optimizer.state.values())


def test_the_replay_check_sees_a_zero_learning_rate_through_and_puts_it_back(one_thread):
    model, optimizer, sums, step = fresh_run()
    x, y = batches(1)[0]
    use_tensor_lr(optimizer, torch.device("cpu"))
    set_learning_rate(optimizer, 0.0)  # a schedule starting at 0: a good graph changes nothing
    graph.check_first_replay(lambda: step(x, y), model, optimizer, lambda: None)
    assert float(optimizer.param_groups[0]["lr"]) == 0.0
    with pytest.raises(graph.GraphNotCaptured, match="changed no parameter"):
        graph.check_first_replay(lambda: None, model, optimizer, lambda: None)


def test_a_step_that_would_wait_for_the_gpu_is_found_in_the_warm_up_before_any_capture(
        monkeypatch, one_thread):
    model, optimizer, sums, step = fresh_run()
    x, y = batches(1)[0]
    fake = FakeCuda()
    calls = []

    def syncing_step(a, b):
        calls.append(fake.mode)
        step(a, b)
        fake.synchronizing_op()  # e.g. a loss.item() inside the step

    before = model_state(model, optimizer, sums)
    capture_with(fake, monkeypatch)
    steps, notice = capture_or_eager({8: syncing_step}, 8, model, optimizer, sums, x, y)
    assert calls == [0, "error"]  # the first warm-up step may synchronise, the second may not
    assert fake.captures == [] and fake.mode == 0  # no capture began; the debug mode is back
    assert steps[8] is syncing_step
    assert notice == ("CUDA graph capture failed (RuntimeError: called a synchronizing CUDA "
                      "operation); running eager")
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())


def test_a_capture_that_breaks_part_way_stops_with_one_line_and_puts_the_stream_back(
        monkeypatch, one_thread):
    model, optimizer, sums, step = fresh_run()
    x, y = batches(1)[0]
    fake = FakeCuda(capture_fails=True)
    capture_with(fake, monkeypatch)
    with pytest.raises(graph.CaptureBroke) as caught:
        capture_or_eager({8: step}, 8, model, optimizer, sums, x, y)
    message = str(caught.value)
    assert "\n" not in message and "operation not permitted when stream is capturing" in message
    assert fake.set_streams == [fake.default] and fake.current is fake.default
    assert fake.replays == 0  # never replayed, never continued

    def unknown(*args, **kwargs):  # a failure of unknown kind is not trusted either
        raise RuntimeError("something else")

    monkeypatch.setattr(graph, "CAPTURE", unknown)
    with pytest.raises(graph.CaptureBroke, match="RuntimeError: something else"):
        capture_or_eager({8: step}, 8, model, optimizer, sums, x, y)


def forced_graph_run(tmp_path, data, monkeypatch, fake, out, **kw):
    """A training run on the CPU that takes the captured-step path with ``fake`` as CUDA."""
    import depthscape.training.loop as training

    forced = FastPath(device_type="cpu", cuda_graph=fake is not None)
    monkeypatch.setattr(training, "fast_path_for", lambda device, **kw: (forced, None))
    if fake is not None:
        capture_with(fake, monkeypatch)
    return training.train(training.TrainConfig(
        model="resnet8", dataset=str(data), out_dir=str(tmp_path / out), device="cpu",
        scale=6 / 64_000, log_every=3, eval_every=3, checkpoint_every=3, progress=False, **kw))


def test_an_empty_graph_run_goes_eager_and_trains_exactly_as_an_eager_run(
        tmp_path, cache_dir, monkeypatch, capsys, one_thread):
    data = write_image_folder(tmp_path / "data", size=16)
    eager = forced_graph_run(tmp_path, data, monkeypatch, None, "eager")
    fallback = forced_graph_run(tmp_path, data, monkeypatch, FakeCuda(), "fallback")
    notices = [line for line in capsys.readouterr().err.splitlines() if "capture failed" in line]
    assert len(notices) == 1 and "changed no parameter" in notices[0]
    assert load_checkpoint(fallback.paths.final)["config"]["runtime"]["cuda_graph"] is False
    a = load_checkpoint(eager.paths.final)["state_dict"]
    b = load_checkpoint(fallback.paths.final)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the warm-up and the check were undone
    assert [r["train_loss"] for r in eager.rows] == [r["train_loss"] for r in fallback.rows]


def test_a_broken_capture_stops_the_run_with_one_line_before_any_step(
        tmp_path, cache_dir, monkeypatch, one_thread):
    from depthscape.core.errors import UserError

    data = write_image_folder(tmp_path / "data", size=16)
    first = forced_graph_run(tmp_path, data, monkeypatch, None, "run", stop_after=3)
    assert not first.finished and first.paths.resume.exists()
    kept = first.paths.resume.read_bytes()
    log = first.paths.log.read_text()
    with pytest.raises(UserError) as caught:
        forced_graph_run(tmp_path, data, monkeypatch, FakeCuda(capture_fails=True), "run",
                         resume=True)
    message = str(caught.value)
    assert "\n" not in message and "capture failed part-way" in message
    assert "(iteration 3) is unchanged: rerun with --resume --no-cuda-graph" in message
    assert first.paths.resume.read_bytes() == kept and first.paths.log.read_text() == log
    with pytest.raises(UserError, match="nothing was trained: rerun with --no-cuda-graph"):
        forced_graph_run(tmp_path, data, monkeypatch, FakeCuda(capture_fails=True), "fresh")
