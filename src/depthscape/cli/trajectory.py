"""`depthscape trajectory RUN_OR_CHECKPOINT`: a run's optimization path on its loss contour."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from depthscape.analysis.trajectory import TrajectoryConfig, subject_trajectory
from depthscape.analysis.trajectory_plots import plot_trajectory
from depthscape.cli._common import (
    add_plugin_arguments,
    float_in,
    int_in,
    model_names,
    positive_int,
)
from depthscape.cli.landscape import (
    add_run_arguments,
    add_surface_data_arguments,
    subject_with_outputs_checked,
)
from depthscape.cli.plot import default_plots_dir
from depthscape.core.errors import UserError
from depthscape.core.runtime import PRECISIONS

NAME = "trajectory"
HELP = "optimization path of a run (PCA of its weight snapshots) drawn on its loss contour"
ORDER = 37


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, f"a checkpoint file, or a model ({model_names()}; e.g. resnet 56) "
                              "whose run lies in --out; the run must have been trained with "
                              "--snapshot-every (none with --model-from)", optional=True)
    add_plugin_arguments(parser, "; its --weights are the path's end")
    parser.add_argument("--snapshots", default=None, metavar="FILE",
                        help="with --model-from: the snapshot file of the path (default: the "
                             "one beside --weights, <checkpoint>.snapshots.h5)")
    grid = parser.add_argument_group("contour grid (over the span of the path)")
    grid.add_argument("--resolution", type=int_in(2, 10_000), default=21, help="points per axis (default 21)")
    grid.add_argument("--margin", type=float_in(0.0, 100.0), default=0.2,
                      help="extend the path's span by this fraction on every side (default 0.2)")
    add_surface_data_arguments(parser)
    speed = parser.add_argument_group("speed (values do not depend on these)")
    speed.add_argument("--batch-size", type=positive_int, default=1000)
    speed.add_argument("--workers", type=positive_int, default=None)
    speed.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    speed.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="arithmetic of the grid points: fp32 (default, exact), bf16 autocast "
                            "(CUDA, or a CPU with native bf16), tf32 (CUDA)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", default=None,
                        help="surface file (default <run>/landscapes/<checkpoint>_trajectory_<split>_<hash>.h5)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an --output file that holds other settings")
    output.add_argument("--no-plots", action="store_true", help="compute only")
    output.add_argument("--plots-dir", default=None, help="where the picture goes (default <run>/plots)")
    output.add_argument("--linear", action="store_true", help="contour the loss, not log10(loss)")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    if args.snapshots and not args.model_from:
        raise UserError("--snapshots goes with --model-from (a run's are beside its checkpoint)")
    subject = subject_with_outputs_checked(args, {"--model": args.model})
    if args.snapshots is None and subject.snapshots is None:
        raise UserError("--model-from needs the path: --snapshots FILE (and --weights, the "
                        "path's end), or --weights of a run trained with --snapshot-every")
    config = TrajectoryConfig(
        resolution=args.resolution, margin=args.margin, split=args.split, subset=args.subset,
        batch_size=args.batch_size, device=args.device, workers=args.workers,
        precision=args.precision)
    surface = subject_trajectory(subject, config, snapshots=args.snapshots, output=args.output,
                                 root=args.out, progress=not args.no_progress,
                                 overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trajectory: {surface}")
    if not args.no_plots:
        plots_dir = Path(args.plots_dir) if args.plots_dir else default_plots_dir(surface)
        for path in plot_trajectory(surface, plots_dir, log_scale=not args.linear):
            print(f"plot: {path}")
    return 0
