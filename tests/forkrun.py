"""Run many ``python -m depthscape ARGS`` commands at the cost of one Python start-up.

A fresh ``python -m depthscape`` spends seconds importing torch before it reads its first
argument, so a table of a hundred bad inputs is mostly start-up. This script imports
depthscape's CLI and torch once (running no torch operation, so no thread pool exists to
be lost in a fork), then forks one child per command: a separate process, started from
that state, with its own file descriptors 1 and 2 written to files, its own working
directory and exit code, and its atexit handlers run, as ``python -m depthscape`` would.

    python tests/forkrun.py < request.json > results.json

The request is ``{"cwd": DIR, "jobs": N, "commands": [[arg, ...], ...]}``; the answer is
one ``[returncode, stdout, stderr]`` per command, in order.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import traceback

import torch  # noqa: F401  (imported here once, as every command would import it)

from depthscape.cli import main


def _child(args: list[str], cwd: str, out: int, err: int) -> None:
    """In the forked child: become ``python -m depthscape ARGS`` and never return."""
    code = 1
    try:
        os.chdir(cwd)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.argv = ["depthscape", *args]
        try:
            result = main(args)
        except SystemExit as stop:
            result = stop.code
        if result is None or isinstance(result, int):
            code = result or 0
        else:  # SystemExit("text"): printed, exit 1, as the interpreter does
            print(result, file=sys.stderr)
            code = 1
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - a traceback, as the interpreter would print it
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def run_all(commands: list[list[str]], cwd: str, jobs: int) -> list[list]:
    results: list[list | None] = [None] * len(commands)
    running: dict[int, tuple[int, object, object]] = {}
    queue = list(enumerate(commands))
    while queue or running:
        while queue and len(running) < jobs:
            index, args = queue.pop(0)
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(args, cwd, out.fileno(), err.fileno())
            running[pid] = (index, out, err)
        pid, status = os.wait()
        index, out, err = running.pop(pid)
        texts = []
        for handle in (out, err):
            handle.seek(0)
            texts.append(handle.read().decode("utf-8", "replace"))
            handle.close()
        results[index] = [os.waitstatus_to_exitcode(status), *texts]
    return results


if __name__ == "__main__":
    request = json.load(sys.stdin)
    answer = run_all(request["commands"], request["cwd"], int(request.get("jobs", 4)))
    sys.stdout.write(json.dumps(answer))
