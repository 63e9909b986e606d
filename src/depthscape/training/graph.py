"""The training step captured once as one CUDA graph and replayed (CUDA only).

What is captured is exactly :func:`depthscape.training.step.make_train_step`'s step:
forward (under the fast path's autocast), loss, backward, the optimizer update and the
metric sums on the device. The graph reads its batch from static input tensors; the loop
writes each batch into them (after the on-device gather, crop/flip and normalisation)
and replays the graph, so a step costs one copy and one launch instead of hundreds.

Capture follows the PyTorch recipe for whole-network capture: a few warm-up steps on a
side stream (cuDNN picks its algorithms, the optimizer creates its state, autocast fills
its cache), then ``torch.cuda.graph``. The warm-up steps are real updates, so every
tensor they change (weights, BatchNorm statistics, optimizer state, metric sums, the
CUDA RNG of dropout) is saved before and copied back in place afterwards: the first
replay is the run's next step, exactly as if nothing had happened (fresh optimizer state
is zeroed, which equals the fresh state for SGD with momentum and for Adam).

The learning rate must change without a re-capture: it becomes a float32 device tensor
in every param group (the fused SGD/Adam kernels and ``capturable`` Adam read it on the
device), and :func:`depthscape.training.step.set_learning_rate` updates it with ``fill_``.

Dropout inside the graph draws from the default CUDA generator, which PyTorch registers
with the graph: each replay advances its offset, so ``torch.cuda.get_rng_state`` saved
in a checkpoint and restored on resume continues the same stream.

Everything runs inside ``torch.cuda.device(dev)`` on streams of that device: a process
never makes ``cuda:N`` current by itself, and a graph captured on a stream of another
device records nothing (PyTorch only warns), so every replay would do nothing. The first
replay is therefore checked once, at capture, to change the parameters.

What cannot be captured is found before the capture begins, where the process is still
intact: the warm-up steps after the first run with ``torch.cuda.set_sync_debug_mode("error")``
(an op that waits for the GPU, the usual reason a capture fails, raises there). Such a
step, and a capture whose first replay changes nothing, leave the run on the eager step
with a one-line notice (:class:`GraphNotCaptured`). A capture that fails part-way leaves
PyTorch's CUDA state broken (the RNG stays in capture mode, the current stream on the
capture stream), so that run stops with one line (:class:`CaptureBroke`) before any step
is taken, its checkpoint untouched; it never continues in a broken state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from depthscape.core.errors import UserError
from depthscape.training.fastpath import FastPath
from depthscape.training.step import MetricSums, TrainStep

#: Warm-up steps on a side stream before capture (the PyTorch docs use three; DDP needs 11).
WARMUP_STEPS = 3


class GraphNotCaptured(Exception):
    """The step cannot run as a graph, found while the process is intact: the run goes eager."""


class CaptureBroke(UserError):
    """A capture failed part-way: this process's CUDA state cannot be trusted, the run stops."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:160]}" if text else type(error).__name__


class CapturedStep:
    """A train step captured as one CUDA graph: ``step(x, y)`` copies the batch into the
    graph's static inputs and calls ``replay`` (the graph's). The eager step it came from
    stays usable as ``eager``; ``graph`` keeps the graph (and its memory pool) alive."""

    def __init__(self, replay: Callable[[], None], static_x: torch.Tensor, static_y: torch.Tensor,
                 eager: TrainStep, graph: object = None):
        self.replay, self.static_x, self.static_y = replay, static_x, static_y
        self.eager, self.graph = eager, graph

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.replay()


