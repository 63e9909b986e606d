"""User-facing errors: one clear line and a non-zero exit, never a traceback; and notices."""

import sys


class UserError(Exception):
    """An error the user caused and can fix (bad depth, missing data, wrong checkpoint).

    The command-line interface prints ``str(error)`` on one line and exits with
    ``exit_code``; errors that are bugs keep their traceback.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


def notice(message: str) -> None:
    """One line ``depthscape: notice: MESSAGE`` on stderr: worth knowing, not an error."""
    print(f"depthscape: notice: {message}", file=sys.stderr, flush=True)
