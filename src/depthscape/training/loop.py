"""The training loop: one recipe, iterations or epochs, CSV logs, checkpoints, exact resume.

Read top to bottom: :func:`train` loads the data once onto the device, builds the model
and optimizer, then runs steps. Each step takes a batch of indices from
:class:`BatchSchedule` (a pure function of seed and step), augments it on the device,
sets the learning rate from :meth:`Recipe.lr_at` and updates. Metrics accumulate on the
device and are read once per log row; that read is also where a non-finite loss is
caught. A resumable checkpoint holds everything the next steps depend on (weights,
optimizer, RNG states, the partial metric window), so ``resume=True`` continues to the
same weights and CSV rows as an uninterrupted run.

Under ``torchrun`` (see :mod:`depthscape.core.distributed`) the same loop runs on every rank
with DistributedDataParallel: each rank takes its slice of the one global batch (and of
the batch's augmentation draws), metrics are summed over ranks when a row is logged, the
stop decision is agreed at those sync points, and only rank 0 writes files. On CUDA the
fast path of :mod:`depthscape.training.fastpath` applies; elsewhere the loop is the plain one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from depthscape.core.atomic import atomic_write_text, ensure_writable_dir
from depthscape.core.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from depthscape.core.csvlog import LOG_COLUMNS, append_log, init_log_file, truncate_log
from depthscape.core.data import (
    Dataset,
    Preprocess,
    Split,
    crop_flip_params,
    load_dataset,
    random_crop_flip,
)
from depthscape.core.distributed import DistContext, env_world_size, setup, shard_bounds
from depthscape.core.errors import TrainingDiverged, UserError
from depthscape.core.locking import claim_run
from depthscape.training.evaluation import evaluate
from depthscape.training.fastpath import fast_path_for
from depthscape.core.models import canonical_name, get_model, model_kwargs_for
from depthscape.core.recipes import Recipe, preprocess_for, recipe_for
from depthscape.core.runs import RunPaths, run_paths


@dataclass
class TrainConfig:
    """Everything one training run depends on. The recipe defaults to the spec's."""

    model: str
    dataset: str = "cifar10"
    data_dir: str | None = None
    cache_dir: str | None = None
    out_dir: str = "."
    seed: int = 0
    device: str | None = None
    recipe: Recipe | None = None  # None: recipe_for(model)
    scale: float = 1.0  # multiplies length, warm-up and decay points
    train_subset: int | None = None
    test_subset: int | None = None
    eval_every: int | None = None  # iterations between test evaluations; None: once per epoch
    log_every: int | None = None  # iterations between CSV rows (iteration recipes); None: 100
    checkpoint_every: int = 1000  # iterations between resumable checkpoints
    eval_batch_size: int = 1000
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (resumably) once this many iterations are done
    progress: bool = True
    # GPU fast-path switches: act only on CUDA, ignored (with a notice) elsewhere.
    amp: bool = False  # bf16 autocast
    compile: bool = False  # torch.compile the training model
    channels_last: bool = False  # NHWC weights and inputs


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    paths: RunPaths
    iteration: int
    finished: bool
    train_loss: float = math.nan
    train_acc: float = math.nan
    test_loss: float = math.nan
    test_acc: float = math.nan
    elapsed_s: float = 0.0
    rows: list[dict] = field(default_factory=list)


