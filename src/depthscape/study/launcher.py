"""Running many training runs: one after another, or concurrently on several GPUs.

:func:`run_trainings` is the one place the study hands its runs to. Where it finds one
GPU or none (or runs under torchrun, where each run is itself data-parallel) it trains the
configs one after another in this process, exactly as :func:`depthscape.training.loop.train`
would. With several GPUs it starts one worker process per GPU (``spawn``, each seeing only
its own GPU through ``CUDA_VISIBLE_DEVICES``) and hands each a run as soon as it is free,
so seven independent trainings on eight GPUs take as long as the longest. ``runs_per_device``
(or ``$DEPTHSCAPE_RUNS_PER_GPU``) packs that many runs onto each device at once, which keeps
one GPU busy with small models (ResNet-20, the CNN) that leave most of it idle.

Every run writes its own files exactly as it would alone (runs differ in model, seed or
dataset, so their files never collide), and each resumes or is skipped as its config says.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.multiprocessing as mp

from depthscape.core.distributed import env_world_size
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name
from depthscape.training.loop import TrainConfig, TrainResult, train

#: Environment variable: concurrent runs per device for :func:`run_trainings` (default 1).
RUNS_PER_GPU_ENV = "DEPTHSCAPE_RUNS_PER_GPU"


def plan_slots(configs: Sequence[TrainConfig], devices: Sequence[str] | None = None,
               runs_per_device: int | None = None) -> list[str]:
    """The device of each concurrent worker; fewer than two means: run in this process.

    ``devices=None`` takes every visible GPU, provided every config leaves the device
    open (``None`` or ``"cuda"``) and this is not a torchrun worker; else nothing.
    ``runs_per_device=None`` reads ``$DEPTHSCAPE_RUNS_PER_GPU`` (default 1).
    """
    if runs_per_device is None:
        text = os.environ.get(RUNS_PER_GPU_ENV, "1")
        try:
            runs_per_device = int(text)
        except ValueError:
            raise UserError(f"${RUNS_PER_GPU_ENV} must be a whole number, got {text!r}") from None
    if runs_per_device < 1:
        raise UserError(f"runs per device must be at least 1, got {runs_per_device}")
    if devices is None:
        if env_world_size() > 1 or any(c.device not in (None, "cuda") for c in configs):
            return []

        if not torch.cuda.is_available():
            return []
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    slots = [d for d in devices for _ in range(runs_per_device)]
    return slots[:max(1, len(configs))]


def run_trainings(configs: Sequence[TrainConfig], dataset=None, *,
                  devices: Sequence[str] | None = None,
                  runs_per_device: int | None = None) -> list[TrainResult]:
    """Train every config (resuming or skipping finished ones as each config says).

    Returns the results in the order of ``configs``. ``dataset`` (a loaded
    :class:`depthscape.core.data.Dataset`) is shared by all runs when given (through shared
    memory where runs go to other processes). ``devices`` (e.g. ``["cuda:0", "cuda:1"]``,
    or ``["cpu", "cpu"]`` for testing) and ``runs_per_device`` override the plan of
    :func:`plan_slots`. Concurrent runs: a run that fails stops no other running one, but
    no new run starts after it; once the running ones end, the first error is raised.
    """
    configs = list(configs)
    slots = plan_slots(configs, devices, runs_per_device)
    if len(slots) < 2:
        if devices:  # one device named: use it
            configs = [replace(c, device=devices[0]) for c in configs]
        return [train(config, dataset=dataset) for config in configs]
    return _run_concurrently(configs, dataset, slots)


# ---- concurrent runs ---------------------------------------------------------------------


def _gpu_env(device: str) -> tuple[str, str | None]:
    """The device a worker is told to use, and its CUDA_VISIBLE_DEVICES (None: unchanged)."""
    if not device.startswith("cuda"):
        return device, None
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if index >= len(entries):
            raise UserError(f"{device} asked for, but CUDA_VISIBLE_DEVICES={visible} shows "
                            f"{len(entries)} GPU(s)")
        return "cuda", entries[index]
    return "cuda", str(index)


def _worker(config: TrainConfig, dataset, connection) -> None:
    """Child process: train one config and send back ("ok", result) or an error."""
    try:
        result = train(config, dataset=dataset)
        connection.send(("ok", result))
    except UserError as error:
        connection.send(("user", (type(error).__name__, str(error), error.exit_code)))
    except BaseException:  # noqa: BLE001 - a bug: keep the child's traceback for the parent's message
        connection.send(("crash", traceback.format_exc()))
    finally:
        connection.close()


def _say(message: str) -> None:
    print(f"depthscape: {message}", file=sys.stderr, flush=True)


def _run_concurrently(configs: list[TrainConfig], dataset, slots: list[str]) -> list[TrainResult]:
    return _Workers(configs, dataset, slots).run()


class _Workers:
    """Concurrent trainings: one worker process per slot, each handed the next pending run
    as soon as it is free; results and errors collected in the order of ``configs``."""

    def __init__(self, configs: list[TrainConfig], dataset, slots: list[str]):
        self.configs, self.dataset, self.slots = configs, dataset, slots
        self.context = mp.get_context("spawn")
        self.results: list[TrainResult | None] = [None] * len(configs)
        self.errors: list[tuple[int, BaseException]] = []
        self.pending = list(range(len(configs)))
        self.running: dict[int, tuple] = {}  # slot -> (config index, process, connection, started)
        self.messages: dict[int, tuple] = {}  # slot -> what its worker sent (read as soon as it comes)
        self.free = list(range(len(slots)))
        self.interrupted = False

    def run(self) -> list[TrainResult]:
        old_handler = None
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            old_handler = signal.signal(signal.SIGTERM, self._forward_sigterm)
        try:
            while self.pending or self.running:
                while self.pending and self.free and not self.errors and not self.interrupted:
                    self.free.sort()
                    self._start(self.free.pop(0), self.pending.pop(0))
                if not self.running:
                    break
                self._wait()
        except KeyboardInterrupt:
            for _, process, _, _ in self.running.values():
                process.kill()
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
        if self.interrupted:
            raise UserError("interrupted; each unfinished run saved a resumable checkpoint: run "
                            "the same command again to continue them", exit_code=130)
        if self.errors:
            self.errors.sort(key=lambda item: item[0])
            raise self.errors[0][1]
        return [r for r in self.results if r is not None]

    def _forward_sigterm(self, signum, frame):  # a SIGTERM to us reaches the workers too
        for _, process, _, _ in list(self.running.values()):
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGTERM)
        raise KeyboardInterrupt

    def _start(self, slot: int, index: int) -> None:
        device, visible = _gpu_env(self.slots[slot])
        config = replace(self.configs[index], device=device, progress=False)
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_worker, args=(config, self.dataset, send),
                                       name=f"depthscape-run-{index}", daemon=False)
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            if visible is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible
            process.start()
        finally:
            if visible is not None:
                if saved is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = saved
        send.close()
        self.running[slot] = (index, process, receive, time.perf_counter())
        _say(f"[{self.slots[slot]}] {canonical_name(config.model)} (seed {config.seed}) started")

    def _wait(self) -> None:
        """Until a worker sends its result or ends; read what came, collect who ended."""
        waiting = [r[1].sentinel for r in self.running.values()]
        waiting += [r[2] for slot, r in self.running.items() if slot not in self.messages]
        try:
            ready = multiprocessing.connection.wait(waiting)
        except KeyboardInterrupt:
            # a Ctrl-C reached the workers as well: they save a resumable checkpoint
            # and exit; wait for them (a second Ctrl-C stops them at once)
            self.interrupted = True
            _say("interrupted: waiting for the running trainings to save their state")
            return
        for slot, (_, process, receive, _) in list(self.running.items()):
            if receive in ready and slot not in self.messages:
                # read now: a result bigger than the pipe's buffer blocks its sender
                try:
                    self.messages[slot] = receive.recv()
                except (EOFError, OSError):  # ended without a word: _collect() says so
                    self.messages[slot] = None
            if process.sentinel in ready:
                self._collect(slot)

    def _collect(self, slot: int) -> None:
        index, process, receive, began = self.running.pop(slot)
        message = self.messages.pop(slot, None)
        if message is None:
            with contextlib.suppress(EOFError, OSError):
                if receive.poll():
                    message = receive.recv()
        process.join()
        receive.close()
        self.free.append(slot)
        name, where = canonical_name(self.configs[index].model), self.slots[slot]
        minutes = (time.perf_counter() - began) / 60
        if message is None:
            self.errors.append((index, RuntimeError(
                f"the process training {name} ended with exit code {process.exitcode} "
                "and no result")))
        elif message[0] == "ok":
            self.results[index] = message[1]
            outcome = (f"test acc {message[1].test_acc:.2f}%" if message[1].finished
                       else f"stopped at iteration {message[1].iteration}")
            _say(f"[{where}] {name} done in {minutes:.1f} min: {outcome}")
        elif message[0] == "user":
            _, text, exit_code = message[1]
            self.errors.append((index, UserError(text, exit_code=exit_code)))
            _say(f"[{where}] {name} failed: {text}")
        else:
            self.errors.append((index, RuntimeError(f"training {name} crashed:\n{message[1]}")))
            _say(f"[{where}] {name} crashed (traceback follows at the end)")
