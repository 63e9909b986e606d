"""Landscape surfaces survive SIGKILL (a rerun finishes the same file) and shard over torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from _landscape_tools import calibrated_model, one_thread, tiny_dataset, write_checkpoint  # noqa: F401

from depthscape.analysis.landscape import (
    LandscapeConfig,
    compute_landscape,
    read_directions,
    read_surface,
)
from depthscape.analysis.landscape.points import PointEvaluator

TESTS = Path(__file__).resolve().parent
CONFIG = dict(resolution=5, batch_size=16)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process (see one_thread)

#: Run by the subprocesses: compute the surface of argv[1] into argv[2]; with argv[3] set,
#: each point first sleeps that many seconds (so the parent can kill it part-way).
CHILD = textwrap.dedent(f"""
    import sys, time
    sys.path.insert(0, {str(TESTS)!r})
    from _landscape_tools import tiny_dataset
    from depthscape.analysis.landscape import LandscapeConfig, compute_landscape
    from depthscape.analysis.landscape.points import PointEvaluator

    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    if delay:
        original = PointEvaluator.evaluate
        def slow(self, coords):
            time.sleep(delay)
            return original(self, coords)
        PointEvaluator.evaluate = slow
    compute_landscape(sys.argv[1], LandscapeConfig(**{CONFIG!r}), output=sys.argv[2],
                      dataset=tiny_dataset(), progress=False, save_every=0.0)
""")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = calibrated_model("resnet8", dataset=tiny_dataset(), steps=5)
    return write_checkpoint(tmp_path_factory.mktemp("run") / "resnet-8_tiny.pth", model)


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "surface.h5"
    return compute_landscape(checkpoint, LandscapeConfig(**CONFIG), output=out,
                             dataset=tiny_dataset(), progress=False)


@pytest.fixture(scope="module")
def child_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("child") / "child.py"
    path.write_text(CHILD)
    return path


def assert_same_surface(a: Path, b: Path, exact: bool = True):
    ra, rb = read_surface(a), read_surface(b)
    assert ra["complete"] and rb["complete"]
    for key in ("x", "y", "done"):
        np.testing.assert_array_equal(ra[key], rb[key])
    for key in ("loss", "acc"):
        if exact:
            np.testing.assert_array_equal(ra[key], rb[key])
        else:
            np.testing.assert_allclose(ra[key], rb[key], rtol=1e-6, atol=1e-7)
    identity = ("weights_sha256", "data_sha256", "seed", "norm", "resolution", "xrange", "yrange")
    assert {k: ra["settings"][k] for k in identity} == {k: rb["settings"][k] for k in identity}
    da, db = read_directions(a), read_directions(b)
    assert all(np.array_equal(da[i][k], db[i][k]) for i in range(2) for k in da[i])
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert set(fa) == set(fb)


def test_killed_run_resumes_to_the_uninterrupted_file(checkpoint, uninterrupted, child_script,
                                                      tmp_path, monkeypatch):
    out = tmp_path / "surface.h5"
    child = subprocess.Popen([sys.executable, str(child_script), str(checkpoint), str(out), "0.4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ONE_THREAD)
    deadline = time.monotonic() + 120
    done = 0
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists():
                done = int(read_surface(out)["done"].sum())
                if done >= 3:
                    break
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    partial = read_surface(out)  # the killed run left a readable file
    done = int(partial["done"].sum())
    assert 3 <= done < 25
    assert np.isnan(partial["loss"][~partial["done"]]).all()

    calls = []
    original = PointEvaluator.evaluate

    def counted(self, coords):
        calls.append(coords)
        return original(self, coords)

    monkeypatch.setattr(PointEvaluator, "evaluate", counted)
    assert compute_landscape(checkpoint, LandscapeConfig(**CONFIG), output=out,
                             dataset=tiny_dataset(), progress=False) == out
    assert len(calls) == 25 - done  # only the missing points
    assert_same_surface(out, uninterrupted)


def test_torchrun_two_ranks_give_the_one_rank_surface(checkpoint, uninterrupted, child_script,
                                                      tmp_path):
    out = tmp_path / "sharded.h5"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(child_script), str(checkpoint), str(out)],
        capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_surface(out)["settings"]["world_size"] == 2
    assert_same_surface(out, uninterrupted)
