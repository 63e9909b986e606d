"""`depthscape study`: the whole comparison (train, curves, landscapes, tables, sharpness, report)."""

from __future__ import annotations

import argparse

from depthscape.cli._common import (
    add_data_arguments,
    add_gpu_arguments,
    add_slurm_settings,
    gpu_settings,
    int_in,
    positive_int,
)
from depthscape.cli._launch import slurm_settings
from depthscape.core.atomic import ensure_writable_dir
from depthscape.core.runtime import PRECISIONS
from depthscape.study import runner, slurm
from depthscape.study.runner import BUDGETS, StudyConfig, describe_budgets, switchable_stages

NAME = "study"
HELP = ("run the whole comparison: train the seven models, plot, measure landscapes, "
        "sharpness, eigenvalue densities and flatness, write Tables 1-2 and "
        "report.md/report.html (resumable)")
ORDER = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP + "\n\nbudgets:\n" + describe_budgets()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--budget", choices=list(BUDGETS), default="quick",
                        help="how much of the spec's work to do (default quick)")
    parser.add_argument("--seeds", type=int_in(1, 1000), default=1,
                        help="runs per model, seeds 0..N-1; tables show mean ± std (default 1)")
    parser.add_argument("--out", default=None,
                        help="output folder (default study-<budget>); rerunning continues it")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="study these models instead of the seven (e.g. resnet20 plain20)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    add_data_arguments(parser)
    for stage in switchable_stages():  # --no-landscapes, --no-sharpness, ...
        parser.add_argument(f"--no-{stage.name}", action="store_true", help=stage.skip_help)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_gpu_arguments(parser)
    parser.add_argument("--runs-per-gpu", type=positive_int, default=None,
                        help="trainings run at once on each GPU (default $DEPTHSCAPE_RUNS_PER_GPU or 1)")
    parser.add_argument("--landscape-precision", choices=PRECISIONS, default=None,
                        help="arithmetic of the landscapes and trajectories: fp32 (exact), "
                             "bf16 (CUDA or a CPU with native bf16), ... (default: the "
                             "folder's; a new quick study bf16 on such a CPU, else fp32)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads for the study (and each Slurm unit; default: "
                             "torch's here, the unit's CPUs on Slurm)")
    add_slurm_arguments(parser)


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """--launcher, --no-wait, --status and the Slurm settings (docs/cluster.md)."""
    group = parser.add_argument_group(
        "cluster", "run the study's units as Slurm jobs through submitit (docs/cluster.md); "
        "each setting also from $DEPTHSCAPE_SLURM_<NAME> or a TOML file's [slurm] table")
    group.add_argument("--launcher", choices=["local", "slurm"], default="local",
                       help="local: this process (default); slurm: one job per unit")
    group.add_argument("--no-wait", action="store_true",
                       help="submit the units and return (see them with --status)")
    group.add_argument("--status", action="store_true",
                       help="show where the Slurm units of --out stand, submitting nothing")
    group.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per unit (default 0)")
    add_slurm_settings(group, job="unit", task="unit", node="unit")


def run(args: argparse.Namespace) -> int:
    if args.status:
        return slurm.status(args.out or f"study-{args.budget}")
    ensure_writable_dir(args.out or f"study-{args.budget}", create=False)

    config = StudyConfig(
        budget=args.budget, seeds=args.seeds, out_dir=args.out or f"study-{args.budget}",
        dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
        device=args.device, models=args.models, progress=not args.no_progress,
        skip=tuple(s.name for s in switchable_stages() if getattr(args, f"no_{s.name}")),
        runs_per_gpu=args.runs_per_gpu, landscape_precision=args.landscape_precision,
        threads=args.threads, **gpu_settings(args))
    if args.launcher == "slurm":
        return slurm.launch(config, slurm_settings(args), wait=not args.no_wait)
    result = runner.run_study(config)
    print(f"report: {result.report_md}\n        {result.report_html}")
    return 0
