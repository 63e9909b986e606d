"""``--launcher slurm`` on train, landscape and sharpness: the very command line, less its
launcher options, submitted as one Slurm job whose tasks each run it as one of torchrun's
processes (:mod:`depthscape.study.slurm_command`; docs/cluster.md). The options come from
:func:`depthscape.cli._common.add_launcher_arguments`; :func:`launcher` is what the CLI's
``main`` runs for those commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from depthscape.core.datacache import default_cache_dir
from depthscape.core.errors import UserError
from depthscape.study.jobs import SLURM_DIR
from depthscape.study.slurm_command import launch
from depthscape.study.slurm_settings import SlurmSettings, settings_from

#: The commands' options that name files or folders the job reads or writes (dest, what):
#: each must lie where every node sees it (a value that is not a path, a model's name, is
#: left alone).
SHARED = (("out", "output folder"), ("output", "output file"), ("plots_dir", "plots folder"),
          ("run_dir", "run folder"), ("cache_dir", "data cache"), ("data_dir", "data folder"),
          ("dataset", "dataset"), ("run", "checkpoint"), ("target", "target checkpoint"),
          ("weights", "weights file"), ("recipe", "recipe file"))


def slurm_settings(args: argparse.Namespace) -> SlurmSettings:
    """The Slurm settings of a command's options (study's, or the launcher's), over
    ``$DEPTHSCAPE_SLURM_*`` and the TOML file (:func:`~depthscape.study.slurm_settings.
    settings_from`)."""
    given = vars(args)
    cli = {"partition": args.slurm_partition, "account": args.slurm_account,
           "qos": args.slurm_qos, "time": args.slurm_time, "gpus": args.slurm_gpus,
           "cpus": args.slurm_cpus, "mem_gb": args.slurm_mem_gb, "log_dir": args.slurm_log_dir,
           "args": args.slurm_arg, "allow_node_local": args.slurm_allow_node_local,
           "nodes": given.get("slurm_nodes"), "tasks_per_node": given.get("slurm_tasks_per_node")}
    return settings_from(cli, args.slurm_config)


def launcher(parser: argparse.ArgumentParser, argv: list[str], run):
    """What runs the parsed command: its own ``run`` here (``--launcher local``, where a
    launcher option given alone is refused), or its submission as one Slurm job of the
    CLI's entry point ``run`` on ``argv``."""

    def start(args: argparse.Namespace) -> int:
        if args.launcher == "slurm":
            return submit(parser, args, argv, run)
        stray = [a.option_strings[0] for a in args._launcher
                 if a.dest != "launcher" and getattr(args, a.dest) != a.default]
        if stray:
            raise UserError(f"{', '.join(stray)}: only with --launcher slurm")
        return args._run(args)

    return start


def submit(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str],
           run) -> int:
    """``argv`` without its launcher options, as one job (checked before anything is
    submitted; see :func:`depthscape.study.slurm_command.launch`)."""
    command = without(argv, args._launcher)
    resume = [word for word in command if word != "--overwrite"]
    if hasattr(args, "resume") and not args.resume:
        resume.append("--resume")  # a requeued training continues where it stopped
    _check_same(parser, args, command, {}, "--launcher and the --slurm-* options in full "
                "(e.g. --slurm-nodes, not --slurm-n)")
    _check_same(parser, args, resume, {"overwrite": False, "resume": True},
                "--overwrite in full (a requeued job runs the command without it)")
    settings = slurm_settings(args)
    cwd = Path.cwd()
    root = Path(getattr(args, "out", None) or getattr(args, "run_dir", None) or ".")
    log_dir = Path(settings.log_dir).expanduser() if settings.log_dir else root / SLURM_DIR / "logs"
    shared = {"working folder": cwd, "data cache": getattr(args, "cache_dir", None) or
              default_cache_dir()}
    for dest, what in SHARED:
        value = getattr(args, dest, None)
        if isinstance(value, str) and (os.sep in value or Path(value).exists()):
            shared[what] = value
    return launch(run, command, resume, settings, cwd=cwd, log_dir=log_dir.absolute(),
                  shared=shared, wait=not args.no_wait)


def without(argv: list[str], actions) -> list[str]:
    """``argv`` without the options of ``actions`` (as typed in full) and their values."""
    options = {name: action for action in actions for name in action.option_strings}
    kept, words = [], iter(argv)
    for word in words:
        if word == "--":  # the rest are positionals
            kept += [word, *words]
            break
        name, equals, _ = word.partition("=")
        action = options.get(name)
        if action is None:
            kept.append(word)
        elif action.nargs != 0 and not equals:
            next(words, None)  # its value
    return kept


def _check_same(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str],
                changed: dict, write: str) -> None:
    """``argv`` parses to ``args`` but for the launcher options (and the ``changed`` values
    of the options it has); else one line asking to ``write`` the options so (an
    abbreviation, --slurm-n, is not found in the command line)."""
    again = vars(parser.parse_args(argv))
    launch_dests = {action.dest for action in args._launcher}
    expected = {k: v for k, v in vars(args).items() if k not in launch_dests}
    expected.update({k: v for k, v in changed.items() if k in expected})
    if any(again[action.dest] != action.default for action in args._launcher) or \
            {k: v for k, v in again.items() if k not in launch_dests} != expected:
        raise UserError(f"cannot take the command line apart for Slurm: write {write}")