def use_tensor_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Hold each param group's learning rate as a float32 tensor on ``device`` (in place).

    Adam is made ``capturable``: its ``step()`` refuses a capture otherwise (fused or not),
    and the unfused kernel then keeps its step counts on the device. Its warning about a
    capturable optimizer stepping outside a graph is silenced: the warm-up and an epoch's
    smaller last batch do that on purpose. Fused SGD takes a tensor learning rate as it is.
    """
    for group in optimizer.param_groups:
        lr = group["lr"]
        group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        if "capturable" in group:
            group["capturable"] = True
            optimizer._warned_capturable_if_run_uncaptured = True


def use_float_lr(optimizer: torch.optim.Optimizer) -> None:
    """Undo :func:`use_tensor_lr`: plain Python learning rates (the eager path's)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False


@dataclass
class StateSnapshot:
    """Copies of every tensor a warm-up step changes, to put back in place after capture."""

    model: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]
    sums: list[torch.Tensor]  # MetricSums.tensors()
    rng_cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer, sums: MetricSums,
             device: torch.device) -> StateSnapshot:
        saved_optimizer = {id(p): {k: v.detach().clone() for k, v in slot.items() if torch.is_tensor(v)}
                           for p, slot in optimizer.state.items()}
        return cls({k: v.detach().clone() for k, v in model.state_dict().items()}, saved_optimizer,
                   [tensor.clone() for tensor in sums.tensors()],
                   torch.cuda.get_rng_state(device) if device.type == "cuda" else None, device)

    @torch.no_grad()
    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, sums: MetricSums) -> None:
        """Copy the saved values back into the same tensors (the graph holds their addresses)."""
        for key, tensor in model.state_dict().items():
            tensor.copy_(self.model[key])
        for param, slot in optimizer.state.items():
            saved = self.optimizer.get(id(param), {})
            for key, value in slot.items():
                if not torch.is_tensor(value):
                    continue
                if key in saved:
                    value.copy_(saved[key])
                else:  # state the warm-up created is zeroed: equal to a fresh state
                    value.zero_()
        for tensor, saved in zip(sums.tensors(), self.sums):
            tensor.copy_(saved)
        if self.rng_cuda is not None:
            torch.cuda.set_rng_state(self.rng_cuda, self.device)


def capture_step(step: TrainStep, model: nn.Module, optimizer: torch.optim.Optimizer,
                 sums: MetricSums, example_x: torch.Tensor, example_y: torch.Tensor,
                 warmup: int = WARMUP_STEPS, cuda=torch.cuda) -> CapturedStep:
    """Capture ``step`` (built over ``model``, ``optimizer`` and ``sums``) as one CUDA graph.

    ``example_x``/``example_y`` give the static inputs' device, shape, dtype and memory
    layout (and the warm-up's data). Warm-up, capture and the check of the first replay
    run inside ``cuda.device(dev)`` on streams made on ``dev``; every state they change is
    restored afterwards, so the run continues exactly where it was. The optimizer must
    already hold a tensor learning rate (:func:`use_tensor_lr`). Raises
    :class:`GraphNotCaptured` (the process is intact) or :class:`CaptureBroke` (it is not);
    ``cuda`` is the ``torch.cuda`` module (tests pass a stand-in to drive this on the CPU).
    """
    device = example_x.device
    static_x = torch.empty_like(example_x)  # keeps the memory layout (channels-last)
    static_y = torch.empty_like(example_y)
    static_x.copy_(example_x)
    static_y.copy_(example_y)
    snapshot = StateSnapshot.take(model, optimizer, sums, device)
    with cuda.device(device):
        try:
            warm_up(step, static_x, static_y, warmup, cuda)
        except Exception as error:
            snapshot.restore(model, optimizer, sums)
            raise GraphNotCaptured(_first_line(error)) from error
        graph = _capture(step, optimizer, static_x, static_y, cuda)  # CaptureBroke: no restore
        try:
            check_first_replay(graph.replay, model, optimizer, lambda: cuda.synchronize(device))
        finally:
            snapshot.restore(model, optimizer, sums)
    return CapturedStep(graph.replay, static_x, static_y, step, graph)


@contextlib.contextmanager
def sync_debug(cuda, mode: str) -> Iterator[None]:
    """``cuda.set_sync_debug_mode(mode)`` inside the block, the previous mode after it."""
    before = cuda.get_sync_debug_mode()
    cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        cuda.set_sync_debug_mode(before)


def warm_up(step: TrainStep, x: torch.Tensor, y: torch.Tensor, count: int, cuda=torch.cuda) -> None:
    """``count`` steps on a side stream of ``x``'s device; every one after the first under
    ``set_sync_debug_mode("error")``, so a step that would wait for the GPU (and so break
    a capture) raises here, before any capture began. The first step may synchronise
    (cuDNN's benchmark, lazy initialisation, the optimizer's state are made then)."""
    device = x.device
    side = cuda.Stream(device)
    side.wait_stream(cuda.current_stream(device))
    try:
        with cuda.stream(side):
            for index in range(count):
                with sync_debug(cuda, "error") if index else contextlib.nullcontext():
                    step(x, y)
    finally:  # also after a failure: what is restored next must not race the side stream
        cuda.current_stream(device).wait_stream(side)