class BatchSchedule:
    """Which training samples each step uses: a pure function of the seed and the step.

    Epoch ``e`` visits the samples in the order of a permutation seeded by (seed, e).
    ``stream=True`` (iteration recipes) reads the permutations back to back in fixed-size
    batches, crossing epoch boundaries, so every batch has the same shape; ``stream=False``
    (epoch recipes) ends each epoch with a smaller last batch, as a DataLoader does.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, stream: bool,
                 device: torch.device | str = "cpu"):
        self.n, self.batch, self.seed, self.stream = num_samples, batch_size, seed, stream
        self.device = device
        self.steps_per_epoch = math.ceil(num_samples / batch_size)
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=generator).to(self.device)
        return self._perms[epoch]

    def epoch_of(self, step: int) -> int:
        return (step * self.batch) // self.n if self.stream else step // self.steps_per_epoch

    def indices(self, step: int) -> torch.Tensor:
        """Sample indices (on the device) of 0-based ``step``."""
        if not self.stream:
            epoch, position = divmod(step, self.steps_per_epoch)
            start = position * self.batch
            return self.permutation(epoch)[start:start + self.batch]
        start = step * self.batch
        epoch, offset = divmod(start, self.n)
        parts, need = [], self.batch
        while need > 0:
            piece = self.permutation(epoch)[offset:offset + need]
            parts.append(piece)
            need -= len(piece)
            epoch, offset = epoch + 1, 0
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def make_optimizer(recipe: Recipe, model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimizer over every parameter of ``model`` (``fused``: CUDA's fused kernel)."""
    extra = {"fused": True} if fused else {}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, **extra)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                **extra)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def shard_batch(preprocess: Preprocess, images: torch.Tensor, labels: torch.Tensor,
                index: torch.Tensor, generator: torch.Generator | None, rank: int,
                world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the global batch ``index``: model input and labels.

    The augmentation draws are made for the whole global batch (the same calls a single
    process makes, from a generator every rank holds in the same state) and sliced like
    the indices, so the ranks together train on exactly the single-process inputs.
    """
    lo, hi = shard_bounds(len(index), rank, world_size)
    mine = images[index[lo:hi]]
    if preprocess.augment:
        params = crop_flip_params(len(index), preprocess.crop_padding, generator, images.device)
        mine = random_crop_flip(mine, preprocess.crop_padding, None,
                                params=tuple(p[lo:hi] for p in params))
    return preprocess.normalize(mine), labels[index[lo:hi]]


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary.

    A second signal stops at once, unless ``escalate`` is off: under torchrun a Ctrl-C
    reaches each worker twice (from the terminal and forwarded by the launcher), and
    torchrun itself kills workers that do not exit in time.
    """

    def __init__(self, escalate: bool = True):
        self.signal: int | None = None
        self.escalate = escalate
        self._old = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and self.escalate:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _config_dict(config: TrainConfig, recipe: Recipe, dataset: Dataset, preprocess: Preprocess,
                 model_name: str) -> dict:
    """The settings stored beside (and inside) the run's files."""
    settings = asdict(config)
    for transient in ("resume", "overwrite", "stop_after", "progress", "device", "recipe",
                      "amp", "compile", "channels_last"):  # switches in effect: "runtime"
        settings.pop(transient)
    return {
        "model": model_name,
        "recipe": recipe.to_dict(),
        "train": settings,
        "dataset": {"name": dataset.name, "classes": list(dataset.classes),
                    "train_size": len(dataset.train), "test_size": len(dataset.test),
                    "in_channels": dataset.in_channels, "image_size": dataset.image_size},
        "preprocess": {"scale": preprocess.scale, "mean": list(preprocess.mean),
                       "augment": preprocess.augment, "crop_padding": preprocess.crop_padding},
    }


def _matches(saved: dict, current: dict) -> str | None:
    """The first setting where a saved run differs from this one, or None."""
    keys = ("model", "recipe", "dataset", "preprocess")
    for key in keys:
        if saved.get(key) != current.get(key):
            return key
    ignore = {"data_dir", "cache_dir", "out_dir", "checkpoint_every", "eval_batch_size"}
    for key, value in current["train"].items():
        if key not in ignore and saved.get("train", {}).get(key) != value:
            return key
    # bf16 changes the arithmetic; the other runtime settings (layout, compile, process
    # count) only change speed and rounding, so a run may resume with others.
    if (saved.get("runtime") or {}).get("amp") != (current.get("runtime") or {}).get("amp"):
        return "amp"
    return None


def train(config: TrainConfig, dataset: Dataset | None = None) -> TrainResult:
    """Train one model per its recipe; see the module docstring. Returns the final metrics.

    Under torchrun every rank calls this; it joins (and afterwards leaves) the process group.
    """
    recipe = (config.recipe or recipe_for(canonical_name(config.model))).scaled(config.scale)
    world = env_world_size()
    if recipe.batch_size % world:  # checked before joining, so no rank waits on the others
        raise UserError(f"the recipe's batch of {recipe.batch_size} does not split evenly over "
                        f"{world} processes: use a process count that divides it")
    ctx = setup(config.device)
    try:
        # issue 11: the run's lock (taken in _train) lives as long as this call
        with contextlib.ExitStack() as held:
            return _train(config, dataset, ctx, held)
    finally:
        ctx.close()


def _notice(ctx: DistContext, message: str) -> None:
    if ctx.is_main:
        print(f"depthscape: notice: {message}", file=sys.stderr, flush=True)


def _load_data(config: TrainConfig, ctx: DistContext) -> Dataset:
    """Load the dataset; under torchrun one process per machine fills the cache first."""
    if not ctx.enabled:
        return load_dataset(config.dataset, config.data_dir, config.cache_dir)
    dataset, error = None, None
    if ctx.local_rank == 0:
        try:
            dataset = load_dataset(config.dataset, config.data_dir, config.cache_dir)
        except UserError as caught:
            error = caught
    if not ctx.all_true(error is None):
        raise error or UserError("loading the data failed in another process (see rank 0)")
    return dataset if dataset is not None else load_dataset(config.dataset, config.data_dir,
                                                            config.cache_dir)


#: Debugging/testing hook: where set to a folder, each rank appends the sample indices it
#: trained on, one tensor per step, to ``<folder>/<run>.rank<r>.pt``.
TRACE_ENV = "DEPTHSCAPE_TRACE_BATCHES"


def _write_trace(steps: list[torch.Tensor], run_name: str, rank: int) -> None:
    path = Path(os.environ[TRACE_ENV]) / f"{run_name}.rank{rank}.pt"
    earlier = torch.load(path) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(earlier + steps, path)


def _train(config: TrainConfig, dataset: Dataset | None, ctx: DistContext,
           held: contextlib.ExitStack) -> TrainResult:
    model_name = canonical_name(config.model)
    recipe = (config.recipe or recipe_for(model_name)).scaled(config.scale)
    device = ctx.device
    world, rank, main = ctx.world_size, ctx.rank, ctx.is_main
    fast, notice = fast_path_for(device, amp=config.amp, channels_last=config.channels_last,
                                 compile=config.compile)
    if notice:
        _notice(ctx, notice)
    out_dir = ensure_writable_dir(config.out_dir)
    if dataset is None:
        dataset = _load_data(config, ctx)
    paths = run_paths(out_dir, model_name, config.seed, dataset.name)
    # issue 11: one writer per run (rank 0 holds the lock); --overwrite clears the old run
    held.enter_context(claim_run(paths, overwrite=config.overwrite and not config.resume,
                                 owner=main, agree=ctx.all_true if ctx.enabled else None))
    train_split = dataset.train.subset(config.train_subset)
    test_split = dataset.test.subset(config.test_subset)
    last_batch = len(train_split) % recipe.batch_size
    if world > 1 and recipe.unit == "epoch" and 0 < last_batch < world:
        raise UserError(f"each epoch ends with a batch of {last_batch} images, too few for "
                        f"{world} processes: change the subset size or the process count")
    preprocess = preprocess_for(recipe, dataset)
    settings = _config_dict(config, recipe, dataset, preprocess, model_name)
    settings["dataset"]["train_size"], settings["dataset"]["test_size"] = len(train_split), len(test_split)
    settings["runtime"] = {**fast.to_dict(), "world_size": world}

    # ---- resume or start -------------------------------------------------------------
    state = None
    if paths.resume.exists() and config.resume:
        state = load_checkpoint(paths.resume, map_location="cpu")
        differs = _matches(state.get("config", {}), settings)
        if differs:
            raise UserError(f"{paths.resume} was written with a different setting ({differs}); "
                            "rerun with the same options, or pass --overwrite to start over")
    elif paths.final.exists() and config.resume:
        final = load_checkpoint(paths.final)
        if _matches(final.get("config", {}), settings) is None:
            metrics = final.get("metrics", {})
            return TrainResult(paths, int(final.get("iteration", 0)), True, **metrics)
        raise UserError(f"{paths.final} holds a finished run with different settings; "
                        "pass --overwrite to train again")
    elif (paths.resume.exists() or paths.final.exists()) and not config.overwrite:
        existing = paths.resume if paths.resume.exists() else paths.final
        raise UserError(f"{existing} already exists: pass --resume to continue that run "
                        "or --overwrite to start over")
    ctx.barrier()  # every rank has looked at the files before rank 0 writes any

    fast.apply_global()
    torch.manual_seed(config.seed)
    model_kwargs = model_kwargs_for(model_name, dataset)
    model = get_model(model_name, **model_kwargs)
    model.to(device)
    fast.prepare_model(model)
    optimizer = make_optimizer(recipe, model, fused=fast.fused_optimizer)
    if rank > 0:  # other ranks draw their own dropout masks; rank 0 keeps the 1-process stream
        torch.manual_seed(config.seed + 7919 * rank)

    images = train_split.images.to(device)
    labels = train_split.labels.to(device)
    test_split = test_split.to(device)
    schedule = BatchSchedule(len(train_split), recipe.batch_size, config.seed,
                             stream=recipe.unit == "iteration", device=device)
    total_steps = recipe.length if recipe.unit == "iteration" else recipe.length * schedule.steps_per_epoch
    epoch_steps = schedule.steps_per_epoch
    log_every = config.log_every or recipe.log_every
    eval_every = config.eval_every or epoch_steps
    aug_generator = torch.Generator(device=device).manual_seed(config.seed + 1)

    step, elapsed_before = 0, 0.0
    window = {"loss": torch.zeros((), dtype=torch.float64, device=device),
              "correct": torch.zeros((), dtype=torch.int64, device=device), "seen": 0, "from": 0}
    last_test = (math.nan, math.nan)
    if state is not None:
        check_state_dict(model, state["model_state"], str(paths.resume), model_name)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        for group in optimizer.param_groups:  # this device's kernel, not the saving one's
            group["fused"], group["foreach"] = (True if fast.fused_optimizer else None), None
        if fast.fused_optimizer:  # fused Adam keeps its step counts on the device, as float32
            for slot in optimizer.state.values():
                if torch.is_tensor(slot.get("step")):
                    slot["step"] = slot["step"].to(device, torch.float32)
        saved_world = int((state.get("config", {}).get("runtime") or {}).get("world_size", 1))
        rng_cpu, rng_cuda = state["rng_cpu"], state.get("rng_cuda")
        window_loss, window_correct = float(state["window_loss"]), int(state["window_correct"])
        if ctx.enabled:  # each rank its own states where the process count is unchanged
            same = saved_world == world
            ranks_cpu, ranks_cuda = state.get("rng_cpu_ranks"), state.get("rng_cuda_ranks")
            if rank > 0:
                rng_cpu = ranks_cpu[rank] if same and ranks_cpu else None
                rng_cuda = ranks_cuda[rank] if same and ranks_cuda else None
            if same and "window_loss_ranks" in state:
                window_loss = float(state["window_loss_ranks"][rank])
                window_correct = int(state["window_correct_ranks"][rank])
            elif rank > 0:  # rank 0 carries the summed window
                window_loss, window_correct = 0.0, 0
        if saved_world != world:
            _notice(ctx, f"resuming a run started with {saved_world} process(es) on {world}: "
                         "BatchNorm statistics are per process, so results differ slightly "
                         "from an uninterrupted run")
        if rng_cpu is not None:
            torch.set_rng_state(rng_cpu)
        if device.type == "cuda" and rng_cuda is not None:
            torch.cuda.set_rng_state(rng_cuda, device)
        aug_generator.set_state(state["rng_augment"].to(aug_generator.get_state().device))
        step = int(state["iteration"])
        elapsed_before = float(state["elapsed_s"])
        window["loss"].fill_(window_loss)
        window["correct"].fill_(window_correct)
        window["seen"], window["from"] = int(state["window_seen"]), int(state["window_from"])
        last_test = tuple(state["last_test"])
        if main:
            truncate_log(paths.log, step) if paths.log.exists() else init_log_file(paths.log, LOG_COLUMNS)
    elif main:
        init_log_file(paths.log, LOG_COLUMNS)
    if main:
        atomic_write_text(paths.config, json.dumps(settings, indent=2) + "\n")

    net: torch.nn.Module = model  # what the training step calls; ``model`` is what is saved
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = fast.compiled(net)

    def rank_states() -> dict:
        """The per-process part of a checkpoint: RNG states and metric window sums.

        Alone: this process's. Under torchrun (a collective) every rank's as lists, so a
        resume with as many processes gives each its own back, plus the window summed over
        ranks and rank 0's RNG under the single-process keys, so one process can resume too.
        """
        own = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
               float(window["loss"]), int(window["correct"]))
        states = {"rng_cpu": own[0], "window_loss": own[2], "window_correct": own[3]}
        if own[1] is not None:
            states["rng_cuda"] = own[1]
        if ctx.enabled:
            gathered = ctx.gather_objects(own)
            states["rng_cpu_ranks"] = [g[0] for g in gathered]
            if own[1] is not None:
                states["rng_cuda_ranks"] = [g[1] for g in gathered]
            states["window_loss_ranks"] = [g[2] for g in gathered]
            states["window_correct_ranks"] = [g[3] for g in gathered]
            states["window_loss"] = math.fsum(states["window_loss_ranks"])
            states["window_correct"] = sum(states["window_correct_ranks"])
        return states

    def checkpoint_payload(per_rank: dict) -> dict:
        return {
            "model": model_name, "model_kwargs": model_kwargs, "config": settings,
            "iteration": step, "elapsed_s": elapsed_before + time.perf_counter() - started,
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
            "rng_augment": aug_generator.get_state().cpu(), **per_rank,
            "window_seen": window["seen"], "window_from": window["from"],
            "last_test": list(last_test),
        }

    def sync_window(signalled: bool) -> tuple[tuple[float, int], bool]:
        """Under torchrun: the window's sums over all ranks, and whether any rank got a signal.

        One all-reduce of three numbers; each rank keeps its own window (so the sums,
        and their rounding, do not depend on where a run was stopped and resumed).
        """
        packed = torch.stack([window["loss"], window["correct"].double(),
                              torch.tensor(1.0 if signalled else 0.0, dtype=torch.float64,
                                           device=device)])
        total = ctx.all_sum(packed).tolist()
        return (total[0], int(total[1])), total[2] > 0

    def window_totals(synced: tuple[float, int] | None) -> tuple[float, int]:
        if synced is not None:
            return synced
        return float(window["loss"]), int(window["correct"])

    def check_finite(synced: tuple[float, int] | None = None) -> None:
        if not math.isfinite(window_totals(synced)[0]):
            where = (f"last good checkpoint kept: {paths.resume} (iteration {last_saved})"
                     if last_saved is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"training diverged: non-finite loss in iterations {window['from'] + 1}-{step} "
                f"of {model_name}; {where}")

    def run_evaluation() -> tuple[float, float]:
        """Test loss and accuracy; under torchrun each rank evaluates a slice (rank 0's weights)."""
        with fast.autocast():
            if not ctx.enabled:
                return evaluate(model, test_split, preprocess, config.eval_batch_size)
            ctx.broadcast_buffers(model)  # BatchNorm statistics as rank 0 (and its checkpoint) has them
            lo, hi = shard_bounds(len(test_split), rank, world)
            part = Split(test_split.images[lo:hi], test_split.labels[lo:hi])
            loss, acc = evaluate(model, part, preprocess, config.eval_batch_size) if hi > lo else (0.0, 0.0)
            sums = torch.tensor([loss * (hi - lo), acc * (hi - lo) / 100.0, float(hi - lo)],
                                dtype=torch.float64, device=device)
            total_loss, total_correct, count = ctx.all_sum(sums).tolist()
            return total_loss / max(1.0, count), 100.0 * round(total_correct) / max(1.0, count)

    def epoch_of_row() -> float:
        if recipe.unit == "epoch":
            return float(math.ceil(step / epoch_steps))
        return round(step * recipe.batch_size / len(train_split), 4)

    last_saved = step if state is not None else None
    rows_written: list[dict] = []
    trace: list[torch.Tensor] | None = [] if os.environ.get(TRACE_ENV) else None
    net.train()
    started = time.perf_counter()
    window_started, window_images = started, 0
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and main), unit="it",
               desc=paths.run_name, dynamic_ncols=True, mininterval=0.5)
    try:
        with _StopRequest(escalate=not ctx.enabled) as stop:
            while step < total_steps:
                epoch = schedule.epoch_of(step)
                lr = recipe.lr_at(step, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                index = schedule.indices(step)
                batch = len(index)
                if trace is not None:
                    trace.append(index[slice(*shard_bounds(batch, rank, world))].cpu())
                if ctx.enabled:
                    x, y = shard_batch(preprocess, images, labels, index, aug_generator, rank, world)
                else:
                    x = preprocess.train_batch(images[index], aug_generator)
                    y = labels[index]
                x = fast.prepare_input(x)
                with fast.autocast():
                    logits = net(x)
                    if ctx.enabled:  # DDP averages gradients over ranks: sum / global batch
                        loss_sum = F.cross_entropy(logits, y, reduction="sum")
                        loss = loss_sum * (world / batch)
                    else:
                        loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    window["loss"] += (loss_sum.detach().double() if ctx.enabled
                                       else loss.detach().double() * len(y))
                    window["correct"] += (logits.argmax(1) == y).sum()
                window["seen"] += batch
                window_images += batch
                step += 1
                bar.update(1)

                at_epoch_end = step % epoch_steps == 0 or step == total_steps
                eval_now = bool(eval_every and step % eval_every == 0) or step == total_steps or (
                    recipe.unit == "epoch" and at_epoch_end)
                log_now = at_epoch_end if recipe.unit == "epoch" else (
                    step % log_every == 0 or step == total_steps)
                checkpoint_now = step < total_steps and step % config.checkpoint_every == 0
                stop_after_now = config.stop_after is not None and step >= config.stop_after
                synced, agreed_stop = None, False
                if ctx.enabled and (eval_now or log_now or checkpoint_now or stop_after_now):
                    # the one per-step sync point: every rank reaches it at the same steps
                    synced, agreed_stop = sync_window(stop.signal is not None)
                if eval_now:
                    check_finite(synced)
                    last_test = run_evaluation()
                if log_now:
                    check_finite(synced)
                    loss_total, correct_total = window_totals(synced)
                    seen = max(1, window["seen"])
                    train_loss = loss_total / seen
                    train_acc = 100.0 * correct_total / seen
                    row = {
                        "iteration": step, "epoch": epoch_of_row(), "lr": lr,
                        "train_loss": train_loss, "train_acc": train_acc,
                        "train_err": 100.0 - train_acc,
                        "test_loss": last_test[0], "test_acc": last_test[1],
                        "test_err": 100.0 - last_test[1],
                        "elapsed_s": round(elapsed_before + time.perf_counter() - started, 3),
                    }
                    if main:
                        append_log(paths.log, [row[c] for c in LOG_COLUMNS])
                    rows_written.append(row)
                    now = time.perf_counter()
                    bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.1f}",
                                    test=f"{last_test[1]:.1f}", lr=f"{lr:.2g}",
                                    ips=f"{window_images / max(now - window_started, 1e-9):.0f}")
                    window_started, window_images = now, 0
                    window["loss"].zero_()
                    window["correct"].zero_()
                    window["seen"], window["from"] = 0, step
                if ctx.enabled:  # signals count only where every rank agreed on them
                    stopping = agreed_stop or stop_after_now
                else:
                    stopping = stop.signal is not None or stop_after_now
                if step < total_steps and (checkpoint_now or stopping):
                    check_finite(synced)
                    per_rank = rank_states()
                    if main:
                        save_checkpoint(paths.resume, checkpoint_payload(per_rank))
                    last_saved = step
                if stopping and step < total_steps:
                    ctx.barrier()  # the checkpoint is on disk before any rank leaves
                    if agreed_stop if ctx.enabled else stop.signal is not None:
                        raise UserError(f"interrupted at iteration {step}; the run is saved in "
                                        f"{paths.resume}: rerun with --resume to continue",
                                        exit_code=130)
                    bar.close()
                    return TrainResult(paths, step, False, rows=rows_written,
                                       elapsed_s=elapsed_before + time.perf_counter() - started)
    finally:
        bar.close()
        if trace is not None:
            _write_trace(trace, paths.run_name, rank)

    elapsed = elapsed_before + time.perf_counter() - started
    last = rows_written[-1] if rows_written else {}
    metrics = {"train_loss": last.get("train_loss", math.nan),
               "train_acc": last.get("train_acc", math.nan),
               "test_loss": last_test[0], "test_acc": last_test[1], "elapsed_s": elapsed}
    if main:
        save_checkpoint(paths.final, {"model": model_name, "model_kwargs": model_kwargs,
                                      "config": settings, "iteration": step, "metrics": metrics,
                                      "state_dict": model.state_dict()})
        paths.resume.unlink(missing_ok=True)
    ctx.barrier()  # the final weights are on disk before any rank returns
    return TrainResult(paths, step, True, rows=rows_written, **metrics)


def run_is_finished(out_dir: str | Path, model: str, seed: int = 0, dataset: str = "cifar10") -> bool:
    """True where the final checkpoint of that run exists."""
    return run_paths(out_dir, model, seed, dataset).final.exists()
