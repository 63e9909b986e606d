"""`depthscape eval CHECKPOINT`: loss and accuracy of a saved model on a split."""

from __future__ import annotations

import argparse

from depthscape.cli._common import add_data_arguments, positive_int

NAME = "eval"
HELP = "evaluate a checkpoint: loss and accuracy on the test (or train) split"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pth file written by depthscape (or a bare state dict)")
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


def run(args: argparse.Namespace) -> int:
    from depthscape.core.device import get_device
    from depthscape.core.trained import load_trained_run
    from depthscape.training.evaluation import evaluate

    device = get_device(args.device)
    run = load_trained_run(args.checkpoint, model=args.model, dataset=args.dataset,
                           data_dir=args.data_dir, cache_dir=args.cache_dir, device=device)
    split = getattr(run.dataset, args.split).subset(args.subset)
    loss, acc = evaluate(run.model, split, run.preprocess, args.batch_size, device)
    print(f"{args.split} loss {loss:.4f}  accuracy {acc:.2f}%  error {100 - acc:.2f}%  "
          f"({len(split)} images)")
    return 0