def _capture(step: TrainStep, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             cuda=torch.cuda):
    """The graph of one ``step(x, y)``, captured on a stream of ``x``'s device.

    A capture that fails leaves PyTorch's CUDA state broken (``capture_end`` raising skips
    putting back the current stream, and the RNG stays in capture mode): the current stream
    is put back as far as that is possible, and :class:`CaptureBroke` stops the run.
    """
    device = x.device
    before = cuda.current_stream(device)
    graph = cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # backward allocates .grad from the graph's pool
    try:
        with cuda.graph(graph, stream=cuda.Stream(device)):
            step(x, y)
        cuda.synchronize(device)
    except Exception as error:
        with contextlib.suppress(Exception):
            cuda.set_stream(before)
        raise CaptureBroke(f"CUDA graph capture failed part-way ({_first_line(error)}); this "
                           "process's CUDA state cannot be trusted after it") from error
    return graph


def parameter_copies(model: nn.Module) -> list[torch.Tensor]:
    """Copies of ``model``'s parameters, to compare with after a replay."""
    return [p.detach().clone() for p in model.parameters()]


def check_changed(before: list[torch.Tensor], model: nn.Module) -> None:
    """Raise :class:`GraphNotCaptured` where no parameter of ``model`` differs from ``before``."""
    if not any(not torch.equal(old, new.detach()) for old, new in zip(before, model.parameters())):
        raise GraphNotCaptured("its first replay changed no parameter: an empty graph, captured "
                               "on another device's stream")


def check_first_replay(replay: Callable[[], None], model: nn.Module,
                       optimizer: torch.optim.Optimizer, synchronize: Callable[[], None]) -> None:
    """Replay once and check that the parameters changed (:func:`check_changed`).

    A zero learning rate (a schedule starting at 0) would change nothing even in a good
    graph, so the check replays with a small positive one; the caller restores every
    state afterwards, the learning rates are put back here.
    """
    rates = [group["lr"] for group in optimizer.param_groups if torch.is_tensor(group["lr"])]
    saved = [rate.clone() for rate in rates]
    for rate in rates:
        rate.copy_(torch.where(rate == 0, torch.full_like(rate, 1e-3), rate))
    before = parameter_copies(model)
    replay()
    synchronize()
    try:
        check_changed(before, model)
    finally:
        for rate, value in zip(rates, saved):
            rate.copy_(value)


#: The capture function :func:`capture_or_eager` calls (tests replace it to force a failure).
CAPTURE: Callable[..., CapturedStep] = capture_step


def capture_or_eager(steps: dict[int, TrainStep], batch: int, model: nn.Module,
                     optimizer: torch.optim.Optimizer, sums: MetricSums, example_x: torch.Tensor,
                     example_y: torch.Tensor) -> tuple[dict[int, TrainStep], str | None]:
    """``steps`` with the step of the full ``batch`` captured, and a notice (or None).

    Only the full batch is captured: an epoch recipe's smaller last batch keeps its eager
    step (the same optimizer and sums, just not replayed). Where the step cannot be
    captured (:class:`GraphNotCaptured`: found before the capture, or an empty graph), the
    steps come back unchanged with float learning rates and a one-line notice naming why.
    Any other failure is a capture that broke part-way: :class:`CaptureBroke` is raised.
    """
    use_tensor_lr(optimizer, example_x.device)
    try:
        captured = CAPTURE(steps[batch], model, optimizer, sums, example_x, example_y)
    except GraphNotCaptured as error:  # the process is intact: run eager rather than crash
        use_float_lr(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return steps, f"CUDA graph capture failed ({error}); running eager"
    except CaptureBroke:
        raise
    except Exception as error:  # not known to have left the process intact: stop
        raise CaptureBroke(f"CUDA graph capture failed ({_first_line(error)})") from error
    return {**steps, batch: captured}, None


def graph_allowed(fast: FastPath, distributed: bool) -> tuple[FastPath, str | None]:
    """``fast`` with the captured step turned off where it cannot run here, and a notice.

    Under torchrun the step runs eager: DistributedDataParallel's bucketed all-reduce can
    be captured only with settings this loop does not make, so it is not attempted.
    ``torch.compile`` makes graphs of its own, so with ``--compile`` the step is not
    captured a second time.
    """
    if not fast.cuda_graph:
        return fast, None
    if distributed:
        return replace(fast, cuda_graph=False), ("--cuda-graph: under torchrun the step runs eager "
                                                 "(no capture of DistributedDataParallel)")
    if fast.compile:
        return replace(fast, cuda_graph=False), ("--cuda-graph: with --compile the step runs "
                                                 "compiled, not captured")
    return fast, None
