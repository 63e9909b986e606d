"""`depthscape flatness`: K random 1-D slices through every trained minimum, with error bars."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthscape.analysis.landscape.flatness import (
    FlatnessConfig,
    flatness_table,
    measure_run_flatness,
)
from depthscape.analysis.tables import write_table
from depthscape.cli._common import add_run_data_arguments, float_in, int_in, positive_int, seed_int
from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.errors import UserError
from depthscape.core.locking import claim_folder

NAME = "flatness"
HELP = ("loss rise at a radius and radius where the loss doubles along K filter-normalised "
        "random 1-D slices per run (mean ± CI over them), and a figure of the slices as a band")
ORDER = 46


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="limit to these models (default: every finished run found)")
    parser.add_argument("--run-dir", default=".",
                        help="training output root holding logs/ and models/ (default .)")
    parser.add_argument("--out", default=None, help="where results go (default <run-dir>/flatness)")
    parser.add_argument("--directions", type=int_in(2, 10**4), default=8,
                        help="random directions K (default 8)")
    parser.add_argument("--radius", type=float_in(0.0, 1e3, lo_open=True), default=0.25,
                        help="step at which the loss rise is read (default 0.25)")
    parser.add_argument("--span", type=float_in(0.0, 1e3, lo_open=True), default=1.0,
                        help="slices run over [-span, span] (default 1)")
    parser.add_argument("--points", type=int_in(2, 10**5), default=21,
                        help="even steps per slice (plus 0 and +-radius; default 21)")
    parser.add_argument("--norm", choices=["filter", "layer"], default="filter")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--subset", type=positive_int, default=1000,
                        help="fixed random subset of the split (default 1000)")
    parser.add_argument("--batch-size", type=positive_int, default=1000)
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the directions")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    add_run_data_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    if args.radius > args.span:
        raise UserError(f"--radius {args.radius:g} lies outside --span {args.span:g}")
    config = FlatnessConfig(directions=args.directions, radius=args.radius, span=args.span,
                            points=args.points, seed=args.seed, norm=args.norm, split=args.split,
                            subset=args.subset, batch_size=args.batch_size, device=args.device)
    out = ensure_writable_dir(Path(args.out) if args.out else Path(args.run_dir) / "flatness",
                              create=False)
    source = {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir}
    with claim_folder(out, f"flatness folder {out}"):
        results = measure_run_flatness(args.run_dir, out, args.models or None, config, source,
                                       progress=not args.no_progress)
        table = flatness_table(results)
        written = write_table(table, out, "flatness")
    print(f"{table.title}\n\n{table.markdown()}")
    print("written: " + ", ".join(str(p) for p in written + [
        out / f"{run.paths.run_name}.flatness.png" for run, _ in results]))
    return 0
