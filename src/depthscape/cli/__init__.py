"""The ``depthscape`` command line: argparse subcommands, each calling one library function.

Subcommands live in ``depthscape.cli``: every module there defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. User errors (:class:`UserError`) print
one line and exit non-zero; so does an operating-system error no command turned into one
(``OSError``: a full disk, a folder made read-only; exit 1), naming the file and the reason.
Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from depthscape import __version__
from depthscape.core.errors import UserError


def _command_modules():
    import depthscape.cli as package

    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"depthscape.cli.{name}") for name in names]


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


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    from depthscape.core.models import families

    labels = [f.plural_label for f in families()]
    parser = _Parser(
        prog="depthscape",
        description=f"Train {', '.join(labels[:-1])} and {labels[-1]} (or a model of your own, "
                    "--model-from) on CIFAR-10 and measure their loss landscapes.",
    )
    parser.add_argument("--version", action="version", version=f"depthscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = sorted(_command_modules(), key=lambda m: getattr(m, "ORDER", 50))
    for module in modules:
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``depthscape`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    # Warnings (torch's among them, e.g. a failed CUDA probe) are held back while the
    # command runs: a user error is then its one line alone, and otherwise each warning
    # follows as one line of its own.
    with warnings.catch_warnings(record=True) as caught:
        try:
            code = int(args._run(args) or 0)
        except UserError as error:
            if _speaks():
                print(f"depthscape: error: {error}", file=sys.stderr)
            return error.exit_code
        except OSError as error:  # the backstop: the commands name their own files first
            from depthscape.core.atomic import os_error_text

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
    from depthscape.core.distributed import env_rank

    return env_rank() == 0


if __name__ == "__main__":
    raise SystemExit(main())
