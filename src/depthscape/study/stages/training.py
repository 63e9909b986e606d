"""Training: every model and seed, through the launcher (finished runs skipped, interrupted
ones resumed), on the schedules and data the budget scales."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name
from depthscape.core.recipes import recipe_for
from depthscape.core.runtime import recorded_precision
from depthscape.study import launcher
from depthscape.study.stages.base import Stage
from depthscape.training.loop import TrainConfig


@dataclass(frozen=True)
class TrainBudget:
    """How much training a budget does. ``None`` means "all of it"."""

    scale: float  # ResNet/PlainNet: multiplies the 64,000 iterations, warm-up and decays
    cnn_scale: float  # CNN: multiplies its 50 epochs and cosine period
    train_subset: int | None  # training images (fixed random subset)
    test_subset: int | None  # test images evaluated during training
    eval_every: int | None  # iterations between test evaluations (None: once per epoch)
    log_every: int | None  # iterations between CSV rows (None: the recipe's 100)
    checkpoint_every: int  # iterations between resumable checkpoints
    # Iterations every ResNet/PlainNet starts at a tenth of its learning rate (the spec's
    # warm-up lr); None keeps each recipe's own warm-up, scaled with the schedule.
    warmup_iterations: int | None = None
    # weight snapshots per run, for the optimization trajectories (None: none)
    snapshots: int | None = None

    def recipe(self, model: str):
        """The recipe ``model`` trains with under this budget (already scaled)."""
        recipe = recipe_for(canonical_name(model))
        # cnn_scale is the budget's factor for epoch recipes (the CNN's), scale for the rest
        recipe = recipe.scaled(self.cnn_scale if recipe.unit == "epoch" else self.scale)
        if self.warmup_iterations and recipe.unit == "iteration":
            recipe = replace(recipe, warmup_length=self.warmup_iterations,
                             warmup_lr=recipe.warmup_lr or recipe.lr / 10)
        return recipe

    def snapshot_every(self, model: str) -> int | None:
        """Iterations (epochs for the CNN) between weight snapshots: about ``snapshots`` per run."""
        if not self.snapshots:
            return None
        return max(1, self.recipe(model).length // self.snapshots)

    def snapshot_count(self, model: str) -> int:
        """How many snapshots a finished run of ``model`` keeps (0 without snapshots)."""
        every = self.snapshot_every(model)
        if every is None:
            return 0
        length = self.recipe(model).length  # the initial weights, every ``every``, the last
        return 1 + length // every + (1 if length % every else 0)

    def iterations(self, model: str) -> str:
        """Human-readable training length of ``model`` under this budget."""
        recipe = self.recipe(model)
        return f"{recipe.length} {recipe.unit}{'' if recipe.length == 1 else 's'}"


BUDGETS = {
    # The spec's recipes: 64,000 iterations (ResNet/PlainNet), 50 epochs (CNN), all of the
    # data. Days on a CPU, hours on a GPU.
    "paper": TrainBudget(scale=1.0, cnn_scale=1.0, train_subset=None, test_subset=None,
                         eval_every=None, log_every=None, checkpoint_every=1000, snapshots=40),
    # Sized for a 2-core CPU on real CIFAR-10 (numbers and timings in docs/study.md): all
    # six ResNets/PlainNets train the same 400 iterations (the spec's schedule scaled by
    # 1/160: lr decays at 200 and 300) on a fixed 10,000-image subset, so depth and the
    # shortcut are the only differences; the CNN trains 5 epochs on the same subset. The
    # first phase (200 iterations) runs at the spec's warm-up rate, a tenth of the base
    # lr: at lr 0.1 ResNet-56's first steps blow up (with or without a 40-iteration
    # warm-up) and a 400-iteration run sits at chance level, while ResNet-20 is fine.
    "quick": TrainBudget(scale=0.00625, cnn_scale=0.1, train_subset=10_000, test_subset=1000,
                         eval_every=100, log_every=20, checkpoint_every=100,
                         warmup_iterations=200, snapshots=40),
    # Seconds per model on tiny data: for tests and for trying the pipeline. The CNN trains
    # 2 epochs, not 1: its snapshots are taken per epoch, and a trajectory needs 3 of them
    # (the initial weights and two more); tests/test_study.py checks every budget for that.
    "smoke": TrainBudget(scale=1 / 8000, cnn_scale=0.04, train_subset=256, test_subset=64,
                         eval_every=4, log_every=2, checkpoint_every=4, snapshots=4),
}


def training_configs(config, budget, models: Sequence[str]) -> list:
    """One resumable TrainConfig per model and seed, as the budget says."""
    train = budget.training
    # snapshots only for the trajectories (switched off: none kept)
    snapshots = "trajectories" not in config.skip
    configs = []
    for seed in range(config.seeds):
        for model in models:
            # an epoch recipe (the CNN's) logs once per epoch and is evaluated at its end
            per_epoch = train.recipe(model).unit == "epoch"
            configs.append(TrainConfig(
                model=model, dataset=config.dataset, data_dir=config.data_dir,
                cache_dir=config.cache_dir, out_dir=str(config.out_dir), seed=seed,
                device=config.device, recipe=train.recipe(model), scale=1.0,
                train_subset=train.train_subset, test_subset=train.test_subset,
                eval_every=None if per_epoch else train.eval_every,
                log_every=None if per_epoch else train.log_every,
                checkpoint_every=train.checkpoint_every, resume=True,
                progress=config.progress, precision=config.precision,
                cuda_graph=config.cuda_graph, channels_last=config.channels_last,
                compile=config.compile,
                snapshot_every=train.snapshot_every(model) if snapshots else None))
    return configs


def recorded_arithmetic(runs) -> dict[str, str]:
    """Each run's arithmetic as its config records it (``"bf16, channels-last"``), by run
    name: what the runs were trained with, which a folder's earlier calls may have chosen."""
    found = {}
    for run in runs:
        try:
            runtime = json.loads(run.paths.config.read_text()).get("runtime") or {}
        except (OSError, ValueError, AttributeError):
            continue
        found[run.paths.run_name] = recorded_precision(runtime) + (
            ", channels-last" if runtime.get("channels_last") else "")
    return found


