"""Landscape pictures (PNG, PDF, VTK, HTML) and the landscape/plot commands."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from _landscape_tools import calibrated_model, one_thread, tiny_dataset, write_checkpoint  # noqa: F401
from conftest import write_image_folder

from depthscape.analysis.landscape import (
    LandscapeConfig,
    compute_landscape,
    plot_landscape,
    read_surface,
    write_interactive_html,
)
from depthscape.analysis.landscape.plots import gaussian_smooth, surface_values
from depthscape.analysis.landscape.storage import read_state, write_surface
from depthscape.cli import main
from depthscape.core.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    model = calibrated_model("resnet8", dataset=tiny_dataset(), steps=5)
    write_checkpoint(root / "models" / "resnet-8_tiny.pth", model)
    return root


@pytest.fixture(scope="module")
def surface2d(run_dir):
    return compute_landscape(run_dir / "models" / "resnet-8_tiny.pth", LandscapeConfig(resolution=7),
                             dataset=tiny_dataset(), progress=False)


@pytest.fixture(scope="module")
def surface1d(run_dir):
    return compute_landscape(run_dir / "models" / "resnet-8_tiny.pth",
                             LandscapeConfig(resolution=9, dims=1), dataset=tiny_dataset(),
                             progress=False)


def image_is_not_blank(path: Path, drawn: float = 0.05, colours: int = 50) -> None:
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    non_white = (pixels < 0.9).any(axis=-1).mean()
    assert non_white > drawn, f"{path.name} is almost blank ({non_white:.1%} drawn)"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > colours  # a colour map, not a few lines


def test_every_2d_plot_is_written_and_non_trivial(surface2d, tmp_path):
    written = plot_landscape(surface2d, tmp_path)
    names = {p.name.removeprefix(surface2d.stem + "_loss_") for p in written}
    assert names == {"contour.png", "contour.pdf", "contourf.png", "contourf.pdf", "heatmap.png",
                     "heatmap.pdf", "surface3d.png", "surface3d.pdf", "vtp.vtp", "html.html"}
    for path in written:
        assert path.exists() and path.stat().st_size > 2000, path.name
        if path.suffix == ".png":
            image_is_not_blank(path)
        if path.suffix == ".pdf":
            assert path.read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    vtp = next(p for p in written if p.suffix == ".vtp")
    piece = ET.parse(vtp).getroot().find("PolyData/Piece")
    assert piece.get("NumberOfPoints") == "49" and piece.get("NumberOfPolys") == "36"
    points = np.array(piece.find("Points/DataArray").text.split(), dtype=float).reshape(-1, 3)
    np.testing.assert_allclose(points[:, 2], read_surface(surface2d)["loss"].ravel(), rtol=1e-6)


def test_interactive_html_is_self_contained(surface2d, tmp_path):
    html = write_interactive_html(surface2d, tmp_path / "surface.html").read_text()
    assert "<html>" in html[:100] and "\"type\":\"surface\"" in html
    assert "<script src=" not in html and 'src="http' not in html  # nothing fetched: works offline
    assert len(html) > 1_000_000  # plotly.js is inline


def test_1d_plots(surface1d, tmp_path):
    written = plot_landscape(surface1d, tmp_path)
    assert sorted(p.suffix for p in written) == [".html", ".pdf", ".png"]
    png = next(p for p in written if p.suffix == ".png")
    image_is_not_blank(png, drawn=0.02, colours=20)
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.3)
    red = (pixels[..., 0] > 0.7) & (pixels[..., 2] < 0.3)
    assert blue.sum() > 200 and red.sum() > 200  # the loss and the accuracy curve
    with pytest.raises(UserError, match="does not fit a 1-D"):
        plot_landscape(surface1d, tmp_path, kinds=["surface3d"])


def test_scale_clip_levels_and_smoothing_options(surface2d, tmp_path):
    surface = read_surface(surface2d)
    raw = surface_values(surface)
    np.testing.assert_array_equal(raw, surface["loss"])
    np.testing.assert_allclose(surface_values(surface, log_scale=True), np.log10(surface["loss"]))
    clipped = surface_values(surface, zmax=float(np.median(raw)))
    assert clipped.max() == pytest.approx(np.median(raw)) and raw.max() > clipped.max()
    smooth = gaussian_smooth(raw, 1.0)
    assert smooth.shape == raw.shape and np.abs(np.diff(smooth, axis=1)).sum() < np.abs(np.diff(raw, axis=1)).sum()
    assert surface_values(surface, "acc").max() <= 100
    with pytest.raises(UserError, match="loss only"):
        surface_values(surface, "acc", log_scale=True)
    written = plot_landscape(surface2d, tmp_path, kinds=["contour"], log_scale=True, levels=5,
                             zmax=5.0, smooth=1.0, formats=("png",))
    assert [p.name for p in written] == [f"{surface2d.stem}_loss_log_contour.png"]
    image_is_not_blank(written[0], drawn=0.02, colours=20)


def test_unfinished_surface_is_not_plotted(surface2d, tmp_path):
    state = read_state(surface2d)
    state.done[0, 0] = False
    partial = write_surface(tmp_path / "partial.h5", state)
    with pytest.raises(UserError, match="not finished"):
        plot_landscape(partial, tmp_path)


def test_landscape_and_plot_commands(run_dir, tmp_path, cache_dir, capsys):
    data = write_image_folder(tmp_path / "data", train_per_class=4, test_per_class=6, size=16)
    root = tmp_path / "out"
    model = calibrated_model("resnet8", dataset=tiny_dataset(), steps=2)
    write_checkpoint(root / "models" / "resnet-8_data.pth", model)
    # a run named by model, looked up in --out with its dataset's name
    code = main(["landscape", "resnet", "8", "--out", str(root), "--dataset", str(data),
                 "--resolution", "3", "--no-progress", "--kinds", "contour", "html",
                 "--formats", "png"])
    assert code == 0
    surfaces = list((root / "landscapes").glob("resnet-8_data_test_2d_*.h5"))
    assert len(surfaces) == 1 and read_surface(surfaces[0])["settings"]["samples"] == 18
    assert sorted(p.suffix for p in (root / "plots").iterdir()) == [".html", ".png"]
    # replot with other options into another folder
    code = main(["plot", str(surfaces[0]), "--plots-dir", str(tmp_path / "p"), "--kinds", "heatmap",
                 "--quantity", "acc", "--formats", "pdf"])
    assert code == 0 and [p.name for p in (tmp_path / "p").iterdir()] == [
        f"{surfaces[0].stem}_acc_heatmap.pdf"]
    capsys.readouterr()
    # user errors: one line, non-zero
    assert main(["landscape", "resnet", "20", "--out", str(root), "--no-progress"]) != 0
    assert main(["plot", str(tmp_path / "missing.h5")]) != 0
    assert main(["landscape", str(root / "models" / "resnet-8_data.pth"), "--dataset", str(data),
                 "--xrange", "1", "-1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("depthscape: error: ") for line in err)
    assert "no trained resnet20" in err[0] and "not found" in err[1] and "xrange" in err[2]
