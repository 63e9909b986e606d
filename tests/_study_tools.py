"""Helpers for the study tests: finished runs written without training, and headless Chromium.

:func:`write_fake_run` lays out what a finished training run leaves on disk (CSV log,
config JSON, final checkpoint of freshly initialised weights) in a fraction of a second,
so curves, tables, sharpness and report code can be tested without training.
:func:`load_page` opens a page in headless Chromium through the DevTools protocol over
``--remote-debugging-pipe`` (stdlib only) and returns its console problems and a screenshot.
"""

from __future__ import annotations

import base64
import json
import math
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from depthscape.core.checkpoint import save_checkpoint
from depthscape.core.csvlog import LOG_COLUMNS, append_log, init_log_file
from depthscape.core.models import canonical_name, get_model
from depthscape.core.recipes import recipe_for
from depthscape.core.runs import run_paths


def write_fake_run(run_dir: Path, model: str, seed: int = 0, dataset: str = "tiny",
                   rows: int = 12, final_acc: float = 60.0, elapsed_s: float = 100.0,
                   train_subset: int | None = None, checkpoint: bool = True) -> object:
    """A finished run of ``model`` (untrained weights) with a plausible log; returns its paths."""
    name = canonical_name(model)
    paths = run_paths(run_dir, name, seed, dataset)
    recipe = recipe_for(name)
    unit = recipe.unit
    torch.manual_seed(seed)
    kwargs = {"in_channels": 3, "num_classes": 3}
    if name == "cnn":
        kwargs["image_size"] = 32
    net = get_model(name, **kwargs)
    mean = [0.0, 0.0, 0.0] if name == "cnn" else [125.0, 123.0, 114.0]
    scale = 1.0 if name == "cnn" else 255.0
    config = {
        "model": name, "recipe": recipe.to_dict(),
        "train": {"model": name, "dataset": dataset, "data_dir": None, "cache_dir": None,
                  "out_dir": str(run_dir), "seed": seed, "scale": 1.0,
                  "train_subset": train_subset, "test_subset": None},
        "dataset": {"name": dataset, "classes": ["a", "b", "c"]},
        "preprocess": {"scale": scale, "mean": mean, "augment": name != "cnn", "crop_padding": 4},
    }
    init_log_file(paths.log, LOG_COLUMNS)
    for k in range(1, rows + 1):
        frac = k / rows
        train_acc = 30 + (final_acc + 10 - 30) * frac
        test_acc = 30 + (final_acc - 30) * frac if k > 1 else math.nan
        row = {"iteration": k * 100, "epoch": float(k) if unit == "epoch" else k * 0.25,
               "lr": 0.1, "train_loss": 2.0 - 1.5 * frac, "train_acc": train_acc,
               "train_err": 100 - train_acc, "test_loss": 2.1 - 1.2 * frac if k > 1 else math.nan,
               "test_acc": test_acc, "test_err": 100 - test_acc, "elapsed_s": elapsed_s * frac}
        append_log(paths.log, [row[c] for c in LOG_COLUMNS])
    paths.config.write_text(json.dumps(config, indent=2))
    if checkpoint:
        save_checkpoint(paths.final, {
            "model": name, "model_kwargs": kwargs, "config": config, "iteration": rows * 100,
            "metrics": {"train_loss": 0.5, "train_acc": final_acc + 10, "test_loss": 0.9,
                        "test_acc": final_acc, "elapsed_s": elapsed_s},
            "state_dict": net.state_dict()})
    return paths


# ---------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--remote-debugging-pipe",
                  "--window-size=1280,2000", "--hide-scrollbars"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Browser:
    """One Chromium process; commands go in on its fd 3, replies come out on its fd 4."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="depthscape-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():
            read_end, write_end = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=wire, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise ConnectionError("chromium closed its DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, seconds: float) -> bool:
        if any(e.get("method") == method for e in self.events):
            return True
        deadline = time.monotonic() + seconds
        while True:
            try:
                event = self._read(deadline)
            except TimeoutError:
                return False
            self.events.append(event)
            if event.get("method") == method:
                return True

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError, ConnectionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def load_page(binary: str, url: str, settle: float = 3.0, script: str | None = None
              ) -> tuple[list[str], bytes, object]:
    """Open ``url``, wait for its load event plus ``settle`` seconds.

    Returns (the page's console errors/warnings and uncaught exceptions, a PNG screenshot,
    the value of ``script`` evaluated in the page). Warnings the browser itself logs about
    its environment (software WebGL, GPU stalls) are not the page's and are left out.
    """
    browser = _Browser(binary)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": url}, session=session)
        if not browser.wait_for("Page.loadEventFired", 90):
            raise TimeoutError(f"{url} did not finish loading")
        browser.wait_for("never-sent", settle)
        value = None
        if script:
            value = browser.send("Runtime.evaluate", {"expression": script, "returnByValue": True},
                                 session=session)["result"].get("value")
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
    finally:
        browser.close()
    problems = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            problems.append(f"uncaught: {details.get('text')} "
                            f"{details.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert",
                                                                            "warning"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console.{params['type']}: {text}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            problems.append(f"{params['entry'].get('source')} error: {params['entry'].get('text')}")
    return problems, base64.b64decode(shot), value
