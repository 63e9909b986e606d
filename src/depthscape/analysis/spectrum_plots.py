"""Figures of the Hessian's spectrum: eigenvalue densities on a log axis, and their bulk.

Each figure has two panels: the whole spectrum (the outliers marked) and the bulk alone,
the central 90 % of the quadrature weight widened by its width on each side, with the
negative-curvature threshold and the mass below it stated in the legend with its interval
over the runs. The densities are :class:`~depthscape.analysis.density.SpectralDensity`
objects (not imported here: the density imports this module for its ``plot``).
"""

from __future__ import annotations

from collections.abc import Sequence

from depthscape.analysis.broadening import NEGATIVE_EPS
from depthscape.core.atomic import save_figure_file


def _label(label: str, density) -> str:
    negative = density.negative_mass()
    share = (f"{100 * negative.value:.2g} %" if negative.runs < 2 else
             f"{100 * negative.value:.2g} ± {100 * negative.ci:.2g} %")
    return (f"{label}: sigma {density.sigma:.3g} ({density.broadening}); "
            f"{share} below {density.negative_threshold():.3g}")


def _window(densities) -> tuple[float, float]:
    """The bulks' union, widened by the widest bulk's width on each side."""
    bulks = [d.bulk() for _, d in densities]
    low, high = min(b[0] for b in bulks), max(b[1] for b in bulks)
    width = max(b[1] - b[0] for b in bulks)
    return low - width, high + width


def _draw(ax, densities, window, floor: float, log_scale: bool, legend: bool) -> None:
    shown = [(label, d, [(x, v) for x, v in zip(d.grid, d.density)
                         if window is None or window[0] <= x <= window[1]])
             for label, d in densities]
    peak = max((max(v for _, v in points) for _, _, points in shown if points), default=1.0)
    for label, density, points in shown:
        xs = [x for x, _ in points]
        values = [max(v, floor * peak) if log_scale else v for _, v in points]
        line, = ax.plot(xs, values, linewidth=1.0, label=_label(label, density) if legend
                        else None)
        threshold = density.negative_threshold()
        if window is not None and window[0] <= threshold:
            ax.axvline(threshold, color=line.get_color(), linestyle=":", linewidth=0.8)
        outliers = [t for t in density.outliers()
                    if window is None or window[0] <= t <= window[1]]
        if outliers and window is None:
            ax.plot(outliers, [1.4 * peak if log_scale else 1.04 * peak] * len(outliers),
                    "v", color=line.get_color(), markersize=5)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(floor * peak, 2 * peak)
    if window is not None:
        ax.set_xlim(*window)
    ax.set_xlabel("Eigenvalue")
    ax.grid(True, which="major", alpha=0.3)


def density_figure(densities: Sequence[tuple[str, object]], title: str | None = None,
                   floor: float = 1e-7, log_scale: bool = True, bulk_floor: float = 1e-4):
    """A matplotlib ``Figure`` (not shown, not saved) of ``(label, density)`` pairs.

    Left: every eigenvalue, on a log-density axis as Ghorbani et al. and PyHessian draw it
    (values under ``floor`` times the highest peak cut off: a log axis cannot show 0), the
    outliers (nodes 10 bulk widths beyond the bulk) marked with triangles. Right: the bulk
    (its central 90 % widened by its width on each side; ``bulk_floor`` of its peak), the
    threshold ``-NEGATIVE_EPS |lambda|_max`` dotted and, in the legend, each density's sigma, its
    rule and the share of the eigenvalues below the threshold with its 95 % Student-t
    interval over the Lanczos runs. ``log_scale=False``: linear density axes.
    """
    # deferred on purpose: matplotlib is slow to import and only figures need it
    from matplotlib.figure import Figure

    drawn = [(label, d) for label, d in densities if d.density]
    fig = Figure(figsize=(11.0, 4.2))
    whole, bulk = fig.subplots(1, 2)
    if drawn:
        _draw(whole, drawn, None, floor, log_scale, legend=False)
        _draw(bulk, drawn, _window(drawn), bulk_floor, log_scale, legend=True)
        low, high = _window(drawn)
        whole.axvspan(low, high, color="0.85", alpha=0.5, linewidth=0)
        bulk.legend(fontsize="x-small", loc="upper right")
    whole.set_ylabel("Density (log scale)" if log_scale else "Density")
    whole.set_title("whole spectrum (▼ outliers; grey: the bulk panel)", fontsize="small")
    dotted = drawn and any(_window(drawn)[0] <= d.negative_threshold() for _, d in drawn)
    bulk.set_title("the bulk" + (f" (dotted: -{NEGATIVE_EPS:g} |λ|max)" if dotted else ""),
                   fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_densities(densities: Sequence[tuple[str, object]], path, title: str | None = None,
                   floor: float = 1e-7, log_scale: bool = True):
    """Write :func:`density_figure` of ``densities`` to ``path`` (its suffix picks the
    format); returns the path."""
    return save_figure_file(density_figure(densities, title, floor, log_scale), path, dpi=150)
