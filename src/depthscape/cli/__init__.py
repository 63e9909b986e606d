"""The ``depthscape`` command line: argparse subcommands, each calling one library function.

Subcommands live in ``depthscape.cli``: every module there defines ``NAME``, ``HELP``,
``ORDER`` (literals), ``add_arguments(parser)`` and ``run(args) -> int``. Only the module of
the command that runs is imported (with the library, and torch, it needs); the list of
commands and their one-line help are read from the modules' source, so ``depthscape
--help`` and ``--version`` load no torch. User errors (:class:`UserError`) print one line
and exit non-zero; so does an operating-system error no command turned into one
(``OSError``: a full disk, a folder made read-only; exit 1), naming the file and the reason.
Other exceptions are bugs and keep their traceback. ``train``, ``landscape`` and
``sharpness`` take ``--launcher slurm``: the same command line as one Slurm job
(:mod:`depthscape.cli._launch`).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

from depthscape import __version__
from depthscape.core.atomic import os_error_text
from depthscape.core.datacache import own_matplotlib_cache
from depthscape.core.errors import UserError


class Command(NamedTuple):
    """A subcommand as its module declares it, read without importing the module."""

    name: str
    help: str
    order: int
    module: str  # depthscape.cli.<file>


def commands() -> list[Command]:
    """Every subcommand, in ``ORDER``: each module's ``NAME``, ``HELP`` and ``ORDER`` read
    from its source (literals), so listing them imports none."""
    found = []
    for path in sorted(Path(__file__).parent.glob("[!_]*.py")):
        declared = {}
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name) and \
                    node.targets[0].id in ("NAME", "HELP", "ORDER"):
                declared[node.targets[0].id] = ast.literal_eval(node.value)
        if "NAME" in declared:
            found.append(Command(declared["NAME"], declared.get("HELP", ""),
                                 declared.get("ORDER", 50), f"{__name__}.{path.stem}"))
    return sorted(found, key=lambda c: c.order)


def _command_modules():
    """Every subcommand's module, imported (the whole parser; tests and docs)."""
    return [importlib.import_module(c.module) for c in commands()]


class _Parser(argparse.ArgumentParser):
    """argparse with our error format: one line ``depthscape: error: ...``, exit 2.

    argparse's own prints the usage first (two lines and more); every user error of every
    command is one line, whether argparse or the command finds it.
    """

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else None
        where = f" (see depthscape {command} --help)" if command else " (see depthscape --help)"
        if _speaks():
            print(f"depthscape: error: {message}{where}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(command: str | None = None, every: bool = True) -> argparse.ArgumentParser:
    """The argument parser: every subcommand named, with its arguments for ``command``
    alone (its module imported), or for all of them where ``every`` and no ``command``."""
    parser = _Parser(
        prog="depthscape",
        description="Train a baseline CNN, ResNets and PlainNets at any depth 6n+2 and other "
                    "model families (or a model of your own, --model-from) on CIFAR-10 and "
                    "measure their loss landscapes and Hessians.",
    )
    parser.add_argument("--version", action="version", version=f"depthscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in commands():
        subparser = sub.add_parser(entry.name, help=entry.help, description=entry.help)
        if entry.name == command or (command is None and every):
            module = importlib.import_module(entry.module)
            module.add_arguments(subparser)
            subparser.set_defaults(_run=module.run)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``depthscape`` console script."""
    argv = sys.argv[1:] if argv is None else [str(word) for word in argv]
    own_matplotlib_cache()  # the commands' figures: before the command imports matplotlib
    parser = build_parser(_command_of(argv), every=False)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    run = args._run
    if getattr(args, "_launcher", None):  # train, landscape, sharpness: --launcher local|slurm
        # deferred on purpose: the launcher loads submitit and the Slurm code, which
        # `depthscape --help` and the other commands do not (tests/test_architecture.py)
        from depthscape.cli._launch import launcher

        run = launcher(parser, argv, main)
    # Warnings (torch's among them, e.g. a failed CUDA probe) are held back while the
    # command runs: a user error is then its one line alone, and otherwise each warning
    # follows as one line of its own.
    with warnings.catch_warnings(record=True) as caught:
        try:
            code = int(run(args) or 0)
        except UserError as error:
            if _speaks():
                print(f"depthscape: error: {error}", file=sys.stderr)
            return error.exit_code
        except OSError as error:  # the backstop: the commands name their own files first
            if _speaks():
                print(f"depthscape: error: {os_error_text(error)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            if _speaks():
                print("depthscape: interrupted", file=sys.stderr)
            return 130
        except BaseException:
            _show(caught)  # a bug: everything that may explain it, then the traceback
            raise
    _show(caught)
    return code


def _show(caught: list) -> None:
    """Each held-back warning as one line ``depthscape: warning: ...``."""
    if not _speaks():
        return
    for warning in caught:
        text = " ".join(str(warning.message).split())
        print(f"depthscape: warning: {text} ({warning.category.__name__})", file=sys.stderr)


def _speaks() -> bool:
    """Whether this process prints errors: all but torchrun's ranks other than 0."""
    # deferred on purpose: core.distributed loads torch, and `depthscape --help` loads none
    from depthscape.core.distributed import env_rank

    return env_rank() == 0


if __name__ == "__main__":
    raise SystemExit(main())
