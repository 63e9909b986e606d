"""`depthscape curves [RUN...]`: training curves from the CSV logs (spec 7.1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from depthscape.analysis.curves import (
    load_curve,
    plot_comparison,
    plot_run,
    resolve_runs,
    standard_figures,
)
from depthscape.analysis.layer_curves import layer_file_for, load_layer_flow, plot_layer_flows
from depthscape.cli._common import float_in, seed_int
from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.errors import UserError
from depthscape.core.locking import claim_folder
from depthscape.core.models import present_pairs
from depthscape.core.runs import find_runs

NAME = "curves"
HELP = "plot training vs validation accuracy, loss and error from the training logs"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="*", metavar="RUN",
        help="model names (cnn, resnet56, 'plainnet 110') or CSV log paths; none or 'all': "
             "the spec's figures for every log found")
    parser.add_argument("--run-dir", default=".",
                        help="training output root holding logs/ (default .)")
    parser.add_argument("--out", default=None, help="where plots go (default <run-dir>/plots)")
    parser.add_argument("--ema", type=float_in(0.0, 1.0, hi_open=True), default=0.6,
                        help="EMA smoothing factor in [0, 1); 0 draws the raw values (default 0.6)")
    parser.add_argument("--seed", type=seed_int, default=0, help="which seed's logs (default 0)")
    parser.add_argument("--dataset", default=None,
                        help="dataset of the runs (default cifar10, else the one found)")
    parser.add_argument("--format", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                        help="file formats (default png pdf)")
    parser.add_argument("--compare", action="store_true",
                        help="with several RUNs, also draw them together on one figure")
    parser.add_argument("--layers", action="store_true",
                        help="gradient flow instead, from the runs' layer files: a heatmap of "
                             "log10 gradient norm (layer x iteration) per run and the gradient "
                             "norm against depth at the first row, before each decay and at "
                             "the end, the RUNs on one figure (none: each ResNet-D with its "
                             "PlainNet-D)")


def run(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(Path(args.out) if args.out else Path(args.run_dir) / "plots",
                              create=False)
    if args.layers:
        return _layers(args, out)
    if not args.runs or [r.lower() for r in args.runs] == ["all"]:
        if not find_runs(args.run_dir):  # before the plots folder is made
            raise UserError(f"no training logs found in {Path(args.run_dir) / 'logs'}")
        with claim_folder(out, f"plots folder {out}"):
            figures = standard_figures(args.run_dir, out, seed=args.seed, dataset=args.dataset,
                                       ema_factor=args.ema, formats=args.format)
        if not figures:
            raise UserError(f"no training logs found in {Path(args.run_dir) / 'logs'}")
        for figure in figures:
            print(f"{figure.title}: {figure.paths[0]}")
        return 0
    curves = [load_curve(path) for path in resolve_runs(args.runs, args.run_dir, args.seed,
                                                        args.dataset)]
    with claim_folder(out, f"plots folder {out}"):
        for curve in curves:
            print(f"{curve.label}: {plot_run(curve, out, args.ema, args.format)[0]}")
        if args.compare and len(curves) > 1:
            stem = out / ("_vs_".join(c.run_name for c in curves) + "_curves")
            title = " vs ".join(c.label for c in curves)
            print(f"{title}: {plot_comparison(curves, stem, title, args.ema, args.format)[0]}")
    return 0


def _layers(args: argparse.Namespace, out: Path) -> int:
    """``--layers``: the gradient-flow figure of the RUNs together, or of every pairing at
    each depth (ResNet-D with PlainNet-D) whose runs have layer files."""
    if args.runs and [r.lower() for r in args.runs] != ["all"]:
        groups = [resolve_runs(args.runs, args.run_dir, args.seed, args.dataset)]
    else:
        found = {run.model: run.paths.log for run in find_runs(args.run_dir)
                 if run.seed == args.seed and layer_file_for(run.paths.log).is_file()}
        groups = [[found[name] for name in pair.names] for pair in present_pairs(found)]
        if not groups:
            raise UserError(f"no ResNet/PlainNet pair with layer files in "
                            f"{Path(args.run_dir) / 'logs'}: name the RUNs")
    figures = [[load_layer_flow(log) for log in group] for group in groups]  # all read first
    with claim_folder(out, f"plots folder {out}"):
        for flows in figures:
            stem = out / ("_vs_".join(f.run_name for f in flows) + "_layers")
            written = plot_layer_flows(flows, stem, args.format)
            print(f"gradient flow of {' vs '.join(f.label for f in flows)}: {written[0]}")
    return 0
