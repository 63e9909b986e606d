"""Figures of the Hessian's spectrum: eigenvalue densities on a log axis."""

from __future__ import annotations

from collections.abc import Sequence

from depthscape.analysis.spectrum import SpectralDensity
from depthscape.core.atomic import save_figure_file


def plot_densities(densities: Sequence[tuple[str, SpectralDensity]], path, title: str | None = None,
                   floor: float = 1e-7):
    """Draw the densities on one log-density axis (as Ghorbani et al. and PyHessian do).

    Values under ``floor`` times the highest peak are cut off (a log axis cannot show 0).
    Writes ``path`` (its suffix picks the format); returns the path.
    """
    # deferred on purpose: matplotlib is slow to import and only figures need it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    peak = max((max(d.density) for _, d in densities if d.density), default=1.0)
    for label, density in densities:
        if not density.density:
            continue
        values = [max(v, floor * peak) for v in density.density]
        ax.semilogy(density.grid, values, label=label, linewidth=1.0)
    ax.set_ylim(floor * peak, 2 * peak)
    ax.set_xlabel("Eigenvalue")
    ax.set_ylabel("Density (log scale)")
    if title:
        ax.set_title(title)
    if len(densities) > 1:
        ax.legend(fontsize="small")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    try:
        return save_figure_file(fig, path, dpi=150)
    finally:
        plt.close(fig)
