"""Optimization trajectories: PCA of weight snapshots, the projected path, the contour file."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from depthscape.analysis.trajectory import (
    TrajectoryConfig,
    compute_trajectory,
    principal_directions,
    trajectory_from_snapshots,
)
from depthscape.analysis.trajectory_plots import plot_trajectory, read_trajectory
from depthscape.cli import main
from depthscape.core.models import get_model
from depthscape.training.loop import TrainConfig, train
from depthscape.training.snapshots import SnapshotWriter, flatten_parameters, snapshot_path


def test_principal_directions_of_a_known_plane():
    generator = torch.Generator().manual_seed(0)
    width = 300
    basis, _ = torch.linalg.qr(torch.randn(width, 2, generator=generator, dtype=torch.float64))
    coefficients = torch.randn(40, 2, generator=generator, dtype=torch.float64) * torch.tensor([5.0, 1.0])
    rows = coefficients @ basis.T + 0.3  # an offset: PCA centres it away
    components, variance, ratio, _ = principal_directions(rows.float().clone())
    c = components.double()
    assert torch.allclose(c @ c.T, torch.eye(2, dtype=torch.float64), atol=1e-5)  # orthonormal
    inside = c @ basis @ basis.T  # projection onto the known plane keeps each direction whole
    assert torch.allclose(inside, c, atol=1e-4)
    centred = (rows - rows.mean(0)).numpy()
    expected = np.sort(np.linalg.eigvalsh(centred.T @ centred / (len(rows) - 1)))[::-1]
    assert variance == pytest.approx(expected[:2], rel=1e-4)
    assert ratio == pytest.approx(expected[:2] / expected.sum(), rel=1e-4)
    assert ratio.sum() == pytest.approx(1.0, abs=1e-5)  # the plane holds all the variance


def test_principal_directions_with_noise_match_numpy_svd():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(12, 500, generator=generator, dtype=torch.float64) * torch.linspace(0.1, 3, 500)
    components, variance, ratio, _ = principal_directions(rows.float().clone())
    centred = (rows - rows.mean(0)).numpy()
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    assert variance == pytest.approx(s[:2] ** 2 / 11, rel=1e-4)
    assert ratio == pytest.approx(s[:2] ** 2 / (s ** 2).sum(), rel=1e-4)
    for i in range(2):
        assert abs(float(np.dot(components[i].double().numpy(), vt[i]))) == pytest.approx(1.0, abs=1e-4)


def _write_snapshots(path, model, rows):
    """A snapshot file whose rows are the given flat weight vectors (last = ``model``'s)."""
    writer = SnapshotWriter(path, every=1, every_steps=1, total_steps=len(rows) - 1)
    twin = get_model("resnet8", in_channels=3, num_classes=3)
    params = [p for p in twin.parameters() if p.dim() > 1]
    for step, row in enumerate(rows):
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(torch.from_numpy(row[offset:offset + p.numel()]).view_as(p))
                offset += p.numel()
        writer.add(step, twin)
    writer.flush()


def test_straight_line_trajectory_projects_to_a_straight_line(tmp_path):
    torch.manual_seed(0)
    model = get_model("resnet8", in_channels=3, num_classes=3)
    final = flatten_parameters(model)
    direction = np.random.default_rng(0).standard_normal(final.shape).astype(np.float32)
    ts = [1.0, 0.8, 0.55, 0.3, 0.1, 0.0]  # uneven steps along one line, ending at the final weights
    rows = [final + np.float32(t) * direction for t in ts]
    rows[-1] = final
    file = tmp_path / "run.snapshots.h5"
    _write_snapshots(file, model, rows)
    trajectory = trajectory_from_snapshots(file, model)
    path = trajectory.path
    assert path[-1].tolist() == [0.0, 0.0]
    assert path[0, 0] > 0  # the start on the positive side of the first direction
    norm = float(np.linalg.norm(direction.astype(np.float64)))
    assert path[:, 0] == pytest.approx(np.array(ts) * norm, rel=1e-4, abs=1e-3)
    assert np.abs(path[:, 1]).max() < 1e-4 * norm  # no spread off the line
    assert trajectory.explained_variance_ratio[0] == pytest.approx(1.0, abs=1e-6)
    flat = [torch.cat([d[n].reshape(-1) for n in d]).double() for d in trajectory.directions]
    assert abs(float(flat[0] @ flat[1])) < 1e-5  # orthonormal even with a degenerate 2nd direction
    assert float(flat[1].norm()) == pytest.approx(1.0, abs=1e-5)
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    assert list(trajectory.directions[0]) == names  # no biases, no BatchNorm


def _trained_run(data, out, **overrides):
    settings = dict(model="resnet8", dataset=str(data), out_dir=str(out), scale=12 / 64_000,
                    log_every=4, eval_every=6, checkpoint_every=5, progress=False, snapshot_every=2)
    settings.update(overrides)
    return train(TrainConfig(**settings))


def test_trajectory_file_plot_and_resume(tiny_data, cache_dir, tmp_path):
    result = _trained_run(tiny_data, tmp_path / "out")
    config = TrajectoryConfig(resolution=4, subset=12, device="cpu", workers=1)
    surface = compute_trajectory(result.paths.final, config, progress=False)
    data = read_trajectory(surface)
    assert data["complete"] and data["settings"]["direction"] == "pca"
    assert data["steps"].tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert data["path"].shape == (7, 2) and data["path"][-1].tolist() == [0.0, 0.0]
    assert data["x"].min() < data["path"][:, 0].min() and data["x"].max() > data["path"][:, 0].max()
    assert data["y"].min() < data["path"][:, 1].min() and data["y"].max() > data["path"][:, 1].max()
    ratio = data["explained_variance_ratio"]
    assert 0 < ratio[1] <= ratio[0] <= 1 and ratio.sum() <= 1 + 1e-9
    # resume: a copy with half the points missing is finished to the same values
    with h5py.File(surface, "r") as f:
        loss = f["test_loss"][()]
    partial = tmp_path / "partial.h5"
    from depthscape.analysis.landscape.storage import read_state, write_surface

    state = read_state(surface)
    state.done.flat[::2] = False
    state.loss.flat[::2] = np.nan
    write_surface(partial, state)
    compute_trajectory(result.paths.final, config, output=partial, progress=False)
    with h5py.File(partial, "r") as f:
        assert np.array_equal(f["test_loss"][()], loss)
        assert np.array_equal(f["path_x"][()], data["path"][:, 0])
    written = plot_trajectory(surface, tmp_path / "plots")
    assert [p.suffix for p in written] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in written)


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "depthscape", *argv], capture_output=True, text=True)


def test_cli_errors_are_one_line(tiny_data, cache_dir, tmp_path):
    result = _trained_run(tiny_data, tmp_path / "out", snapshot_every=None)
    run = _cli("trajectory", str(result.paths.final), "--no-progress")
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0
    assert run.stderr.startswith("depthscape: error: ") and "--snapshot-every" in run.stderr
    run = _cli("trajectory", "resnet", "20", "--out", str(tmp_path / "empty"))
    assert run.returncode != 0 and run.stderr.strip().count("\n") == 0
    assert run.stderr.startswith("depthscape: error: no trained resnet20")
    snapshot_path(result.paths.final).write_bytes(b"not hdf5")
    assert main(["trajectory", str(result.paths.final), "--no-progress"]) != 0
