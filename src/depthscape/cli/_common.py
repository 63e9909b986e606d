"""Argument groups several subcommands share."""

from __future__ import annotations

import argparse

from depthscape.core.argtypes import (  # noqa: F401  (re-exported: the CLI's argument types)
    MAX_COUNT,
    MAX_SEED,
    finite_float,
    float_in,
    int_in,
    positive_float,
    positive_int,
    seed_int,
)
from depthscape.core.datasets import DEFAULT_DATASET, dataset_names_text
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name, depth_forms, model_names_text
from depthscape.core.plugins import load_plugin
from depthscape.core.runtime import PRECISIONS, amp_alias, precision_help
from depthscape.core.subject import Subject, subject_from_model, subject_from_run

#: Depth of a ResNet/PlainNet as typed (the 6n+2 form is checked by the model registry).
DEPTH_MAX = 10**6


def model_name(model: str, depth: str | None) -> str:
    """The canonical model name from MODEL [DEPTH] as typed, naming what was typed on error."""
    if depth is not None:
        text = depth.strip()
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"the depth {depth!r} of {model} is not a number "
                            "(e.g. resnet 56)") from None
        if value <= 0 or value > DEPTH_MAX:
            raise UserError(f"the depth of {model} must be a positive number 6n+2 up to "
                            f"{DEPTH_MAX}, got {depth}")
    return canonical_name(model, depth)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir, --cache-dir."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=DEFAULT_DATASET,
                       help=f"{dataset_names_text()} (default {DEFAULT_DATASET})")
    group.add_argument("--data-dir", default=None,
                       help="data already on disk: torchvision's files, or an ImageFolder "
                            "tree or .tar.gz (e.g. ../shared/data/cifar10-jpeg.tar.gz)")
    group.add_argument("--cache-dir", default=None,
                       help="where downloads and decoded caches go "
                            "(default $DEPTHSCAPE_DATA or ~/.cache/depthscape)")


def model_names() -> str:
    """The model names users type, read off the family records (for help texts)."""
    return model_names_text()


def depth_help() -> str:
    """DEPTH's help: each depth rule and the families it applies to, from the records."""
    return "; ".join(f"depth {form} for {'/'.join(names)}" for form, names in depth_forms().items())


def add_model_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """MODEL [DEPTH] positionals: `cnn`, `resnet 56`, `plainnet 110`, `resnet56`
    (``optional``: left out with --model-from)."""
    parser.add_argument("model", help=f"{model_names()}, or e.g. resnet56",
                        **({"nargs": "?", "default": None} if optional else {}))
    parser.add_argument("depth", nargs="?", default=None, help=depth_help())


def add_plugin_arguments(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--model-from, --model-kwargs, --weights: a model from outside the package (every
    command that takes a model: landscape, eval, sharpness, trajectory, train)."""
    plugin = parser.add_argument_group("a model from outside the package (instead of a run)")
    plugin.add_argument("--model-from", default=None, metavar="SPEC",
                        help="torchvision:NAME (random init, nothing downloaded), "
                             "PKG.MODULE:FACTORY or path/to/file.py:FACTORY" + what)
    plugin.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help="keyword arguments of the factory, e.g. '{\"num_classes\": 10}'")
    plugin.add_argument("--weights", default=None, metavar="FILE",
                        help="a state dict (or a checkpoint holding one, e.g. a plug-in run's) "
                             "to load, weights-only; a depthscape run's checkpoint also gives "
                             "the preprocessing and the data it was trained on")


def plugin_from_args(args: argparse.Namespace, not_with: dict | None = None,
                     instead_of: tuple[str, object] | None = None):
    """The :class:`~depthscape.core.plugins.PluginModel` of --model-from (None without it).

    ``not_with`` maps option names (``"--target"``) to their values: options of
    depthscape's own runs that a plug-in model refuses; ``instead_of`` is ``(what, value)``
    of the command's own way to name a model (its run). One line each, before any work."""
    if not args.model_from:
        for flag, value in (("--model-kwargs", args.model_kwargs), ("--weights", args.weights)):
            if value:
                raise UserError(f"{flag} goes with --model-from")
        return None
    if instead_of is not None and instead_of[1]:
        raise UserError(f"give either {instead_of[0]} or --model-from, not both")
    for flag, value in (not_with or {}).items():
        if value:
            raise UserError(f"{flag} works on depthscape runs, not with --model-from")

    return load_plugin(args.model_from, args.model_kwargs, args.weights)


def subject_from_args(args: argparse.Namespace, not_with: dict | None = None,
                      instead_of: tuple[str, object] | None = None, checkpoint=None,
                      device=None) -> Subject | None:
    """The :class:`~depthscape.core.subject.Subject` the options name: the model of
    --model-from (``not_with``/``instead_of``: as :func:`plugin_from_args`), else the run of
    ``checkpoint`` where the command takes one (a path, or a function that finds it: a run
    named by model and depth, looked for only where --model-from is not given), else None
    (the command's runs). Its data is --dataset/--data-dir/--cache-dir, or what the run
    recorded."""
    plugin = plugin_from_args(args, not_with, instead_of)
    data = {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir}
    if plugin is not None:
        return subject_from_model(plugin, **data, device=device)
    if callable(checkpoint):
        checkpoint = checkpoint()
    if checkpoint is not None:
        return subject_from_run(checkpoint, model=getattr(args, "model", None), **data,
                                device=device)
    return None


def add_run_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir, --cache-dir for commands that default to each run's own data."""
    group = parser.add_argument_group("data (default: what each run was trained on)")
    group.add_argument("--dataset", default=None)
    group.add_argument("--data-dir", default=None)
    group.add_argument("--cache-dir", default=None)


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """The training speed switches (train and study): device defaults, a notice where ignored."""
    fast = parser.add_argument_group(
        "fast path (CUDA: all of them; the CPU: --precision fp32|bf16 and --channels-last; "
        "the others are ignored there with a notice)")
    fast.add_argument("--precision", choices=PRECISIONS, default=None,
                      help="arithmetic of the forward pass (default: bf16 on CUDA, fp32 on the "
                           "CPU; bf16 on the CPU needs native bf16, AVX-512 BF16 or AMX). "
                           + precision_help())
    fast.add_argument("--amp", action="store_true",
                      help="deprecated: the older name of --precision bf16")
    fast.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                      help="capture the training step as one CUDA graph (default on CUDA: on)")
    fast.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                      help="NHWC memory layout for weights and inputs (default: on; a resumed "
                           "run keeps the layout it started with)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the model (needs Triton)")


