"""Argument groups several subcommands share."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir, --cache-dir."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="cifar10",
                       help="cifar10 (default), mnist, fashion-mnist, or a path to an "
                            "ImageFolder directory/archive with train/ and test/")
    group.add_argument("--data-dir", default=None,
                       help="data already on disk: torchvision's files, or an ImageFolder "
                            "tree or .tar.gz (e.g. ../shared/data/cifar10-jpeg.tar.gz)")
    group.add_argument("--cache-dir", default=None,
                       help="where downloads and decoded caches go "
                            "(default $DEPTHSCAPE_DATA or ~/.cache/depthscape)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL [DEPTH] positionals: `cnn`, `resnet 56`, `plainnet 110`, `resnet56`."""
    parser.add_argument("model", help="cnn, resnet, plainnet (with DEPTH), or e.g. resnet56")
    parser.add_argument("depth", nargs="?", default=None, help="depth 6n+2 for resnet/plainnet")


def add_run_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir, --cache-dir for commands that default to each run's own data."""
    group = parser.add_argument_group("data (default: what each run was trained on)")
    group.add_argument("--dataset", default=None)
    group.add_argument("--data-dir", default=None)
    group.add_argument("--cache-dir", default=None)


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """The training GPU switches (train and study): CUDA defaults, ignored with a notice elsewhere."""
    fast = parser.add_argument_group(
        "GPU fast path (CUDA only; ignored with a notice on CPU/MPS, where results never change)")
    fast.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None,
                      help="arithmetic of the forward pass (default on CUDA: bf16 autocast)")
    fast.add_argument("--amp", action="store_true", help="the same as --precision bf16")
    fast.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                      help="capture the training step as one CUDA graph (default on CUDA: on)")
    fast.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                      help="NHWC memory layout for weights and inputs (default on CUDA: on)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the model (needs Triton)")


def gpu_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of :func:`add_gpu_arguments`' options (checked: --amp is bf16)."""
    from depthscape.core.errors import UserError

    if args.amp and args.precision not in (None, "bf16"):
        raise UserError(f"--amp means --precision bf16, not {args.precision}: pass one of them")
    return {"amp": args.amp, "precision": args.precision, "cuda_graph": args.cuda_graph,
            "channels_last": args.channels_last, "compile": args.compile}
