"""Curvature maps: Lanczos eigen-extremes against the exact Hessian, the map in a surface
file, resume after a kill, the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from depthscape.analysis.hessian import extreme_eigenvalues
from depthscape.analysis.landscape import LandscapeConfig, compute_landscape
from depthscape.analysis.landscape.curvature import (
    CurvatureConfig,
    compute_curvature,
    curvature_at,
    plot_curvature,
    read_curvature,
)
from depthscape.cli import main
from depthscape.core.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from _landscape_tools import (  # noqa: E402,F401
    TinyNet,
    calibrated_model,
    one_thread,
    tiny_dataset,
    write_checkpoint,
)


def exact_extremes(model, inputs, labels) -> tuple[float, float]:
    """Largest and smallest eigenvalue of the exact Hessian (eval mode, all parameters)."""
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = dict(model.named_buffers())

    def loss(theta):
        params = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, (params, buffers), (inputs,)), labels)

    values = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
    return float(values[-1]), float(values[0])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().double()
    model.train()
    inputs = torch.randn(12, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            model(inputs + 0.5)  # BatchNorm running statistics away from their defaults
    labels = torch.randint(0, 3, (12,))
    generator = torch.Generator().manual_seed(1)
    directions = [{n: torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.5
                   for n, p in model.named_parameters() if p.dim() > 1} for _ in range(2)]
    return model.eval(), inputs, labels, directions


@pytest.mark.parametrize("point", [(0.0, 0.0), (1.0, -0.5), (-0.8, 0.9)])
def test_eigen_extremes_match_the_exact_hessian(tiny, point):
    model, inputs, labels, directions = tiny
    base = {k: v.clone() for k, v in model.state_dict().items()}
    work = TinyNet().double()
    work.load_state_dict(base)
    count = sum(p.numel() for p in work.parameters())
    found = curvature_at(work, base, directions, point, inputs, labels,
                         CurvatureConfig(iterations=count + 5, tol=0.0, batch_size=5))
    probe = TinyNet().double()
    probe.load_state_dict(base)
    with torch.no_grad():
        for name, p in probe.named_parameters():
            for c, d in zip(point, directions):
                if name in d:
                    p.add_(d[name], alpha=c)
    largest, smallest = exact_extremes(probe, inputs, labels)
    assert smallest < 0 < largest  # a point with negative curvature: both ends tested
    assert found.largest == pytest.approx(largest, rel=1e-6, abs=1e-9)
    assert found.smallest == pytest.approx(smallest, rel=1e-6, abs=1e-9)


def test_lanczos_converges_early_on_a_few_distinct_eigenvalues():
    diagonal = torch.tensor([5.0] * 10 + [-2.0] * 10 + [0.5] * 10, dtype=torch.float64)
    params = [torch.zeros(30, dtype=torch.float64)]
    found = extreme_eigenvalues(lambda v: [diagonal * v[0]], params, iters=25)
    assert found.converged and found.iterations <= 4  # three distinct values: a 3-D Krylov space
    assert found.largest == pytest.approx(5.0) and found.smallest == pytest.approx(-2.0)


def _surface(tmp_path, resolution=3):
    dataset = tiny_dataset()
    model = calibrated_model("resnet8", dataset=dataset, steps=2)
    checkpoint = write_checkpoint(tmp_path / "models" / "resnet8.pth", model)
    surface = compute_landscape(checkpoint, LandscapeConfig(resolution=resolution, subset=12, workers=1,
                                                            device="cpu"),
                                output=tmp_path / "surface.h5", dataset=dataset, progress=False)
    return checkpoint, surface, dataset


CONFIG = CurvatureConfig(resolution=3, subset=8, iterations=4, device="cpu")


def test_curvature_map_is_stored_and_a_killed_run_resumes_to_the_same_file(tmp_path):
    checkpoint, surface, dataset = _surface(tmp_path)
    whole = tmp_path / "whole.h5"
    whole.write_bytes(surface.read_bytes())
    compute_curvature(whole, checkpoint, CONFIG, dataset, progress=False)
    curvature = read_curvature(whole)
    assert curvature["complete"] and curvature["largest"].shape == (3, 3)
    assert (curvature["largest"] >= curvature["smallest"]).all()
    assert np.allclose(curvature["ratio"], np.abs(curvature["smallest"] / curvature["largest"]))
    share = curvature["convex_share"]
    assert share == pytest.approx(curvature["convex"].mean())
    with h5py.File(whole, "r") as f:  # the surface itself is untouched, beside the map
        with h5py.File(surface, "r") as g:
            assert np.array_equal(f["test_loss"][()], g["test_loss"][()])

    class Killed(Exception):
        pass

    def kill_after(count):
        seen = []

        def on_point(index):
            seen.append(index)
            if len(seen) == count:
                raise Killed
        return on_point

    parts = tmp_path / "parts.h5"
    parts.write_bytes(surface.read_bytes())
    with pytest.raises(Killed):
        compute_curvature(parts, checkpoint, CONFIG, dataset, progress=False, save_every=0,
                          on_point=kill_after(4))
    assert int(read_curvature(parts)["done"].sum()) == 4
    compute_curvature(parts, checkpoint, CONFIG, dataset, progress=False)
    with h5py.File(whole, "r") as a, h5py.File(parts, "r") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in ("hessian_max_eig", "hessian_min_eig", "curvature_ratio", "curvature_done",
                    "curvature_xcoordinates", "curvature_settings", "test_loss"):
            assert np.array_equal(a[key][()], b[key][()]), key
    written = plot_curvature(whole, tmp_path / "plots")
    assert all(p.stat().st_size > 0 for p in written)
    with pytest.raises(Exception, match="other settings"):
        compute_curvature(whole, checkpoint, CurvatureConfig(resolution=4, subset=8, iterations=4),
                          dataset, progress=False)


def test_landscape_cli_with_curvature(tmp_path, capsys, monkeypatch):
    dataset = tiny_dataset()
    model = calibrated_model("resnet8", dataset=dataset)
    checkpoint = write_checkpoint(tmp_path / "models" / "resnet8.pth", model, data_source="tiny")
    import depthscape.core.trained as trained_module

    monkeypatch.setattr(trained_module, "load_dataset", lambda *a, **k: dataset)
    code = main(["landscape", str(checkpoint), "--resolution", "3", "--subset", "6", "--curvature",
                 "--curvature-resolution", "2", "--curvature-subset", "4", "--curvature-iters", "3",
                 "--no-progress", "--kinds", "contour", "--formats", "png", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "_curvature.png" in printed
    surface = Path(printed.split("surface: ")[1].splitlines()[0])
    assert read_curvature(surface)["complete"]
    code = main(["landscape", str(checkpoint), "--dims", "1", "--curvature", "--no-progress"])
    assert code != 0
    assert capsys.readouterr().err.strip() == \
        "depthscape: error: --curvature needs a 2-D surface (not --dims 1 or --target)"


def test_worker_count_does_not_change_the_values(tmp_path):
    checkpoint, surface, dataset = _surface(tmp_path)
    files = []
    for workers in (1, 2):
        copy = tmp_path / f"workers{workers}.h5"
        copy.write_bytes(surface.read_bytes())
        compute_curvature(copy, checkpoint, CurvatureConfig(resolution=3, subset=8, iterations=4,
                                                            device="cpu", workers=workers),
                          dataset, progress=False)
        files.append(read_curvature(copy))
    assert np.array_equal(files[0]["largest"], files[1]["largest"])
    assert np.array_equal(files[0]["smallest"], files[1]["smallest"])


def test_a_study_replaces_only_a_map_of_other_settings(tmp_path):
    """``overwrite="other-settings"``: a finished map with the same settings is kept as it is
    (a rerun computes nothing); one with other settings is recomputed instead of refused."""
    checkpoint, surface, dataset = _surface(tmp_path)
    config = CurvatureConfig(resolution=2, subset=4, iterations=3, device="cpu")
    compute_curvature(surface, checkpoint, config, dataset, progress=False)
    points = []
    compute_curvature(surface, checkpoint, config, dataset, progress=False,
                      overwrite="other-settings", on_point=points.append)
    assert points == []  # kept
    other = CurvatureConfig(resolution=2, subset=4, iterations=4, device="cpu")
    # the refusal names the first setting that differs
    with pytest.raises(UserError, match=r"other settings \(iterations is 3 there, 4 here\)"):
        compute_curvature(surface, checkpoint, other, dataset, progress=False)
    compute_curvature(surface, checkpoint, other, dataset, progress=False,
                      overwrite="other-settings", on_point=points.append)
    assert len(points) == 4 and read_curvature(surface)["settings"]["identity"]["iterations"] == 4
