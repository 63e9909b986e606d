"""`depthscape plot SURFACE_FILE`: draw a computed loss surface (PNG, PDF, VTK, HTML)."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthscape.analysis.landscape import plot_landscape
from depthscape.analysis.landscape.plots import KINDS_1D, KINDS_2D
from depthscape.cli._common import finite_float, float_in, int_in
from depthscape.core.atomic import check_name_lengths, ensure_writable_dir
from depthscape.core.errors import UserError
from depthscape.core.locking import claim_folder

NAME = "plot"
HELP = "draw a loss surface file: contours, heatmap, 3-D surface, 1-D curve, .vtp, HTML"
ORDER = 36

#: Every kind of picture, and the extensions it is written with (images: --formats).
ALL_KINDS = ("contour", "contourf", "heatmap", "surface3d", "vtp", "html", "curve")



def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the pictures, shared by `plot` and `landscape`."""
    group = parser.add_argument_group("plots")
    group.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                       choices=ALL_KINDS,
                       help="which pictures: contour contourf heatmap surface3d vtp html (2-D), "
                            "curve html (1-D); default all")
    group.add_argument("--quantity", choices=("loss", "acc"), default="loss",
                       help="plot the loss (default) or the accuracy")
    group.add_argument("--log", action="store_true", help="log10 scale for the loss")
    group.add_argument("--levels", type=int_in(2, 1000), default=30, help="contour levels (default 30)")
    group.add_argument("--zmin", type=finite_float, default=None, help="clip values below this")
    group.add_argument("--zmax", type=finite_float, default=None,
                       help="clip values above this (e.g. 10, so huge edge losses keep the basin visible)")
    group.add_argument("--smooth", type=float_in(0.0, 1000.0), default=0.0,
                       help="Gaussian smoothing width in grid cells (default 0: as computed)")
    group.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=("png", "pdf", "svg"),
                       help="image formats (default png pdf)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("surface", help="an .h5 surface file written by `depthscape landscape`")
    parser.add_argument("--plots-dir", default=None,
                        help="where the pictures go (default: plots/ beside the run's landscapes/)")
    add_plot_arguments(parser)


def default_plots_dir(surface: Path) -> Path:
    """``<run dir>/plots`` for a surface in ``<run dir>/landscapes``, else ``plots/`` beside it."""
    surface = Path(surface)
    root = surface.parent.parent if surface.parent.name == "landscapes" else surface.parent
    return root / "plots"


def check_plot_names(surface: Path, plots_dir: Path, args: argparse.Namespace) -> None:
    """Refuse (one line) picture names of ``surface`` too long for the plots folder's
    filesystem, before any work (the names as :func:`plot_landscape` makes them)."""
    if not hasattr(args, "quantity"):  # `depthscape trajectory`'s: <stem>_path.<png|pdf>
        for extension in ("png", "pdf"):
            check_name_lengths(Path(plots_dir) / f"{Path(surface).stem}_path.{extension}")
        return
    stem = f"{Path(surface).stem}_{args.quantity}{'_log' if args.log else ''}"
    for kind in args.kinds or ALL_KINDS:
        extensions = [kind] if kind in ("vtp", "html") else list(args.formats)
        for extension in extensions:
            check_name_lengths(Path(plots_dir) / f"{stem}_{kind}.{extension}")


def check_plot_options(args: argparse.Namespace, dims: int | None = None) -> None:
    """Refuse (one line) picture options that cannot work, before any work: --zmin not
    below --zmax, and (where the surface's ``dims`` is known) a kind that does not fit it."""
    if args.zmin is not None and args.zmax is not None and args.zmin >= args.zmax:
        raise UserError(f"--zmin {args.zmin:g} must be below --zmax {args.zmax:g}")
    if dims is not None:
        allowed = KINDS_2D if dims == 2 else KINDS_1D
        for kind in args.kinds or ():
            if kind not in allowed:
                raise UserError(f"plot kind {kind!r} does not fit a {dims}-D surface: "
                                f"choose from {', '.join(allowed)}")


def plot_from_args(surface: Path, args: argparse.Namespace) -> list[Path]:
    """Draw ``surface`` with the picture options in ``args``."""
    plots_dir = Path(args.plots_dir) if args.plots_dir else default_plots_dir(surface)
    with claim_folder(plots_dir, f"plots folder {plots_dir}"):
        return plot_landscape(surface, plots_dir, kinds=args.kinds, log_scale=args.log,
                              quantity=args.quantity, levels=args.levels, zmin=args.zmin,
                              zmax=args.zmax, smooth=args.smooth, formats=tuple(args.formats))


def run(args: argparse.Namespace) -> int:
    plots_dir = Path(args.plots_dir) if args.plots_dir else default_plots_dir(Path(args.surface))
    ensure_writable_dir(plots_dir, create=False)
    check_plot_options(args)
    check_plot_names(Path(args.surface), plots_dir, args)
    written = plot_from_args(Path(args.surface), args)
    for path in written:
        print(path)
    return 0