def gpu_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of :func:`add_gpu_arguments`' options (--amp, the deprecated
    name of --precision bf16, resolved here)."""
    return {"precision": amp_alias(args.amp, args.precision), "cuda_graph": args.cuda_graph,
            "channels_last": args.channels_last, "compile": args.compile}


def add_slurm_settings(group, job: str = "job", task: str = "task", node: str = "node") -> list:
    """The Slurm settings ``study --launcher slurm`` and :func:`add_launcher_arguments` share
    (docs/cluster.md; each also from ``$DEPTHSCAPE_SLURM_<NAME>`` or a TOML file's
    ``[slurm]`` table); ``job``, ``task``, ``node``: what the time, CPUs and memory are per.
    Returns the options' actions."""
    return [
        group.add_argument("--slurm-partition", default=None, help="partition to run in"),
        group.add_argument("--slurm-account", default=None, help="account charged"),
        group.add_argument("--slurm-qos", default=None, help="quality of service"),
        group.add_argument("--slurm-time", default=None,
                           help=f"time limit per {job}: minutes or h:mm:ss (default 60)"),
        group.add_argument("--slurm-cpus", type=positive_int, default=None,
                           help=f"CPUs per {task} (default 1; also the {task}'s torch threads)"),
        group.add_argument("--slurm-mem-gb", type=float, default=None,
                           help=f"memory per {node}, GB"),
        group.add_argument("--slurm-arg", action="append", default=None, metavar="KEY=VALUE",
                           help="any other keyword of submitit's update_parameters (repeatable; "
                                "VALUE read as JSON where it parses)"),
        group.add_argument("--slurm-log-dir", default=None,
                           help="job logs (default <out>/slurm/logs)"),
        group.add_argument("--slurm-config", default=None, metavar="TOML",
                           help="a TOML file whose [slurm] table holds these settings"),
        group.add_argument("--slurm-allow-node-local", action="store_true",
                           help="allow an output folder under /tmp or /dev/shm (a one-node "
                                "cluster)"),
    ]


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """--launcher, --no-wait, the job's nodes and tasks and the Slurm settings (train,
    landscape, sharpness): the command as one Slurm job whose tasks run it as torchrun's
    processes would (depthscape.cli._launch, docs/cluster.md)."""
    group = parser.add_argument_group(
        "cluster", "run this command as one Slurm job of --slurm-nodes x "
        "--slurm-tasks-per-node processes, sharded as under torchrun (docs/cluster.md); each "
        "setting also from $DEPTHSCAPE_SLURM_<NAME> or a TOML file's [slurm] table")
    actions = [
        group.add_argument("--launcher", choices=["local", "slurm"], default="local",
                           help="local: this process, or torchrun's (default); slurm: one "
                                "Slurm job through submitit"),
        group.add_argument("--no-wait", action="store_true",
                           help="submit the job and return (see it with squeue)"),
        group.add_argument("--slurm-nodes", type=positive_int, default=None,
                           help="nodes of the job (default 1)"),
        group.add_argument("--slurm-gpus-per-node", dest="slurm_gpus", type=int_in(0, 4096),
                           default=None, help="GPUs per node (default 0)"),
        group.add_argument("--slurm-tasks-per-node", type=positive_int, default=None,
                           help="processes per node (default: one per GPU, at least one; "
                                "on the CPU, gloo ranks)"),
        *add_slurm_settings(group),
    ]
    parser.set_defaults(_launcher=tuple(actions))
