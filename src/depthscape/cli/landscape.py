"""`depthscape landscape RUN_OR_CHECKPOINT`: compute a loss surface, then draw it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from depthscape.analysis.landscape import LandscapeConfig
from depthscape.analysis.landscape.curvature import (
    CurvatureConfig,
    plot_curvature,
    subject_curvature,
)
from depthscape.analysis.landscape.surface import subject_surface
from depthscape.cli._common import (
    add_launcher_arguments,
    add_plugin_arguments,
    finite_float,
    int_in,
    model_name,
    model_names,
    positive_int,
    seed_int,
    subject_from_args,
)
from depthscape.cli.plot import (
    add_plot_arguments,
    check_plot_names,
    check_plot_options,
    default_plots_dir,
    plot_from_args,
)
from depthscape.core.atomic import check_name_lengths, ensure_writable_dir
from depthscape.core.datasets import dataset_names_text, dataset_tag
from depthscape.core.errors import UserError
from depthscape.core.runs import run_paths
from depthscape.core.runtime import PRECISIONS
from depthscape.core.subject import Subject

NAME = "landscape"
HELP = "loss landscape of a trained run: filter-normalised directions, 2-D grid or 1-D curve"
ORDER = 35


def add_run_arguments(parser: argparse.ArgumentParser, run_help: str,
                      optional: bool = False) -> None:
    """Which trained run: a checkpoint, or a model whose run lies in --out (landscape, trajectory).
    ``optional``: the run may be left out (``landscape --model-from``)."""
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT", help=run_help,
                        **({"nargs": "?", "default": None} if optional else {}))
    parser.add_argument("depth", nargs="?", default=None, help="depth, with a model family name")
    parser.add_argument("--out", default=".", help="output root of the runs (default .)")
    parser.add_argument("--run-seed", type=seed_int, default=0, help="seed of the run to load (default 0)")
    parser.add_argument("--model", default=None,
                        help="architecture of a bare state dict (e.g. resnet56); checked against "
                             "a depthscape checkpoint's own")


def add_surface_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The images a surface is measured on (default: what the run was trained on)."""
    data = parser.add_argument_group("data (default: what the run was trained on)")
    data.add_argument("--split", choices=("test", "train"), default="test")
    data.add_argument("--subset", type=positive_int, default=None,
                      help="a fixed random subset of this many samples of the split")
    data.add_argument("--dataset", default=None, help=dataset_names_text())
    data.add_argument("--data-dir", default=None, help="data already on disk (torchvision files or ImageFolder)")
    data.add_argument("--cache-dir", default=None, help="where decoded data is cached")


def subject_with_outputs_checked(args: argparse.Namespace, not_with: dict) -> Subject:
    """The run or the model of the options (``not_with``: the options a model of the user's
    refuses), after checking every output location (--output's folder, the plots folder)
    under its home (a run's directory; a model's: --out), so a bad path never costs a
    computation (landscape, trajectory)."""
    subject = subject_from_args(
        args, not_with, instead_of=("a run (checkpoint, or model and depth)", args.run),
        checkpoint=lambda: args.run and resolve_checkpoint(args.run, args.depth, args.out,
                                                           args.run_seed, args.dataset))
    if subject is None:
        raise UserError("give a run (a checkpoint, or a model and depth) or --model-from")
    home = subject.home if subject.home is not None else Path(args.out)
    ensure_writable_dir(Path(args.output).parent if args.output else home / "landscapes",
                        create=False)
    if args.output:  # a name the filesystem cannot hold fails now, not after the grid
        check_name_lengths(Path(args.output))
    if not args.no_plots:
        plots_dir = (Path(args.plots_dir) if args.plots_dir else
                     default_plots_dir(Path(args.output)) if args.output else home / "plots")
        ensure_writable_dir(plots_dir, create=False)
        if args.output:
            check_plot_names(Path(args.output), plots_dir, args)
    return subject


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, f"a checkpoint file, or a model ({model_names()}; e.g. resnet 56) "
                              "whose run lies in --out (or none, with --model-from)", optional=True)
    add_plugin_arguments(parser, "; measured on --dataset/--data-dir with pixels scaled to "
                                 "[0, 1] (or as the run of --weights was trained)")
    grid = parser.add_argument_group("grid and directions")
    grid.add_argument("--resolution", type=int_in(2, 10**6), default=21,
                      help="points per axis (default 21; the original tool's figures use 51)")
    grid.add_argument("--xrange", nargs=2, type=finite_float, default=(-1.0, 1.0), metavar=("MIN", "MAX"))
    grid.add_argument("--yrange", nargs=2, type=finite_float, default=None, metavar=("MIN", "MAX"),
                      help="range along the second direction (2-D only; default -1 1)")
    grid.add_argument("--dims", type=int, choices=(1, 2), default=None,
                      help="2: surface over two directions (default); 1: curve along one")
    grid.add_argument("--target", default=None, metavar="CHECKPOINT",
                      help="1-D line from the run's weights (x=0) to this checkpoint's (x=1)")
    grid.add_argument("--seed", type=seed_int, default=0, help="seed of the random directions (default 0)")
    grid.add_argument("--norm", choices=("filter", "layer"), default="filter",
                      help="direction normalisation (default filter)")
    add_surface_data_arguments(parser)
    speed = parser.add_argument_group("speed (values do not depend on these but in the "
                                      "last digits, on the batch size)")
    speed.add_argument("--batch-size", type=positive_int, default=1000,
                       help="images per forward pass on a GPU (default 1000; the CPU caps it at "
                            "128); changes the last digits, so it is recorded with the surface")
    speed.add_argument("--workers", type=int_in(1, 4096), default=None,
                       help="grid points evaluated at once, one thread each (default: one per "
                            "CPU thread on the CPU, 1 on a GPU)")
    speed.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the folded network")
    speed.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32 (default, exact; TF32 off on CUDA), tf32 (CUDA), or bf16 "
                            "autocast with channels-last (CUDA, or a CPU with native bf16; "
                            "faster, recorded in the surface file)")
    curvature = parser.add_argument_group(
        "curvature map (Hessian eigenvalue extremes on a coarse grid, stored in the same file)")
    curvature.add_argument("--curvature", action="store_true",
                           help="also compute |lambda_min/lambda_max| at each point of a coarse grid")
    curvature.add_argument("--curvature-resolution", type=int_in(2, 1000), default=11,
                           help="points per axis of the curvature grid (default 11)")
    curvature.add_argument("--curvature-subset", type=positive_int, default=256,
                           help="images the Hessian is measured on (default 256)")
    curvature.add_argument("--curvature-iters", type=int_in(2, 10_000), default=20,
                           help="most Lanczos steps (Hessian-vector products) per point (default 20)")
    curvature.add_argument("--curvature-split", choices=("test", "train"), default=None,
                           help="split of those images (default: the surface's --split)")
    curvature.add_argument("--curvature-parallel", choices=("points", "batch"), default="points",
                           help="under torchrun: deal the grid points out to the ranks (points, "
                                "default: one process's values, bit for bit), or compute each "
                                "point on every rank, its Hessian-vector products split over the "
                                "ranks' shares of the images and all-reduced (batch: for a "
                                "--curvature-subset too large for one process; agrees to "
                                "rounding, the rank count recorded)")
    output = parser.add_argument_group("output")
    output.add_argument("--output", default=None,
                        help="surface file (default <run>/landscapes/<checkpoint>_<split>_<kind>_<hash>.h5)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an --output file that holds other settings")
    output.add_argument("--no-plots", action="store_true", help="compute only")
    output.add_argument("--plots-dir", default=None, help="where the pictures go (default <run>/plots)")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_plot_arguments(parser)
    add_launcher_arguments(parser)


