"""`depthscape eval CHECKPOINT`: loss and accuracy of a saved model on a split."""

from __future__ import annotations

import argparse

from depthscape.cli._common import (
    add_data_arguments,
    add_plugin_arguments,
    positive_int,
    subject_from_args,
)
from depthscape.core.device import get_device
from depthscape.core.errors import UserError
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
    device = get_device(args.device)
    if args.checkpoint is None and not args.model_from:
        raise UserError("give a checkpoint, or --model-from SPEC (with --weights FILE)")
    subject = subject_from_args(args, {"--model": args.model},
                                ("a checkpoint (give it as --weights)", args.checkpoint),
                                checkpoint=args.checkpoint, device=device)
    split = (subject.dataset.train if args.split == "train" else subject.dataset.test
             ).subset(args.subset)
    subject.check_reads(split)
    loss, acc = evaluate(subject.model, split, subject.preprocess, args.batch_size, device)
    print(f"{args.split} loss {loss:.4f}  accuracy {acc:.2f}%  error {100 - acc:.2f}%  "
          f"({len(split)} images)")
    return 0
