"""Trajectory files read back and drawn: the contour with the optimization path on it.

A trajectory file (:func:`depthscape.analysis.trajectory.compute_trajectory`) is a loss
surface over the path's two principal directions plus the path itself; this module reads
it (:func:`read_trajectory`), draws it on an axis (:func:`draw_trajectory`) and writes the
figures of one run (:func:`plot_trajectory`) or of runs side by side
(:func:`plot_trajectory_pair`), the explained variance in the axis labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from depthscape.analysis.landscape.plots import CMAP, surface_values
from depthscape.analysis.landscape.storage import read_state
from depthscape.analysis.landscape.surface import read_surface
from depthscape.core.atomic import save_figure
from depthscape.core.errors import UserError


def read_trajectory(surface_file: str | os.PathLike) -> dict:
    """A trajectory file as arrays: :func:`read_surface`'s keys plus ``path`` (k, 2),
    ``steps``, ``explained_variance`` and ``explained_variance_ratio``."""
    surface = read_surface(surface_file)
    extra = read_state(surface_file, with_directions=False).extra
    if "path_x" not in extra:
        raise UserError(f"{surface_file} is a loss surface without a trajectory")
    surface.update(path=np.stack([extra["path_x"], extra["path_y"]], axis=1),
                   steps=extra["path_steps"], explained_variance=extra["explained_variance"],
                   explained_variance_ratio=extra["explained_variance_ratio"])
    return surface


def draw_trajectory(ax, trajectory: dict, log_scale: bool = True, levels: int = 25,
                    colorbar: bool = True):
    """Draw the contour of ``trajectory`` (from :func:`read_trajectory`) and its path on ``ax``."""
    values = surface_values(trajectory, "loss", log_scale)
    x, y = np.meshgrid(trajectory["x"], trajectory["y"])
    low, high = float(values.min()), float(values.max())
    contour = ax.contour(x, y, values, levels=np.linspace(low, high if high > low else low + 1e-9,
                                                          levels), cmap=CMAP)
    ax.clabel(contour, inline=True, fontsize=6, fmt="%.2g")
    path = trajectory["path"]
    ax.plot(path[:, 0], path[:, 1], "-o", color="tab:red", markersize=3, linewidth=1.2)
    ax.plot(path[0, 0], path[0, 1], "s", color="tab:red", markersize=6, label="start")
    ax.plot(path[-1, 0], path[-1, 1], "*", color="black", markersize=10, label="final weights")
    ratio = trajectory["explained_variance_ratio"]
    ax.set_xlabel(f"1st PC: {100 * ratio[0]:.2f} %")
    ax.set_ylabel(f"2nd PC: {100 * ratio[1]:.2f} %")
    ax.legend(loc="best", fontsize=7)
    if colorbar:
        label = f"{'log10 ' if log_scale else ''}{trajectory['split']} loss"
        ax.figure.colorbar(contour, ax=ax, label=label)
    return contour


def plot_trajectory(surface_file: str | os.PathLike, out_dir: str | os.PathLike,
                    log_scale: bool = True, levels: int = 25,
                    formats=("png", "pdf")) -> list[Path]:
    """The contour with the path drawn on it, as ``<stem>_path.<png|pdf>``; returns the files."""
    # deferred on purpose: matplotlib is slow to import and only figures need it
    from matplotlib.figure import Figure

    trajectory = read_trajectory(surface_file)
    if not trajectory["complete"]:
        raise UserError(f"{surface_file} is not finished: run the same trajectory command again")
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    draw_trajectory(ax, trajectory, log_scale, levels)
    settings = trajectory["settings"]
    ax.set_title(f"{settings.get('model')}: optimization path ({len(trajectory['steps'])} snapshots)")
    return save_figure(fig, Path(out_dir) / f"{Path(surface_file).stem}_path", formats)


def plot_trajectory_pair(surface_files, stem: str | os.PathLike, titles=None, log_scale: bool = True,
                         formats=("png", "pdf")) -> list[Path]:
    """Trajectories side by side in one figure (e.g. ResNet | PlainNet of one depth)."""
    # deferred on purpose: matplotlib is slow to import and only figures need it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0 * len(surface_files), 5.0), layout="constrained")
    for index, surface_file in enumerate(surface_files):
        trajectory = read_trajectory(surface_file)
        ax = fig.add_subplot(1, len(surface_files), index + 1)
        draw_trajectory(ax, trajectory, log_scale)
        title = titles[index] if titles else str(trajectory["settings"].get("model"))
        ax.set_title(f"{title}: {len(trajectory['steps'])} snapshots", fontsize=10)
    return save_figure(fig, stem, formats)
