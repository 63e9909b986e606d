"""Data-parallel Hessian-vector products under torchrun (2 CPU ranks, gloo) against one process.

Each rank forms the products on its contiguous share of the data (11 samples: shares of 5
and 6, so the weighting by sample count matters) and the ranks all-reduce them. The
products differ from one process's only in the order of float32 sums, so every eigenvalue,
trace and density agrees to rounding: relative ``TOL`` (measured: 2e-8 for the extreme
eigenvalues, 1e-7 for the top-k and the density's nodes, 2.5e-7 for the trace; 1e-4 leaves
room for other CPUs and BLAS builds and is still far below any difference a bug in the
weighting would make: a share miscounted moves the values by tens of per cent), and an
absolute 1e-7 for the density's far tails. The ranks agree with each other exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOL = 1e-4


def _env(cache_dir: Path) -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "DEPTHSCAPE_DATA": str(cache_dir), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), src,
                                                        os.environ.get("PYTHONPATH")]))}


def _torchrun(args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


SCRIPT = """
import json, sys
import torch
from _landscape_tools import TinyNet
from depthscape.analysis.hessian import HessianOperator, extreme_eigenvalues, hessian_trace
from depthscape.analysis.spectrum import spectral_density, top_eigenvalues
from depthscape.core.distributed import setup

torch.manual_seed(0)
model = TinyNet()
inputs = torch.randn(11, 1, 4, 4)
with torch.no_grad():
    model(inputs + 0.5)  # BatchNorm running statistics away from their defaults
labels = torch.randint(0, 3, (11,))
dist = setup("cpu") if len(sys.argv) > 2 else None
operator = HessianOperator(model, inputs, labels, batch_size=4, dist=dist)
ends = extreme_eigenvalues(operator, operator.params, 6, 1e-6, seed=3)
trace = hessian_trace(operator, operator.params, 4, 1e-9, 4, seed=3)
top = top_eigenvalues(operator, operator.params, 3, 8, 1e-6, seed=3)
density = spectral_density(operator, operator.params, runs=2, steps=5, points=50, seed=3)
out = {"largest": ends.largest, "smallest": ends.smallest, "steps": ends.iterations,
       "trace": trace[0], "top": top.values, "density": density.density,
       "nodes": density.nodes, "local": operator.local, "products": operator.products}
rank = dist.rank if dist is not None else 0
open(sys.argv[1] + f".{rank}.json", "w").write(json.dumps(out))
"""


def _close(a, b, what):
    if isinstance(a, list):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{what}[{i}]")
        return
    assert a == pytest.approx(b, rel=TOL, abs=1e-7), what


def test_hessian_products_split_over_two_ranks_give_one_process_values(tmp_path):
    script = tmp_path / "hvp.py"
    script.write_text(SCRIPT)
    env = _env(tmp_path / "cache")
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    done = _torchrun([str(script), str(tmp_path / "ddp"), "dist"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "single.0.json").read_text())
    ranks = [json.loads((tmp_path / f"ddp.{r}.json").read_text()) for r in (0, 1)]
    assert [r["local"] for r in ranks] == [5, 6] and one["local"] == 11  # uneven shares
    for key in ("largest", "smallest", "steps", "trace", "top", "density", "nodes", "products"):
        assert ranks[0][key] == ranks[1][key], key  # every rank the same, bit for bit
        _close(ranks[0][key], one[key], key)
    assert ranks[0]["largest"] > ranks[0]["smallest"]


def test_sharpness_and_density_cli_under_torchrun_match_one_process(tmp_path, tiny_data,
                                                                    cache_dir):
    from _study_tools import write_fake_run

    from depthscape.cli import main
    from depthscape.core.data import load_dataset

    torch.set_num_threads(1)
    write_fake_run(tmp_path, "resnet8", dataset="tinydata0")
    load_dataset(str(tiny_data), cache_dir=cache_dir)  # the cache, filled once
    options = ["--run-dir", str(tmp_path), "--dataset", str(tiny_data), "--cache-dir",
               str(cache_dir), "--subset", "11", "--batch-size", "4", "--power-iters", "5",
               "--power-tol", "1e-6", "--trace-samples", "3", "--trace-tol", "1e-9",
               "--top-k", "2", "--draws", "2", "--density", "--density-runs", "2",
               "--density-steps", "4", "--density-points", "40", "--no-progress"]
    assert main(["sharpness", *options, "--out", str(tmp_path / "one")]) == 0
    done = _torchrun(["-m", "depthscape", "sharpness", *options, "--out",
                      str(tmp_path / "two")], _env(cache_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("written:") == 1  # rank 0 alone prints
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.iterdir() if not p.name.startswith("."))
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == names
    single = json.loads((one / "resnet8_tinydata0.json").read_text())["result"]
    split = json.loads((two / "resnet8_tinydata0.json").read_text())["result"]
    assert split["draws"] == 2 and split["subset_size"] == 11
    for key in ("largest_eigenvalue", "smallest_eigenvalue", "trace", "top_eigenvalues",
                "eigen_steps", "trace_samples"):
        _close(split[key], single[key], key)
    dens_one = json.loads((one / "resnet8_tinydata0.density.json").read_text())["result"]
    dens_two = json.loads((two / "resnet8_tinydata0.density.json").read_text())["result"]
    _close(dens_two["nodes"], dens_one["nodes"], "nodes")
    _close(dens_two["weights"], dens_one["weights"], "weights")
    # the second call finds every rank's cache and measures nothing (no collective waits)
    again = _torchrun(["-m", "depthscape", "sharpness", *options, "--out", str(two)],
                      _env(cache_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((two / "resnet8_tinydata0.json").read_text())["result"] == split


CURVATURE_SCRIPT = """
import json, os, sys
from _landscape_tools import tiny_dataset
import depthscape.analysis.landscape.curvature as curvature
from depthscape.analysis.landscape.curvature import CurvatureConfig, compute_curvature