def resolve_checkpoint(run: str, depth: str | None, out: str, run_seed: int, dataset: str | None) -> Path:
    """A checkpoint file as given, or the final checkpoint of the named run under ``out``."""
    given = Path(run).expanduser()
    if depth is None and given.is_file():
        return given
    if depth is None and (given.suffix in (".pth", ".pt") or "/" in run):
        raise UserError(f"checkpoint not found: {given}")
    name = model_name(run, depth)
    path = run_paths(out, name, run_seed, dataset_tag(dataset)).final
    if not path.is_file():
        raise UserError(f"no trained {name} in {out}: {path} does not exist (train it first, or "
                        "give the checkpoint file)")
    return path


def grid_dims(args: argparse.Namespace) -> int:
    """The surface's dimensions from --dims/--target/--yrange; options that would be
    silently ignored are refused (one line) instead."""
    if args.target and args.dims == 2:
        raise UserError("--target draws a 1-D line to that checkpoint: drop --dims 2")
    dims = 1 if args.target else (args.dims or 2)
    if dims == 1 and args.yrange is not None:
        raise UserError("--yrange applies to a 2-D surface only: drop it, or drop "
                        + ("--target" if args.target else "--dims 1"))
    return dims


def curvature_config(args: argparse.Namespace, dims: int) -> CurvatureConfig | None:
    """--curvature's settings (None without it), checked before any work."""
    if not args.curvature:
        return None
    if dims != 2:
        raise UserError("--curvature needs a 2-D surface (not --dims 1 or --target)")
    return CurvatureConfig(
        resolution=args.curvature_resolution, subset=args.curvature_subset,
        iterations=args.curvature_iters, split=args.curvature_split,
        device=args.device, workers=args.workers, parallel=args.curvature_parallel).validate()


def run(args: argparse.Namespace) -> int:
    dims = grid_dims(args)
    if not args.no_plots:
        check_plot_options(args, dims)
    subject = subject_with_outputs_checked(args, {"--target": args.target,
                                                  "--curvature": args.curvature,
                                                  "--model": args.model})
    config = LandscapeConfig(
        resolution=args.resolution, xrange=tuple(args.xrange),
        yrange=tuple(args.yrange) if args.yrange is not None else (-1.0, 1.0),
        split=args.split, subset=args.subset, seed=args.seed, norm=args.norm,
        batch_size=args.batch_size, device=args.device, workers=args.workers,
        dims=dims, compile=args.compile, target=args.target, precision=args.precision)
    curvature = curvature_config(args, config.dims)
    surface = subject_surface(subject, config, args.output, root=args.out,
                              progress=not args.no_progress, overwrite=args.overwrite)
    if curvature is not None:
        subject_curvature(surface, subject, curvature, progress=not args.no_progress,
                          overwrite=args.overwrite)
    return _report(surface, curvature, args)


def _report(surface: Path, curvature, args: argparse.Namespace) -> int:
    """Print the surface file and draw its pictures (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"surface: {surface}")
    if not args.no_plots:
        if args.plots_dir is None:
            args.plots_dir = str(default_plots_dir(surface))
        for path in plot_from_args(surface, args):
            print(f"plot: {path}")
        if curvature is not None:
            for path in plot_curvature(surface, args.plots_dir, formats=tuple(args.formats)):
                print(f"plot: {path}")
    return 0
