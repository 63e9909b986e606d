"""`depthscape eval CHECKPOINT`: loss and accuracy of a saved model on a split."""

from __future__ import annotations

import argparse

from depthscape.cli._common import (
    add_data_arguments,
    add_plugin_arguments,
    plugin_from_args,
    positive_int,
)
from depthscape.core.device import get_device
from depthscape.core.errors import UserError
from depthscape.core.plugins import check_model_reads
from depthscape.core.trained import load_trained_run
from depthscape.training.evaluation import evaluate

NAME = "eval"
HELP = "evaluate a checkpoint: loss and accuracy on the test (or train) split"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="a .pth file written by depthscape (or a bare state dict); none "
                             "with --model-from")
    parser.add_argument("--model", default=None,
                        help="architecture, needed for a bare state dict (e.g. resnet56); "
                             "checked against a depthscape checkpoint's own")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--subset", type=positive_int, default=None,
                        help="evaluate on a fixed random subset of this many images")
    parser.add_argument("--batch-size", type=positive_int, default=1000)
    parser.add_argument("--device", default=None)
    add_data_arguments(parser)
    parser.set_defaults(dataset=None)
    add_plugin_arguments(parser, "; evaluated on --dataset/--data-dir with pixels scaled to "
                                 "[0, 1] (or as the run of --weights was trained)")


def run(args: argparse.Namespace) -> int:
    plugin = plugin_from_args(args, {"--model": args.model},
                              instead_of=("a checkpoint (give it as --weights)", args.checkpoint))
    device = get_device(args.device)
    if plugin is not None:
        dataset = plugin.dataset(args.dataset, args.data_dir, args.cache_dir)
        split = getattr(dataset, args.split).subset(args.subset)
        model, preprocess = plugin.model, plugin.preprocess
        check_model_reads(model, split, preprocess, dataset.num_classes)
        model.to(device)
    elif args.checkpoint is None:
        raise UserError("give a checkpoint, or --model-from SPEC (with --weights FILE)")
    else:
        run = load_trained_run(args.checkpoint, model=args.model, dataset=args.dataset,
                               data_dir=args.data_dir, cache_dir=args.cache_dir, device=device)
        split = getattr(run.dataset, args.split).subset(args.subset)
        model, preprocess = run.model, run.preprocess
    loss, acc = evaluate(model, split, preprocess, args.batch_size, device)
    print(f"{args.split} loss {loss:.4f}  accuracy {acc:.2f}%  error {100 - acc:.2f}%  "
          f"({len(split)} images)")
    return 0
