"""`depthscape sharpness`: largest and smallest Hessian eigenvalue and trace at every trained minimum."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from depthscape.analysis.measures import all_measures
from depthscape.analysis.sharpness import (
    DensityConfig,
    SharpnessConfig,
    active_measures,
    check_sharpness_fits,
    combine_draws,
    draw_subsets,
    measure_run_densities,
    measure_runs,
    model_sharpness,
    sharpness_table,
)
from depthscape.analysis.spectrum import run_seed
from depthscape.analysis.tables import write_table
from depthscape.cli._common import (
    add_launcher_arguments,
    add_plugin_arguments,
    add_run_data_arguments,
    float_in,
    int_in,
    plugin_from_args,
    positive_int,
    seed_int,
)
from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.device import get_device
from depthscape.core.distributed import setup
from depthscape.core.errors import notice as print_notice
from depthscape.core.locking import claim_folder
from depthscape.core.plugins import check_model_reads, plugin_name, registered
from depthscape.core.runtime import PRECISIONS, resolve_precision

NAME = "sharpness"
HELP = ("measure the Hessian's largest and smallest eigenvalue (Lanczos) and trace "
        "(Hutchinson) per run, optionally its top-k, its eigenvalue density and error bars")
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
                               ".png and density.png (all runs, log density axis)")
    spectrum.add_argument("--density-runs", type=int_in(1, 10**4), default=3,
                          help="Lanczos runs from random starts (default 3)")
    spectrum.add_argument("--density-steps", type=int_in(1, 10**5), default=80,
                          help="Lanczos steps per run (default 80; cost: runs x steps "
                               "Hessian-vector products)")
    # below 1e-3 each Gaussian is narrower than a step of the default 1000-point grid, so
    # the grid misses its peaks (1e-300 integrated to 1.9e295)
    spectrum.add_argument("--density-width", type=float_in(1e-3, 1.0), default=0.005,
                          help="Gaussian broadening: standard deviation / span of the Ritz "
                               "values, 0.001 to 1 (default 0.005)")
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
    plugin = plugin_from_args(args, {"--density": args.density},
                              instead_of=("run models (MODEL ...)", args.models))
    out = ensure_writable_dir(Path(args.out) if args.out else Path(args.run_dir) / "sharpness",
                              create=False)
    if plugin is not None:
        return run_plugin(args, plugin, config, out)
    # under torchrun every rank runs this command: the Hessian-vector products are split
    # over the ranks, rank 0 holds the folder's lock, writes and prints
    dist = setup(args.device)
    source = {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir}
    with claim_folder(out, f"sharpness folder {out}", owner=dist.is_main, agree=dist.all_true):
        results = measure_runs(args.run_dir, out, args.models or None, config,
                               data_source=source, progress=not args.no_progress)
        table = sharpness_table(results)
        written = write_table(table, out, "sharpness") if dist.is_main else []
        if args.density:
            density = DensityConfig(runs=args.density_runs, steps=args.density_steps,
                                    width=args.density_width, points=args.density_points)
            densities = measure_run_densities(args.run_dir, out, args.models or None, config,
                                              density, data_source=source,
                                              progress=not args.no_progress)
            written = list(written) + [out / f"{run.paths.run_name}.density.{suffix}"
                                       for run, _ in densities for suffix in ("json", "csv")]
            if any(d.density for _, d in densities):
                written.append(out / "density.png")
    if not dist.is_main:
        return 0
    print(f"{table.title}\n\n{table.markdown()}")
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def run_plugin(args: argparse.Namespace, plugin, config, out) -> int:
    """``--model-from``: the sharpness of one model from outside the package, measured as a
    run's (:func:`~depthscape.analysis.sharpness.model_sharpness` per draw, combined)."""
    check_sharpness_fits(config, plugin.model, get_device(args.device))  # before the data
    dataset = plugin.dataset(args.dataset, args.data_dir, args.cache_dir)
    # "train": the split the run of --weights trained on (else the whole training split)
    split = dataset.train.subset(plugin.train_subset) if config.split == "train" else dataset.test
    check_model_reads(plugin.model, split, plugin.preprocess, dataset.num_classes)
    subsets = draw_subsets(split, config.subset, config.draws, config.seed)
    dist = setup(args.device)
    try:
        precision = resolve_precision(config.precision, dist.device, backward=True)
        if precision.notice and dist.is_main:
            print_notice(precision.notice)
        config = replace(config, precision=precision.name)
        model = plugin.model.to(dist.device)
        seeds = [run_seed(config.seed, i) for i in range(config.draws)]
        draws = [model_sharpness(model, plugin.preprocess.normalize(subset.images.to(dist.device)),
                                 subset.labels.to(dist.device), config, seed, dist, precision)
                 for subset, seed in zip(subsets, seeds)]
    finally:
        dist.close()
    result = combine_draws(draws, seeds)
    if not dist.is_main:
        return 0
    name = plugin_name(plugin.spec)
    with registered(name, lambda: plugin.model, label=plugin.spec):  # the table's name for it
        table = sharpness_table([(SimpleNamespace(model=name, seed=0), result)])
    written = write_table(table, out, f"sharpness_{name}")
    print(f"{table.title}\n\n{table.markdown()}")
    print("written: " + ", ".join(str(p) for p in written))
    return 0
