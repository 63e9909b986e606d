"""report.html: self-contained, and in headless Chromium it loads without console errors,
draws every figure and interactive surface, and its screenshot is not blank."""

from __future__ import annotations

import io
import re

import pytest
from _study_tools import find_chromium, load_page, write_fake_run

from depthscape.analysis.curves import standard_figures
from depthscape.analysis.landscape import LandscapeConfig, compute_landscape, plot_landscape
from depthscape.analysis.sharpness import SharpnessResult
from depthscape.analysis.tables import RunMetrics
from depthscape.core.data import load_dataset
from depthscape.core.runs import find_runs
from depthscape.study.report import Landscape, render_html, write_report
from depthscape.study.runner import StudyResult, get_budget

MODELS = ("resnet8", "plain8")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report built from fake finished runs, real curves, surfaces and drawings."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("report")
    data = write_image_folder(root / "tiny", train_per_class=4, test_per_class=4)
    dataset = load_dataset(str(data), cache_dir=root / "cache")
    out = root / "study"
    for k, model in enumerate(MODELS):
        write_fake_run(out, model, dataset="tiny", final_acc=70.0 - 20 * k, elapsed_s=60.0 + k)
    runs = find_runs(out)
    figures = standard_figures(out, out / "plots", formats=("png",))
    metrics, sharpness, landscapes = [], [], []
    for k, run in enumerate(runs):
        metrics.append(RunMetrics(run.model, 0, "tiny", run.paths.run_name, 0.3, 90.0 - k,
                                  0.6, 70.0 - 20 * k, 12, 12, 60.0 + k, 1200))
        sharpness.append((run, SharpnessResult.from_fields(10.0 * (k + 1), -1.0, 5, True, 100.0 * (k + 1), 1.0,
                                               5, True, 8, 1000)))
        surface = compute_landscape(run.paths.final, LandscapeConfig(resolution=3, subset=6),
                                    output=out / "landscapes" / f"{run.paths.run_name}.h5",
                                    dataset=dataset, progress=False)
        plots = plot_landscape(surface, out / "plots" / "landscapes",
                               kinds=["contour", "surface3d"], formats=("png",))
        landscapes.append(Landscape(run.model, run.paths.run_name, Path(surface),
                                    [Path(p) for p in plots], None))
    result = StudyResult(out, out / "report.md", out / "report.html", metrics, figures,
                         landscapes, sharpness, {"training": 61.0}, ["a note"])
    write_report(result, get_budget("smoke"), {"seeds": 1, "dataset": "tiny"})
    return result


def test_report_html_is_self_contained(report):
    html = report.report_html.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r'<(?:img|script|link)[^>]+(?:src|href)="(?!data:)', html)
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)
    # curves: ResNets, PlainNets, the depth-8 pair, each run alone; 2 contours, 2 surfaces
    assert len(images) == 3 + 2 + 2 + 2
    assert html.count('class="surface"') == 2 and "Plotly.newPlot" in html
    assert "Table 1: final training vs. test performance" in html
    assert "ResNet-8" in html and "PlainNet-8" in html and "a note" in html
    markdown = report.report_md.read_text()
    assert "| ResNet-8 | 90.00 | 70.00 |" in markdown


def test_render_html_escapes_text():
    from depthscape.study.report import Heading, Paragraph

    html = render_html([Heading("a <b> & c", 2), Paragraph("x < y and `code<>`")])
    assert "<h2>a &lt;b&gt; &amp; c</h2>" in html
    assert "<p>x &lt; y and <code>code&lt;&gt;</code></p>" in html
    assert "<script" not in html  # no surfaces: no plotly.js


CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_renders_in_headless_chromium(report):
    from PIL import Image

    check = ("JSON.stringify({plots: document.querySelectorAll('.surface.js-plotly-plot').length,"
             " canvases: document.querySelectorAll('.surface canvas').length,"
             " images: document.images.length,"
             " loaded: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0)"
             ".length, tables: document.querySelectorAll('table').length})")
    problems, png, value = load_page(CHROMIUM, report.report_html.as_uri(), settle=3.0,
                                     script=check)
    assert problems == []
    import json

    state = json.loads(value)
    assert state["plots"] == 2 and state["canvases"] >= 2  # both surfaces drawn by plotly
    assert state["images"] == 9 and state["loaded"] == 9  # every embedded figure decoded
    assert state["tables"] == 4  # Table 1, Table 2, sharpness, budget
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    assert shot.size[0] >= 800
    colours = shot.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, tables and figures, not one flat colour
    pixels = shot.load()
    width, height = shot.size
    dark = sum(1 for x in range(0, width, 4) for y in range(0, height, 4)
               if sum(pixels[x, y]) < 600)
    assert dark > 0.01 * (width // 4) * (height // 4)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_console_errors_are_caught(tmp_path):
    """The browser check itself: a page with a script error must be reported."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>console.error('boom'); nope();</script>"
                    "</body></html>")
    problems, _, _ = load_page(CHROMIUM, page.as_uri(), settle=0.2)
    assert any("boom" in p for p in problems)
    assert any("nope" in p for p in problems)
