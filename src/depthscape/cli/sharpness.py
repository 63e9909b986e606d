"""`depthscape sharpness`: largest and smallest Hessian eigenvalue and trace at every trained minimum."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from depthscape.analysis.measures import all_measures
from depthscape.analysis.sharpness import (
    DensityConfig,
    SharpnessConfig,
    active_measures,
    check_sharpness_fits,
    measure_files,
    measure_run_densities,
    measure_runs,
    sharpness_table,
    stage_density_paths,
    subject_density,
    subject_sharpness,
)
from depthscape.analysis.tables import write_table
from depthscape.cli._common import (
    add_launcher_arguments,
    add_plugin_arguments,
    add_run_data_arguments,
    float_in,
    int_in,
    positive_int,
    seed_int,
    subject_from_args,
)
from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.device import get_device
from depthscape.core.distributed import is_main_process, setup
from depthscape.core.locking import claim_folder
from depthscape.core.plugins import registered
from depthscape.core.runtime import PRECISIONS

NAME = "sharpness"
HELP = ("measure the Hessian's largest and smallest eigenvalue (Lanczos) and trace "
        "(Hutchinson) per run, optionally its top-k, its eigenvalue density, error bars and "
        "per-block (layer or stage) traces and eigenvalues")
ORDER = 45


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="limit to these models (default: every finished run found)")
    parser.add_argument("--run-dir", default=".",
                        help="training output root holding logs/ and models/ (default .)")
    parser.add_argument("--out", default=None,
                        help="where results go (default <run-dir>/sharpness)")
    parser.add_argument("--split", choices=["train", "test"], default="train",
                        help="data the loss is measured on (default: the run's training split)")
    parser.add_argument("--subset", type=positive_int, default=1000,
                        help="fixed random subset of that split (default 1000)")
    parser.add_argument("--batch-size", type=positive_int, default=500,
                        help="images per Hessian-vector product chunk (default 500)")
    for measure in all_measures():  # each measure's own options
        measure.add_arguments(parser)
    parser.add_argument("--draws", type=int_in(1, 10**4), default=1,
                        help="independent draws (disjoint data subsets, own Lanczos and probe "
                             "starts): mean ± 95%% Student-t interval (default 1)")
    spectrum = parser.add_argument_group("eigenvalue density (stochastic Lanczos quadrature)")
    spectrum.add_argument("--density", action="store_true",
                          help="also estimate the eigenvalue density: <run>.density.json/.csv/"
                               ".png and density.png (all runs, log density axis); with "
                               "--model-from, <name>.density.json/.csv/.png")
    spectrum.add_argument("--density-runs", type=int_in(1, 10**4), default=3,
                          help="Lanczos runs from random starts (default 3)")
    spectrum.add_argument("--density-steps", type=int_in(1, 10**5), default=80,
                          help="Lanczos steps per run (default 80; cost: runs x steps "
                               "Hessian-vector products)")
    # below 1e-3 each Gaussian is narrower than a step of the default 1000-point grid, so
    # the grid misses its peaks (1e-300 integrated to 1.9e295)
    spectrum.add_argument("--density-width", type=float_in(1e-3, 1.0), default=None,
                          help="Gaussian broadening as a fraction of the Ritz values' span, "
                               "0.001 to 1 (default: set from the bulk of the nodes, "
                               "docs/spectrum.md)")
    spectrum.add_argument("--density-points", type=int_in(2, 10**6), default=1000,
                          help="eigenvalue grid points (default 1000)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the subset and probes")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    add_run_data_arguments(parser)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="arithmetic of the forward passes: fp32 (default), bf16 autocast "
                             "(CUDA, or a CPU with native bf16), tf32 (CUDA)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_plugin_arguments(parser, "; measured on --dataset/--data-dir with pixels scaled to "
                                 "[0, 1] (or as the run of --weights was trained); the table "
                                 "goes to <out>/sharpness_<name>.md and .csv")
    add_launcher_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = SharpnessConfig(split=args.split, subset=args.subset, batch_size=args.batch_size,
                             seed=args.seed, device=args.device, precision=args.precision,
                             draws=args.draws,
                             **{k: v for m in all_measures() for k, v in
                                m.config_values(args).items()})
    for measure in active_measures(config):
        measure.check_options(config)
    density = DensityConfig(runs=args.density_runs, steps=args.density_steps,
                            width=args.density_width, points=args.density_points)
    subject = subject_from_args(args, instead_of=("run models (MODEL ...)", args.models))
    out = ensure_writable_dir(Path(args.out) if args.out else Path(args.run_dir) / "sharpness",
                              create=False)
    if subject is not None:  # the settings against the model, before its data loads
        check_sharpness_fits(config, subject.model, get_device(args.device))
    # under torchrun every rank runs this command: the Hessian-vector products are split
    # over the ranks, rank 0 holds the folder's lock, writes and prints
    dist = setup(args.device)
    try:
        with claim_folder(out, f"sharpness folder {out}", owner=dist.is_main,
                          agree=dist.all_true):
            table, written = (_measure_runs(args, config, density, out) if subject is None
                              else _measure_subject(args, subject, config, density, out))
    finally:
        dist.close()
    if dist.is_main:
        print(f"{table.title}\n\n{table.markdown()}")
        print("written: " + ", ".join(str(p) for p in written))
    return 0


def _measure_runs(args: argparse.Namespace, config, density, out) -> tuple:
    """Every finished run under --run-dir: the table and the files written."""
    source = {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir}
    results = measure_runs(args.run_dir, out, args.models or None, config, data_source=source,
                           progress=not args.no_progress)
    table = sharpness_table(results)
    written = list(write_table(table, out, "sharpness")) if is_main_process() else []
    written += _beside(config, [(out / run.paths.run_name, r) for run, r in results])
    if args.density:
        densities = measure_run_densities(args.run_dir, out, args.models or None, config,
                                          density, data_source=source,
                                          progress=not args.no_progress)
        written += [out / f"{run.paths.run_name}.density.{suffix}"
                    for run, _ in densities for suffix in ("json", "csv")]
        written += _stage_densities(config, [out / f"{run.paths.run_name}.density.json"
                                             for run, _ in densities])
        if any(d.density for _, d in densities):
            written.append(out / "density.png")
    return table, written


def _measure_subject(args: argparse.Namespace, subject, config, density, out) -> tuple:
    """``--model-from``: one model from outside the package, measured as a run's
    (:func:`~depthscape.analysis.sharpness.subject_sharpness`; with ``--density`` its
    density as ``<out>/<name>.density.json/.csv/.png``): the table and the files written."""
    result = subject_sharpness(subject, config)
    with registered(subject.name, lambda: subject.model, label=subject.label):  # its name
        table = sharpness_table([(SimpleNamespace(model=subject.name, seed=0), result)])
    written = (list(write_table(table, out, f"sharpness_{subject.name}"))
               if is_main_process() else [])
    written += _beside(config, [(out / subject.name, result)])
    if args.density:
        spectrum = subject_density(subject, config, density, out / f"{subject.name}.density.json")
        written += [out / f"{subject.name}.density.{suffix}" for suffix in
                    ("json", "csv") + (("png",) if spectrum.density else ())]
        written += _stage_densities(config, [out / f"{subject.name}.density.json"])
    return table, written


def _beside(config, results) -> list:
    """Each measure's own files beside each ``(stem, result)`` (the per-block rows of
    ``--blocks``: ``<stem>.blocks.json/.csv``), written by rank 0: the paths."""
    if not is_main_process():
        return []
    return [path for stem, result in results for path in measure_files(config, result, stem)]


def _stage_densities(config, outputs) -> list:
    """The stages' density files written beside each density (``--blocks``)."""
    return [path for output in outputs for path in stage_density_paths(output)
            if config.blocks and path.exists()]