class TrainingStage(Stage):
    name = "training"
    order = 10
    budgets = BUDGETS
    numbers = {key: key for key in ("scale", "cnn_scale", "train_subset", "test_subset",
                                    "eval_every", "log_every", "checkpoint_every",
                                    "warmup_iterations", "snapshots")}

    def run(self, study) -> None:
        config = study.config
        study.say(f"training {len(study.runs)} run(s) ({study.budget.name} budget)")
        try:
            # runs per GPU only where asked: else run_trainings' own default ($DEPTHSCAPE_RUNS_PER_GPU)
            per_gpu = {} if config.runs_per_gpu is None else {"runs_per_device": config.runs_per_gpu}
            wanted = {(run.model, run.seed) for run in study.runs}  # a unit's: its own
            configs = [c for c in training_configs(config, study.budget, study.models)
                       if (canonical_name(c.model), c.seed) in wanted]
            launcher.run_trainings(configs, dataset=study.dataset, **per_gpu)
        except UserError as error:
            if error.exit_code != 130:
                raise
            where = str(error).split(";")[0]  # "interrupted at iteration N"
            raise UserError(f"{where}; the run is saved: run the same study command again "
                            "to continue", exit_code=130) from None
        study.result.arithmetic["training"] = recorded_arithmetic(study.finished_runs())

    def budget_rows(self, budget) -> list[list[str]]:
        train = budget.training
        return [
            ["ResNet/PlainNet training", f"{train.iterations('resnet20')} (scale {train.scale:g} "
                                         "of the spec's 64,000)"],
            ["CNN training", f"{train.iterations('cnn')} (scale {train.cnn_scale:g} of 50)"],
            ["training images", str(train.train_subset or "all")],
            ["test images during training", str(train.test_subset or "all")],
        ]

    def describe(self, budget) -> str:
        train = budget.training
        return (f"ResNet/PlainNet {train.iterations('resnet20')}, CNN {train.iterations('cnn')}, "
                f"train subset {train.train_subset or 'all'}")


STAGE = TrainingStage()