shares = []  # the images each of this rank's products is formed on, per point

class Recorded(curvature.HessianOperator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        shares.append(self.local)

curvature.HessianOperator = Recorded
checkpoint, *files = sys.argv[1:]
for file in files:  # one torchrun job, one map per file (the process group reused)
    parallel = "batch" if "batch" in file else "points"
    config = CurvatureConfig(resolution=3, subset=11, iterations=4, batch_size=4,
                             device="cpu", parallel=parallel)
    compute_curvature(file, checkpoint, config, tiny_dataset(), progress=False)
    open(f"{file}.{os.environ['RANK']}.json", "w").write(json.dumps(shares))
    shares.clear()
"""


def test_curvature_map_under_torchrun_points_dealt_or_products_split(tmp_path):
    """``parallel="points"``: the ranks deal out the grid, and the map is one process's, bit
    for bit. ``"batch"``: every point on both ranks, its products split over shares of 5
    and 6 images and all-reduced: one process's values to rounding (``TOL``, as above), and
    the split recorded in the map's identity, so a resume alone refuses it."""
    import h5py
    import numpy as np
    from _landscape_tools import calibrated_model, tiny_dataset, write_checkpoint

    from depthscape.analysis.landscape import LandscapeConfig, compute_landscape
    from depthscape.analysis.landscape.curvature import (
        CurvatureConfig,
        compute_curvature,
        read_curvature,
    )
    from depthscape.core.errors import UserError

    torch.set_num_threads(1)
    dataset = tiny_dataset()
    model = calibrated_model("resnet8", dataset=dataset, steps=2)
    checkpoint = write_checkpoint(tmp_path / "models" / "resnet8.pth", model)
    surface = compute_landscape(checkpoint, LandscapeConfig(resolution=3, subset=12, workers=1,
                                                            device="cpu"),
                                output=tmp_path / "surface.h5", dataset=dataset, progress=False)
    files = {name: tmp_path / f"{name}.h5" for name in ("single", "points", "batch")}
    for file in files.values():
        file.write_bytes(surface.read_bytes())
    compute_curvature(files["single"], checkpoint,
                      CurvatureConfig(resolution=3, subset=11, iterations=4, batch_size=4,
                                      device="cpu"), dataset, progress=False)
    script = tmp_path / "curvature.py"
    script.write_text(CURVATURE_SCRIPT)
    done = _torchrun([str(script), str(checkpoint), str(files["points"]), str(files["batch"])],
                     _env(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    def shares(name: str) -> list[list[int]]:
        return [json.loads(Path(f"{files[name]}.{rank}.json").read_text()) for rank in (0, 1)]

    assert sorted(shares("points")[0] + shares("points")[1]) == [11] * 9  # the grid dealt out
    assert shares("batch") == [[5] * 9, [6] * 9]  # every point on both ranks, the images split
    single, points, batch = (read_curvature(files[n]) for n in ("single", "points", "batch"))
    assert single["complete"] and points["complete"] and batch["complete"]
    with h5py.File(files["single"], "r") as a, h5py.File(files["points"], "r") as b:
        for key in ("hessian_max_eig", "hessian_min_eig", "curvature_done", "curvature_settings"):
            assert np.array_equal(a[key][()], b[key][()]), key
    for key in ("largest", "smallest"):
        assert not np.array_equal(batch[key], np.zeros_like(batch[key]))
        _close(batch[key].ravel().tolist(), single[key].ravel().tolist(), key)
    assert "hvp_shards" not in single["settings"]["identity"]
    assert batch["settings"]["identity"] == {**single["settings"]["identity"], "hvp_shards": 2}
    with pytest.raises(UserError, match="other settings"):  # alone, the split map is not its
        compute_curvature(files["batch"], checkpoint,
                          CurvatureConfig(resolution=3, subset=11, iterations=4, batch_size=4,
                                          device="cpu", parallel="batch"), dataset, progress=False)


def test_curvature_parallel_choices_are_the_library_s():
    import argparse

    from depthscape.analysis.landscape.curvature import PARALLEL, CurvatureConfig
    from depthscape.cli.landscape import add_arguments
    from depthscape.core.errors import UserError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "curvature_parallel")
    assert tuple(action.choices) == PARALLEL and action.default == CurvatureConfig.parallel
    with pytest.raises(UserError, match="curvature parallel must be one of points, batch"):
        CurvatureConfig(parallel="ranks").validate()
