"""`depthscape train MODEL [DEPTH]`: train one model with the spec's recipe."""

from __future__ import annotations

import argparse

from depthscape.cli._common import (
    add_data_arguments,
    add_gpu_arguments,
    add_launcher_arguments,
    add_model_arguments,
    add_plugin_arguments,
    float_in,
    gpu_settings,
    model_name,
    model_names,
    plugin_from_args,
    positive_int,
    seed_int,
)
from depthscape.core.distributed import is_main_process
from depthscape.core.errors import UserError
from depthscape.core.recipe_file import read_model_recipe
from depthscape.training.loop import TrainConfig, train
from depthscape.training.plugin import plugin_recipe, train_plugin

NAME = "train"
HELP = ("train one of depthscape's models with the spec's recipe, or any model "
        "(--model-from) with a recipe file")
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = f"{HELP}; models: {model_names()}"
    add_model_arguments(parser, optional=True)
    add_plugin_arguments(parser, "; trained with --recipe FILE.toml")
    parser.add_argument("--recipe", default=None, metavar="FILE.toml",
                        help="the training recipe as a TOML file (optimizer, lr and schedule, "
                             "epochs or iterations, batch, weight decay, preprocessing, "
                             "augmentation; docs/api.md); needed with --model-from, else it "
                             "replaces the model's own")
    add_data_arguments(parser)
    parser.add_argument("--out", default=".", help="output root holding logs/ and models/ (default .)")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    sched = parser.add_argument_group("schedule (the spec's full recipe is the default)")
    sched.add_argument("--scale", type=float_in(0.0, 1000.0, lo_open=True), default=1.0,
                       help="multiply total iterations/epochs, warm-up and decay points by this")
    sched.add_argument("--train-subset", type=positive_int, default=None,
                       help="train on a fixed random subset of this many images")
    sched.add_argument("--test-subset", type=positive_int, default=None,
                       help="evaluate on a fixed random subset of this many test images")
    sched.add_argument("--eval-every", type=positive_int, default=None,
                       help="iterations between test evaluations (default: once per epoch)")
    sched.add_argument("--log-every", type=positive_int, default=None,
                       help="iterations between CSV rows for iteration recipes (default 100)")
    sched.add_argument("--checkpoint-every", type=positive_int, default=1000,
                       help="iterations between resumable checkpoints (default 1000)")
    sched.add_argument("--snapshot-every", type=positive_int, default=None, metavar="N",
                       help="keep the weights every N iterations (epochs for the CNN) in "
                            "models/<checkpoint>.snapshots.h5, for `depthscape trajectory`")
    sched.add_argument("--stop-after", type=positive_int, default=None,
                       help="stop resumably after this many iterations")
    sched.add_argument("--no-layer-stats", action="store_true",
                       help="do not record gradient flow (per-layer gradient and weight norms "
                            "and update ratios at the log's cadence in logs/<run>_layers.csv; "
                            "a resumed run keeps what it started with)")
    run = parser.add_argument_group("run control")
    either = run.add_mutually_exclusive_group()  # continue the old run, or replace it: not both
    either.add_argument("--resume", action="store_true", help="continue an interrupted run")
    either.add_argument("--overwrite", action="store_true", help="start over, replacing an earlier run")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_gpu_arguments(parser)
    add_launcher_arguments(parser)


def config_from_args(args: argparse.Namespace, model: str | None = None, recipe=None):
    """A TrainConfig from parsed arguments (the one place a Namespace becomes typed settings).
    ``model``: the run's name (default: MODEL [DEPTH]); ``recipe``: replaces the model's own."""
    return TrainConfig(
        model=model or model_name(args.model, args.depth), recipe=recipe,
        dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
        out_dir=args.out, seed=args.seed, device=args.device, scale=args.scale,
        train_subset=args.train_subset, test_subset=args.test_subset,
        eval_every=args.eval_every, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite,
        stop_after=args.stop_after, progress=not args.no_progress,
        **gpu_settings(args),
        snapshot_every=args.snapshot_every, layer_stats=not args.no_layer_stats,
    )


def run(args: argparse.Namespace) -> int:
    plugin = plugin_from_args(args, instead_of=("a model (MODEL [DEPTH])", args.model))
    if plugin is None:
        if args.model is None:
            raise UserError(f"give a model ({model_names()}) or --model-from SPEC --recipe FILE")
        name = model_name(args.model, args.depth)
        recipe = read_model_recipe(args.recipe, name) if args.recipe else None

        result = train(config_from_args(args, name, recipe))  # checks memory before any work
    else:
        if not args.recipe:
            raise UserError("--model-from needs --recipe FILE.toml: a model from outside the "
                            "package has no recipe of its own (see docs/api.md)")

        recipe, name = plugin_recipe(args.model_from, args.recipe)
        result = train_plugin(plugin, recipe, config_from_args(args, name, recipe))
    if not is_main_process():  # under torchrun rank 0 speaks for every rank
        return 0
    if not result.finished:
        print(f"stopped at iteration {result.iteration}; continue with --resume")
        return 0
    print(f"{result.paths.run_name}: train acc {result.train_acc:.2f}%, test acc "
          f"{result.test_acc:.2f}%, test loss {result.test_loss:.4f}; weights in {result.paths.final}")
    return 0
