"""Pictures of a surface file: contours, heatmap, 3-D surface, 1-D curve, VTK and HTML.

Every picture is drawn with matplotlib's object API (no pyplot state, no display needed)
and saved as PNG and PDF through a temporary file and a rename. Colours: ``viridis``,
so darker means lower loss (as the spec's figures). Options shared by all kinds:

* ``quantity``: ``loss`` (default) or ``acc``;
* ``log_scale``: plot ``log10(loss)``;
* ``zmin`` / ``zmax``: clip the values to this range before plotting (a few huge losses
  at the grid's edge otherwise flatten the basin);
* ``levels``: the number of contour levels, or the levels themselves;
* ``smooth``: the width (standard deviation, in grid cells) of a Gaussian blur applied
  before drawing, for the spec's smoothed contours; 0 draws the values as computed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from depthscape.analysis.landscape.surface import read_surface
from depthscape.core.atomic import atomic_write_text, save_figure
from depthscape.core.errors import UserError

KINDS_2D = ("contour", "contourf", "heatmap", "surface3d", "vtp", "html")
KINDS_1D = ("curve", "html")
FORMATS = ("png", "pdf")
CMAP = "viridis"  # dark = low


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """``values`` blurred by a Gaussian of standard deviation ``sigma`` cells (edges reflected)."""
    if sigma <= 0:
        return values
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(values, dtype=np.float64)
    for axis in range(out.ndim):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(out.ndim)],
                        mode="reflect" if out.shape[axis] > radius else "edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return out


def surface_values(surface: dict, quantity: str = "loss", log_scale: bool = False,
                   zmin: float | None = None, zmax: float | None = None, smooth: float = 0.0
                   ) -> np.ndarray:
    """The array to draw: ``quantity`` of a read surface, clipped, smoothed, maybe log10."""
    if quantity not in ("loss", "acc"):
        raise UserError(f"quantity must be loss or acc, got {quantity!r}")
    if log_scale and quantity != "loss":
        raise UserError("a log scale applies to the loss only")
    values = np.array(surface[quantity], dtype=np.float64)
    values[~np.isfinite(values)] = np.nanmax(values[np.isfinite(values)]) if np.isfinite(values).any() \
        else 0.0
    if zmin is not None or zmax is not None:
        values = np.clip(values, zmin, zmax)
    values = gaussian_smooth(values, smooth)
    if log_scale:
        values = np.log10(np.maximum(values, 1e-12))
    return values


def _label(quantity: str, log_scale: bool, split: str) -> str:
    name = f"{split} {'loss' if quantity == 'loss' else 'accuracy (%)'}"
    return f"log10 {name}" if log_scale else name


def _title(surface: dict) -> str:
    s = surface["settings"]
    if s.get("direction") == "interpolation":
        return f"{s.get('model')}: line to {Path(str(s.get('target'))).name}"
    if s.get("direction") not in (None, "random"):  # given ones (the API's, a trajectory's PCA)
        return f"{s.get('model')}, {s.get('direction')} directions"
    return f"{s.get('model')}, {s.get('norm')}-normalised directions, seed {s.get('seed')}"


def _levels(values: np.ndarray, levels: int | Sequence[float]) -> np.ndarray:
    if isinstance(levels, int):
        low, high = float(np.min(values)), float(np.max(values))
        if high <= low:
            high = low + 1e-9
        return np.linspace(low, high, max(2, levels))
    return np.asarray(sorted(levels), dtype=np.float64)


def _figure(three_d: bool = False):
    # deferred on purpose: matplotlib is slow to import and only figures need it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot(projection="3d") if three_d else fig.add_subplot()
    return fig, ax


def plot_landscape(surface_file: str | os.PathLike, out_dir: str | os.PathLike,
                   kinds: Sequence[str] | None = None, log_scale: bool = False,
                   quantity: str = "loss", levels: int | Sequence[float] = 30,
                   zmin: float | None = None, zmax: float | None = None, smooth: float = 0.0,
                   formats: Sequence[str] = FORMATS) -> list[Path]:
    """Draw the surface in ``surface_file`` into ``out_dir``; returns the files written.

    ``kinds`` defaults to every kind the surface allows: for a 2-D surface ``contour``
    (lines, the spec's figure), ``contourf`` (filled), ``heatmap``, ``surface3d``, ``vtp``
    (ParaView) and ``html`` (interactive, plotly.js inline); for a 1-D one ``curve``
    (loss and accuracy) and ``html``. Files are named
    ``<surface stem>_<quantity>[_log]_<kind>.<png|pdf|vtp|html>``.
    """
    surface = read_surface(surface_file)
    if not surface["complete"]:
        done, total = int(surface["done"].sum()), surface["done"].size
        raise UserError(f"{surface_file} is not finished ({done} of {total} points): run the same "
                        "landscape command again to complete it")
    allowed = KINDS_2D if surface["dims"] == 2 else KINDS_1D
    kinds = list(allowed if kinds is None else kinds)
    for kind in kinds:
        if kind not in allowed:
            raise UserError(f"plot kind {kind!r} does not fit a {surface['dims']}-D surface: "
                            f"choose from {', '.join(allowed)}")
    for fmt in formats:
        if fmt not in ("png", "pdf", "svg"):
            raise UserError(f"unknown image format {fmt!r}: use png, pdf or svg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(surface_file).stem}_{quantity}{'_log' if log_scale else ''}"
    values = surface_values(surface, quantity, log_scale, zmin, zmax, smooth)
    label = _label(quantity, log_scale, surface["split"])
    written: list[Path] = []
    for kind in kinds:
        base = out_dir / f"{stem}_{kind}"
        if kind == "vtp":
            written.append(export_vtp(surface_file, base.with_name(base.name + ".vtp"), quantity,
                                      log_scale, zmin, zmax, smooth))
        elif kind == "html":
            written.append(write_interactive_html(surface_file, base.with_name(base.name + ".html"),
                                                  quantity, log_scale, zmin, zmax, smooth))
        else:
            fig = _DRAW[kind](surface, values, label, levels)
            written += save_figure(fig, base, formats, dpi=150)
    return written


def draw_figure(surface: dict, kind: str | None = None, quantity: str = "loss",
                log_scale: bool = False, levels: int | Sequence[float] = 30,
                zmin: float | None = None, zmax: float | None = None, smooth: float = 0.0):
    """One picture of a read surface (the dict :func:`read_surface` returns) as a matplotlib
    ``Figure``, unsaved: ``kind`` is ``contour`` (default for 2-D), ``contourf``,
    ``heatmap``, ``surface3d`` or ``curve`` (1-D, the default there); the other options
    as :func:`plot_landscape`'s."""
    drawable = [k for k in (KINDS_2D if surface["dims"] == 2 else KINDS_1D) if k in _DRAW]
    kind = kind or drawable[0]
    if kind not in drawable:
        raise UserError(f"plot kind {kind!r} does not fit a {surface['dims']}-D surface as a "
                        f"figure: choose from {', '.join(drawable)}")
    if not np.isfinite(np.asarray(surface[quantity], dtype=np.float64)).any():
        raise UserError(f"the surface has no {quantity} values to draw")
    values = surface_values(surface, quantity, log_scale, zmin, zmax, smooth)
    return _DRAW[kind](surface, values, _label(quantity, log_scale, surface["split"]), levels)


def _draw_contour(surface, values, label, levels):
    fig, ax = _figure()
    x, y = np.meshgrid(surface["x"], surface["y"])
    lines = ax.contour(x, y, values, levels=_levels(values, levels), cmap=CMAP, linewidths=1.0)
    ax.clabel(lines, inline=True, fontsize=7, fmt="%.3g")
    ax.plot([0], [0], marker="*", color="black", markersize=8, linestyle="none")
    fig.colorbar(lines, ax=ax, label=label)
    _axes_labels(ax, surface)
    return fig


def _draw_contourf(surface, values, label, levels):
    fig, ax = _figure()
    x, y = np.meshgrid(surface["x"], surface["y"])
    filled = ax.contourf(x, y, values, levels=_levels(values, levels), cmap=CMAP)
    ax.contour(x, y, values, levels=filled.levels, colors="white", linewidths=0.3, alpha=0.5)
    ax.plot([0], [0], marker="*", color="white", markersize=8, linestyle="none")
    fig.colorbar(filled, ax=ax, label=label)
    _axes_labels(ax, surface)
    return fig


def _draw_heatmap(surface, values, label, levels):
    fig, ax = _figure()
    x, y = surface["x"], surface["y"]
    image = ax.imshow(values, origin="lower", cmap=CMAP, aspect="auto", interpolation="nearest",
                      extent=(x[0], x[-1], y[0], y[-1]))
    fig.colorbar(image, ax=ax, label=label)
    _axes_labels(ax, surface)
    return fig


def _draw_surface3d(surface, values, label, levels):
    fig, ax = _figure(three_d=True)
    x, y = np.meshgrid(surface["x"], surface["y"])
    drawn = ax.plot_surface(x, y, values, cmap=CMAP, linewidth=0, antialiased=True,
                            rstride=1, cstride=1)
    fig.colorbar(drawn, ax=ax, shrink=0.6, pad=0.1, label=label)
    ax.set_xlabel("alpha (direction 1)")
    ax.set_ylabel("beta (direction 2)")
    ax.set_zlabel(label)
    ax.set_title(_title(surface), fontsize=9)
    return fig


def _draw_curve(surface, values, label, levels):
    fig, ax = _figure()
    x = surface["x"]
    line = surface["settings"].get("direction") == "interpolation"
    ax.plot(x, values, color="tab:blue", marker="." if len(x) <= 60 else None, label=label)
    ax.set_ylabel(label, color="tab:blue")
    if label.endswith("loss") and np.isfinite(surface["acc"]).any():  # a loss with an accuracy
        other = ax.twinx()
        other.plot(x, surface["acc"], color="tab:red", linestyle="--", label="accuracy (%)")
        other.set_ylabel(f"{surface['split']} accuracy (%)", color="tab:red")
    ax.set_xlabel("t (0 = checkpoint, 1 = target)" if line else "alpha (direction 1)")
    ax.set_title(_title(surface), fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _axes_labels(ax, surface):
    ax.set_xlabel("alpha (direction 1)")
    ax.set_ylabel("beta (direction 2)")
    ax.set_title(_title(surface), fontsize=9)
    x, y = surface["x"], surface["y"]
    if np.isclose(x[-1] - x[0], y[-1] - y[0]):
        ax.set_aspect("equal")


_DRAW = {"contour": _draw_contour, "contourf": _draw_contourf, "heatmap": _draw_heatmap,
         "surface3d": _draw_surface3d, "curve": _draw_curve}


def export_vtp(surface_file: str | os.PathLike, vtp_path: str | os.PathLike,
               quantity: str = "loss", log_scale: bool = False, zmin: float | None = None,
               zmax: float | None = None, smooth: float = 0.0) -> Path:
    """Write a 2-D surface as VTK XML PolyData (``.vtp``) for ParaView, as the original's h52vtp.

    Points are ``(alpha, beta, value)``; one quad per grid cell; point data ``zvalue`` (the
    drawn value) and the raw ``loss`` and ``acc``; cell data the quad's mean ``zvalue``.
    """
    surface = read_surface(surface_file)
    if surface["dims"] != 2:
        raise UserError("a .vtp export needs a 2-D surface")
    z = surface_values(surface, quantity, log_scale, zmin, zmax, smooth)
    ny, nx = z.shape
    x, y = np.meshgrid(surface["x"], surface["y"])
    points = np.column_stack([x.ravel(), y.ravel(), z.ravel()])
    rows, cols = np.meshgrid(np.arange(ny - 1), np.arange(nx - 1), indexing="ij")
    first = (rows * nx + cols).ravel()
    quads = np.column_stack([first, first + 1, first + nx + 1, first + nx])
    cell_values = z.ravel()[quads].mean(axis=1)

    def array(name, values, kind="Float32", components=1):
        flat = " ".join(f"{v:.9g}" if kind.startswith("Float") else str(int(v))
                        for v in np.asarray(values).ravel())
        return (f'        <DataArray type="{kind}" Name="{name}" NumberOfComponents="{components}" '
                f'format="ascii">\n          {flat}\n        </DataArray>\n')

    text = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
        "  <PolyData>\n"
        f'    <Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="0" '
        f'NumberOfStrips="0" NumberOfPolys="{len(quads)}">\n'
        '      <PointData Scalars="zvalue">\n'
        + array("zvalue", z) + array("loss", surface["loss"]) + array("acc", surface["acc"])
        + "      </PointData>\n"
        '      <CellData Scalars="averaged zvalue">\n'
        + array("averaged zvalue", cell_values)
        + "      </CellData>\n"
        "      <Points>\n" + array("Points", points, components=3) + "      </Points>\n"
        "      <Polys>\n"
        + array("connectivity", quads, kind="Int64")
        + array("offsets", 4 * np.arange(1, len(quads) + 1), kind="Int64")
        + "      </Polys>\n"
        "    </Piece>\n"
        "  </PolyData>\n"
        "</VTKFile>\n"
    )
    vtp_path = Path(vtp_path)
    atomic_write_text(vtp_path, text)
    return vtp_path


def write_interactive_html(surface_file: str | os.PathLike, html_path: str | os.PathLike,
                           quantity: str = "loss", log_scale: bool = False,
                           zmin: float | None = None, zmax: float | None = None,
                           smooth: float = 0.0) -> Path:
    """A self-contained HTML page (plotly.js inline, works offline) a browser can rotate.

    A 3-D surface for a 2-D surface file, a line plot for a 1-D one.
    """
    # deferred on purpose: plotly loads only for the interactive HTML
    import plotly.graph_objects as go

    surface = read_surface(surface_file)
    values = surface_values(surface, quantity, log_scale, zmin, zmax, smooth)
    label = _label(quantity, log_scale, surface["split"])
    if surface["dims"] == 2:
        figure = go.Figure(go.Surface(x=surface["x"], y=surface["y"], z=values, colorscale="Viridis",
                                      colorbar={"title": {"text": label}}))
        figure.update_layout(scene={"xaxis_title": "alpha", "yaxis_title": "beta", "zaxis_title": label})
    else:
        figure = go.Figure(go.Scatter(x=surface["x"], y=values, mode="lines+markers", name=label))
        figure.update_layout(xaxis_title="alpha", yaxis_title=label)
    figure.update_layout(title={"text": _title(surface)}, template="plotly_white")
    html = figure.to_html(include_plotlyjs=True, full_html=True)
    html_path = Path(html_path)
    atomic_write_text(html_path, html)
    return html_path
