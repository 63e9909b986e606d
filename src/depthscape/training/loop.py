"""The training loop: one recipe, iterations or epochs, CSV logs, checkpoints, exact resume.

Read top to bottom, :func:`train` sets up (data on the device once, model, optimizer, a
:class:`~depthscape.training.state.TrainState`, resumed from the checkpoint where asked)
and then runs ``while step < total: batch -> step -> events``:

* batch: the sample indices of :class:`~depthscape.training.batches.BatchSchedule` (a
  pure function of seed and step), cropped/flipped on the device
  (:func:`~depthscape.training.batches.shard_batch`), the learning rate of
  :meth:`Recipe.lr_at`;
* step: :func:`depthscape.training.step.make_train_step`, one update, metrics summed on
  the device;
* events (methods of ``_Run``, from :class:`~depthscape.training.events.RunEvents`): at
  a sync point the metric window is read once (``sync_window``), checked
  (``check_finite``), then ``evaluate``, ``log_row``, ``save_checkpoint`` and ``stop`` run
  as due; what they write goes through :mod:`depthscape.training.runfiles`.

The run's identity (:class:`~depthscape.training.config.TrainConfig`, what is stored of
it and when a saved run is the same one) lives in :mod:`depthscape.training.config`.
A resumable checkpoint holds everything the next steps depend on (weights, optimizer,
RNG states, the partial metric window), so ``resume=True`` continues to the same weights
and CSV rows as an uninterrupted run.

Under ``torchrun`` the same code runs on every rank: :mod:`depthscape.core.distributed`
gives a process-group context whose collectives are real (alone, they are identities),
each rank takes its slice of the one global batch (and of its augmentation draws),
metrics are summed over ranks at the sync points, where the stop decision is agreed too,
and only rank 0 writes files. On CUDA the fast path of :mod:`depthscape.training.fastpath`
applies; elsewhere the loop is the plain one.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import replace
from pathlib import Path

import torch

from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.checkpoint import check_state_dict, load_checkpoint
from depthscape.core.data import Dataset, load_dataset
from depthscape.core.device import get_device
from depthscape.core.distributed import DistContext, env_world_size, setup
from depthscape.core.errors import UserError, notice
from depthscape.core.limits import check_model_fits
from depthscape.core.locking import claim_run
from depthscape.core.models import canonical_name, get_model, model_kwargs_for
from depthscape.core.recipe import Recipe, preprocess_for
from depthscape.core.recipes import recipe_for
from depthscape.core.runs import run_paths
from depthscape.training.batches import BatchSchedule, shard_batch
from depthscape.training.config import TrainConfig, first_difference, run_settings
from depthscape.training.events import RunEvents, TrainResult
from depthscape.training.fastpath import FastPath, fast_path_for
from depthscape.training.graph import CaptureBroke, capture_or_eager, graph_allowed
from depthscape.training.layerstats import LayerStats, layer_count
from depthscape.training.runfiles import TRACE_ENV, NoFiles, RunFiles
from depthscape.training.snapshots import SnapshotWriter, snapshot_path
from depthscape.training.state import TrainState
from depthscape.training.step import MetricSums, make_loss, make_train_step, set_learning_rate


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


def train(config: TrainConfig, dataset: Dataset | None = None) -> TrainResult:
    """Train one model per its recipe; see the module docstring. Returns the final metrics.

    Under torchrun every rank calls this; it joins (and afterwards leaves) the process group.
    """
    model_name = canonical_name(config.model)
    recipe = (config.recipe or recipe_for(model_name)).scaled(config.scale)  # built once, here
    check_model_fits(model_name, recipe.batch_size, get_device(config.device))  # before any work
    world = env_world_size()
    if recipe.batch_size % world:  # checked before joining, so no rank waits on the others
        raise UserError(f"the recipe's batch of {recipe.batch_size} does not split evenly over "
                        f"{world} processes: use a process count that divides it")
    dist = setup(config.device)
    try:
        with contextlib.ExitStack() as held:  # the run's lock lives as long as this call
            return _train(config, recipe, dataset, dist, held)
    finally:
        dist.close()


def _notice(dist: DistContext, message: str) -> None:
    if dist.is_main:
        notice(message)


def _load_data(config: TrainConfig, dist: DistContext) -> Dataset:
    """Load the dataset; under torchrun one process per machine fills the cache first."""
    dataset, error = None, None
    if dist.local_rank == 0:
        try:
            dataset = load_dataset(config.dataset, config.data_dir, config.cache_dir)
        except UserError as caught:
            error = caught
    if not dist.all_true(error is None):
        raise error or UserError("loading the data failed in another process (see rank 0)")
    return dataset if dataset is not None else load_dataset(config.dataset, config.data_dir,
                                                            config.cache_dir)


def _train(config: TrainConfig, recipe: Recipe, dataset: Dataset | None, dist: DistContext,
           held: contextlib.ExitStack) -> TrainResult:
    """Set up, resume or start, then ``batch -> step -> events`` until the run is done."""
    model_name = canonical_name(config.model)
    fast, notice = fast_path_for(dist.device, channels_last=config.channels_last,
                                 compile=config.compile, precision=config.precision,
                                 cuda_graph=config.cuda_graph)
    if notice:
        _notice(dist, notice)
    fast, notice = graph_allowed(fast, dist.enabled)
    if notice:
        _notice(dist, notice)
    out_dir = ensure_writable_dir(config.out_dir)
    dataset = dataset if dataset is not None else _load_data(config, dist)
    run = _Run(config, recipe, model_name, dataset, dist, fast, out_dir)
    # one writer per run (rank 0 holds the lock); --overwrite clears the old run's files first
    held.enter_context(claim_run(run.paths, overwrite=config.overwrite and not config.resume,
                                 owner=dist.is_main, agree=dist.all_true))
    saved = run.saved_state()
    if isinstance(saved, TrainResult):  # resuming a run that had finished
        return saved
    if saved is not None:
        run.keep_saved_switches(saved)
    dist.barrier()  # every rank has looked at the files before rank 0 writes any
    state = run.build_state(saved)

    with _StopRequest(escalate=not dist.enabled) as stop, run.progress():
        state.start_clock()
        while state.step < run.total_steps:
            lr = recipe.lr_at(state.step, run.schedule.epoch_of(state.step))
            set_learning_rate(state.optimizer, lr)
            index = run.schedule.indices(state.step)
            x, y = run.batch(index)
            run.steps[len(index)](x, y)
            state.advance(len(index))
            window = run.after_step(lr, len(index), stop.signal is not None)
            if run.stopping(window):
                return run.stop(window)
    return run.finish()


class _Run(RunEvents):
    """One training run in this process: its settings, data, state and steps (set up
    here), and its events between steps (:class:`~depthscape.training.events.RunEvents`)."""

    def __init__(self, config: TrainConfig, recipe: Recipe, model_name: str, dataset: Dataset,
                 dist: DistContext, fast: FastPath, out_dir: Path):
        self.config, self.recipe, self.model_name = config, recipe, model_name
        self.dist, self.fast, self.dataset = dist, fast, dataset
        self.paths = run_paths(out_dir, model_name, config.seed, dataset.name)
        self.layer_stats_on = config.layer_stats  # a resumed run keeps its own (keep_saved_switches)
        self.files = RunFiles(self.paths) if dist.is_main else NoFiles(self.paths)
        self.train_split = dataset.train.subset(config.train_subset)
        self.test_split = dataset.test.subset(config.test_subset)
        last_batch = len(self.train_split) % recipe.batch_size
        if dist.world_size > 1 and recipe.unit == "epoch" and 0 < last_batch < dist.world_size:
            raise UserError(f"each epoch ends with a batch of {last_batch} images, too few for "
                            f"{dist.world_size} processes: change the subset size or the process count")
        self.preprocess = preprocess_for(recipe, dataset)
        self.settings = run_settings(config, recipe, dataset, self.preprocess, model_name)
        self.settings["dataset"]["train_size"] = len(self.train_split)
        self.settings["dataset"]["test_size"] = len(self.test_split)
        self.settings["runtime"] = {**fast.to_dict(), "world_size": dist.world_size}
        self.schedule = BatchSchedule(len(self.train_split), recipe.batch_size, config.seed,
                                      stream=recipe.unit == "iteration", device=dist.device)
        self.epoch_steps = self.schedule.steps_per_epoch
        self.total_steps = (recipe.length if recipe.unit == "iteration"
                            else recipe.length * self.epoch_steps)
        self.log_every = config.log_every or recipe.log_every
        self.eval_every = config.eval_every or self.epoch_steps
        self.rows: list[dict] = []
        self.last_saved: int | None = None
        self.saved_log_rows: int | None = None  # the resumed checkpoint's record of the log
        self.log_rows = 0  # rows in the log (a resumed run's earlier ones included)
        self.trace: list[torch.Tensor] | None = [] if os.environ.get(TRACE_ENV) else None

    # ---- set-up ----------------------------------------------------------------------

    def saved_state(self) -> dict | TrainResult | None:
        """The checkpoint to resume from, None to start afresh, or the finished run's result.

        Refuses (UserError) a checkpoint written with other settings, and existing files
        unless ``resume`` or ``overwrite`` says what to do with them.
        """
        paths, config = self.paths, self.config
        if paths.resume.exists() and config.resume:
            state = load_checkpoint(paths.resume, map_location="cpu")
            differs = first_difference(state.get("config", {}), self.settings)
            if differs:
                raise UserError(f"{paths.resume} was written with a different setting ({differs}); "
                                "rerun with the same options, or pass --overwrite to start over")
            return state
        if paths.final.exists() and config.resume:
            final = load_checkpoint(paths.final)
            if first_difference(final.get("config", {}), self.settings) is None:
                return TrainResult(paths, int(final.get("iteration", 0)), True, **final.get("metrics", {}))
            raise UserError(f"{paths.final} holds a finished run with different settings; "
                            "pass --overwrite to train again")
        if (paths.resume.exists() or paths.final.exists()) and not config.overwrite:
            existing = paths.resume if paths.resume.exists() else paths.final
            raise UserError(f"{existing} already exists: pass --resume to continue that run "
                            "or --overwrite to start over")
        return None

    def keep_saved_switches(self, saved: dict) -> None:
        """A resumed run keeps the memory layout it started with, unless one is asked for,
        and its layer statistics.

        (Runs before channels-last on the CPU recorded ``channels_last: false``: they resume
        in NCHW, so their steps stay bit-exact with an uninterrupted run.)
        """
        runtime = saved.get("config", {}).get("runtime") or {}
        was = bool(runtime.get("channels_last", False))
        if self.config.channels_last is None and was != self.fast.channels_last:
            self.fast = replace(self.fast, channels_last=was)
            self.settings["runtime"] = {**self.fast.to_dict(), "world_size": self.dist.world_size}
        # and the layer statistics it started with: a layer file without a gap, or none
        # (runs from before layer statistics recorded no such setting)
        train = saved.get("config", {}).get("train") or {}
        self.layer_stats_on = bool(train.get("layer_stats", False))
        self.settings["train"]["layer_stats"] = self.layer_stats_on

    def build_state(self, saved: dict | None) -> TrainState:
        """Model, optimizer, data on the device and the steps; continued from ``saved`` if given."""
        config, dist, fast = self.config, self.dist, self.fast
        fast.apply_global()
        torch.manual_seed(config.seed)
        self.model_kwargs = model_kwargs_for(self.model_name, self.dataset)
        model = get_model(self.model_name, **self.model_kwargs).to(dist.device)
        fast.prepare_model(model)
        optimizer = make_optimizer(self.recipe, model, fused=fast.fused_optimizer)
        if dist.rank > 0:  # other ranks draw their own dropout masks; rank 0 keeps the 1-process stream
            torch.manual_seed(config.seed + 7919 * dist.rank)
        self.images = self.train_split.images.to(dist.device)
        self.labels = self.train_split.labels.to(dist.device)
        self.test_split = self.test_split.to(dist.device)
        augment = torch.Generator(device=dist.device).manual_seed(config.seed + 1)
        count = layer_count(model) if self.layer_stats_on else 0
        self.state = TrainState(model, optimizer, augment, dist, MetricSums.on(dist.device, count))
        self.layer_stats = LayerStats(model, self.state.sums.layers) if count else None
        self.files.layers = count
        if saved is not None:
            self._resume(saved)
        every_steps = (config.snapshot_every or 1) * (self.epoch_steps if self.recipe.unit == "epoch" else 1)
        self.snapshots = SnapshotWriter(  # rank 0 writes; a resume continues the same file
            snapshot_path(self.paths.final), config.snapshot_every, every_steps, self.total_steps,
            self.recipe.unit, self.model_name, self.state.step if saved is not None else None,
            dist.is_main)
        self.snapshots.maybe_add(self.state.step, model)
        net = fast.compiled(dist.wrap_model(model))  # what the step calls; ``model`` is what is saved
        net.train()
        self.steps = {batch: make_train_step(net, optimizer, make_loss(dist.world_size, batch),
                                             self.state.sums, fast.autocast, self.layer_stats)
                      for batch in self.schedule.batch_sizes()}
        if fast.cuda_graph:  # the full batch's step becomes one replayed graph (training/graph.py)
            try:
                self.steps, notice = capture_or_eager(self.steps, self.recipe.batch_size, model,
                                                      optimizer, self.state.sums, *self.example_batch())
            except CaptureBroke as error:  # nothing trained in this process: stop, files untouched
                kept = (f"its checkpoint {self.paths.resume} (iteration {self.state.step}) is "
                        "unchanged: rerun with --resume --no-cuda-graph" if saved is not None
                        else "nothing was trained: rerun with --no-cuda-graph")
                raise UserError(f"{error}; {kept}") from None
            if notice:
                _notice(dist, notice)
                self.settings["runtime"]["cuda_graph"] = False  # the config records what ran
        self.log_rows = self.files.start(self.settings, self.last_saved, self.saved_log_rows)
        return self.state

    def example_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A full training batch without augmentation (the graph's warm-up data; draws no RNG)."""
        index = torch.arange(self.recipe.batch_size, device=self.dist.device) % len(self.images)
        x = self.fast.prepare_input(self.preprocess.normalize(self.images[index]))
        return x, self.labels[index]

    def _resume(self, saved: dict) -> None:
        check_state_dict(self.state.model, saved["model_state"], str(self.paths.resume), self.model_name)
        saved_world = int((saved.get("config", {}).get("runtime") or {}).get("world_size", 1))
        self.state.load_state_dict(saved, saved_world)
        self.last_saved = self.state.step
        rows = saved.get("log_rows")  # absent from checkpoints before the record
        self.saved_log_rows = int(rows) if isinstance(rows, int) and rows >= 0 else None
        if saved_world != self.dist.world_size:
            _notice(self.dist, f"resuming a run started with {saved_world} process(es) on "
                               f"{self.dist.world_size}: BatchNorm statistics are per process, so "
                               "results differ slightly from an uninterrupted run")

    # ---- one step --------------------------------------------------------------------

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's model input and labels for the global batch ``index``."""
        if self.trace is not None:
            self.trace.append(index[slice(*self.dist.shard(len(index)))].cpu())
        x, y = shard_batch(self.preprocess, self.images, self.labels, index, self.state.augment,
                           self.dist.rank, self.dist.world_size)
        return self.fast.prepare_input(x), y
