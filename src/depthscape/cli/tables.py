"""`depthscape tables`: the spec's Tables 1 and 2 from the finished runs' checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthscape.analysis.tables import make_tables, table1, table2
from depthscape.cli._common import add_run_data_arguments, positive_int
from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.locking import claim_folder

NAME = "tables"
HELP = "evaluate the finished runs and write Table 1 (train/test metrics) and Table 2 (by depth)"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="limit to these models (default: every finished run found)")
    parser.add_argument("--run-dir", default=".",
                        help="training output root holding logs/ and models/ (default .)")
    parser.add_argument("--out", default=None, help="where the tables go (default <run-dir>/tables)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=positive_int, default=1000)
    parser.add_argument("--train-limit", type=positive_int, default=None,
                        help="evaluate a fixed subset of this many training images "
                             "(default: the whole split the run trained on)")
    parser.add_argument("--test-limit", type=positive_int, default=None,
                        help="evaluate a fixed subset of this many test images (default: all)")
    add_run_data_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out or Path(args.run_dir) / "tables", create=False)
    source = {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir}
    with claim_folder(out, f"tables folder {out}", subfolders=("metrics",)):
        metrics, written = make_tables(
            args.run_dir, out, models=args.models or None, device=args.device,
            batch_size=args.batch_size, train_limit=args.train_limit, test_limit=args.test_limit,
            data_source=source, progress=not args.no_progress)
    for table in (table1(metrics), table2(metrics)):
        print(f"{table.title}\n\n{table.markdown()}")
    print("written: " + ", ".join(str(p) for p in written))
    return 0
