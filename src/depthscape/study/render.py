"""The report's blocks rendered: GitHub-flavoured Markdown (``report.md``, figures linked by
relative path) and one self-contained HTML page (``report.html``: every figure embedded as a
base64 PNG, the interactive 3-D surfaces drawn by plotly.js, inlined once, so the page works
offline and can be mailed).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from depthscape.analysis.landscape import read_surface
from depthscape.study.blocks import (
    Bullets,
    FigureBlock,
    FigureGrid,
    Heading,
    Paragraph,
    SurfaceBlock,
    TableBlock,
)

# ---------------------------------------------------------------------------------------
# Markdown


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def render_markdown(blocks: Sequence, base: Path) -> str:
    """The blocks as GitHub-flavoured Markdown; figures linked relative to ``base``."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, TableBlock):
            parts.append(block.table.markdown().rstrip()
                         + (f"\n\n*{block.caption}*" if block.caption else ""))
        elif isinstance(block, FigureBlock):
            parts.append(_md_figure(block, base))
        elif isinstance(block, FigureGrid):
            parts.append("\n\n".join(_md_figure(f, base) for f in block.figures))
        elif isinstance(block, SurfaceBlock):
            ls = block.landscape
            link = f"[interactive 3-D page]({_rel(ls.html, base)})" if ls.html else ""
            parts.append(f"- {block.caption}: {link} (surface data: `{_rel(ls.surface, base)}`)")
    return "\n\n".join(parts) + "\n"


def _md_figure(block: FigureBlock, base: Path) -> str:
    extra = "".join(f" ([{name}]({_rel(path, base)}))" for name, path in block.links)
    return f"![{block.caption}]({_rel(block.path, base)})\n\n*{block.caption}*{extra}"


# ---------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#1d2330;background:#fff;line-height:1.5}
h1{border-bottom:2px solid #1d2330;padding-bottom:.3rem}
h2{margin-top:2.2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ccd;padding:.3rem .6rem;text-align:right}
th{background:#eef0f6}td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #e3e5ea}
figcaption{font-style:italic;color:#445}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:1rem}
.surface{height:520px;border:1px solid #e3e5ea}
code{background:#f2f3f7;padding:0 .2rem;border-radius:3px}
.caption{font-style:italic;color:#445;margin-top:0}
.note{font-size:.88rem;color:#445;margin:.2rem 0}
"""


def _inline(text: str) -> str:
    """Escape ``text`` and turn `code` spans into <code>."""
    pieces = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                   for i, p in enumerate(pieces))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _html_table(block: TableBlock) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.table.header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in block.table.rows)
    notes = "".join(f'<p class="note">{_inline(note)}</p>' for note in block.table.notes)
    caption = f'<p class="caption">{_inline(block.caption)}</p>' if block.caption else ""
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{notes}"
            f"{caption}")


def _html_figure(block: FigureBlock) -> str:
    return (f'<figure><img alt="{html.escape(block.caption)}" src="{_data_uri(block.path)}">'
            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")


def surface_figure_json(surface: dict, title: str) -> dict:
    """A plotly figure (as JSON-able dict) of a 2-D surface's log10 loss, or a 1-D curve."""
    loss = np.array(surface["loss"], dtype=np.float64)
    finite = np.isfinite(loss)
    loss[~finite] = np.nanmax(loss[finite]) if finite.any() else 1.0
    loss = np.log10(np.maximum(loss, 1e-12))  # the loss spans many orders of magnitude
    x = np.asarray(surface["x"], dtype=np.float64).tolist()
    if surface.get("dims", 2) == 2 and surface.get("y") is not None:
        data = [{"type": "surface", "x": x, "y": np.asarray(surface["y"], dtype=np.float64).tolist(),
                 "z": loss.tolist(), "colorscale": "Viridis",
                 "colorbar": {"title": {"text": f"log10 {surface.get('split', 'test')} loss"}}}]
        layout = {"scene": {"xaxis": {"title": {"text": "alpha"}},
                            "yaxis": {"title": {"text": "beta"}},
                            "zaxis": {"title": {"text": "log10 loss"}}}}
    else:
        data = [{"type": "scatter", "x": x, "y": loss.tolist(), "mode": "lines+markers"}]
        layout = {"xaxis": {"title": {"text": "alpha"}}, "yaxis": {"title": {"text": "log10 loss"}}}
    layout.update({"title": {"text": title}, "margin": {"l": 0, "r": 0, "t": 40, "b": 0},
                   "template": None})
    return {"data": data, "layout": layout}


def _plotly_js() -> str:
    # deferred on purpose: plotly loads only for the interactive HTML
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_html(blocks: Sequence, title: str = "depthscape study report") -> str:
    """The blocks as one self-contained HTML page (figures inline, plotly.js inline once)."""
    body, scripts = [], []
    surfaces = 0
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            body.append(_html_table(block))
        elif isinstance(block, FigureBlock):
            body.append(_html_figure(block))
        elif isinstance(block, FigureGrid):
            body.append('<div class="grid">' + "".join(_html_figure(f) for f in block.figures)
                        + "</div>")
        elif isinstance(block, SurfaceBlock):
            surfaces += 1
            div = f"surface-{surfaces}"
            figure = surface_figure_json(read_surface(block.landscape.surface), block.caption)
            body.append(f'<div id="{div}" class="surface" data-model="'
                        f'{html.escape(block.landscape.model)}"></div>')
            scripts.append(f"draw({json.dumps(div)}, {_json(figure)});")
    script = ""
    if scripts:
        script = (f"<script>{_plotly_js()}</script>\n<script>\n"
                  "function draw(id, fig) {\n"
                  "  Plotly.newPlot(id, fig.data, fig.layout, {responsive: true});\n"
                  "}\n" + "\n".join(scripts) + "\n</script>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n{script}\n</body></html>\n")


def _json(value) -> str:
    """JSON safe to put inside a <script> element."""
    text = json.dumps(value, allow_nan=False, default=_finite)
    return text.replace("</", "<\\/")


def _finite(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot encode {type(value).__name__}")

