"""Gradient flow figures from the layer files training writes (``logs/<run>_layers.csv``,
:mod:`depthscape.training.layerstats`): where in depth the gradients are large or small.

For each run a heatmap of ``log10`` gradient norm, layer (depth, input at the top) against
iteration; and beside them one profile panel: the gradient norm against relative depth
(layer index / last index) at a few iterations (the first log row, the last row before each
learning-rate decay, the end), every run drawn on it, so ResNet-D and PlainNet-D compare on
one figure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depthscape.analysis.curves import _pyplot, display_name
from depthscape.core.atomic import save_figure
from depthscape.core.csvlog import DamagedLog, read_log
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name

_TEXT = ("layer", "stage")


@dataclass
class LayerFlow:
    """One run's layer file as arrays: ``grad``, ``weight``, ``ratio`` are (iterations, layers)."""

    label: str
    run_name: str
    iterations: np.ndarray
    layers: list[str]
    stages: list[str]
    grad: np.ndarray
    weight: np.ndarray
    ratio: np.ndarray
    milestones: tuple[int, ...] = ()  # the run's learning-rate decays (its recipe's)

    def profile_iterations(self) -> list[int]:
        """The iterations the profile shows: first, the last before each decay, last."""
        its = [int(i) for i in self.iterations]
        chosen = [its[0]]
        for milestone in self.milestones:
            before = [i for i in its if i <= milestone]
            if before:
                chosen.append(before[-1])
        chosen.append(its[-1])
        return list(dict.fromkeys(chosen))


def layer_file_for(log_path: str | os.PathLike) -> Path:
    """The layer file beside a run's CSV log (``<run>_log.csv`` -> ``<run>_layers.csv``)."""
    path = Path(log_path)
    return path.with_name(path.name.removesuffix("_log.csv") + "_layers.csv")


def load_layer_flow(log_path: str | os.PathLike) -> LayerFlow:
    """The layer file of the run whose log is ``log_path``; a missing or damaged one is a
    one-line UserError."""
    log_path = Path(log_path)
    path = layer_file_for(log_path)
    run_name = log_path.name.removesuffix("_log.csv")
    if not path.is_file():
        raise UserError(f"{run_name} has no layer file ({path}): it was trained with "
                        "--no-layer-stats, or before depthscape recorded gradient flow")
    try:
        rows = read_log(path, text=_TEXT, repeats=True)
    except DamagedLog:
        raise
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the layer file {path}: {error}") from None
    if not rows:
        raise UserError(f"the layer file {path} holds no rows yet")
    iterations = sorted({int(r["iteration"]) for r in rows})
    count = len(rows) // len(iterations)
    if count * len(iterations) != len(rows) or count == 0:
        raise UserError(f"the layer file {path} is damaged: {len(rows)} rows do not make "
                        f"{len(iterations)} iterations of equal layer counts")
    table = {key: np.array([r[key] for r in rows], dtype=float).reshape(len(iterations), count)
             for key in ("grad_norm", "weight_norm", "update_ratio")}
    first = rows[:count]
    return LayerFlow(_label(run_name), run_name, np.array(iterations), [r["layer"] for r in first],
                     [r["stage"] for r in first], table["grad_norm"], table["weight_norm"],
                     table["update_ratio"], _milestones(log_path))


def _label(run_name: str) -> str:
    try:
        return display_name(canonical_name(run_name.split("_")[0]))
    except UserError:
        return run_name


def _milestones(log_path: Path) -> tuple[int, ...]:
    config = log_path.with_name(log_path.name.replace("_log.csv", "_config.json"))
    try:
        return tuple(int(m) for m in json.loads(config.read_text())["recipe"]["milestones"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def plot_layer_flows(flows: Sequence[LayerFlow], out_stem: str | os.PathLike,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """The heatmap of each run and the shared depth profile on one figure; returns the
    paths written (``<out_stem>.<fmt>``)."""
    plt = _pyplot()
    count = len(flows)
    fig, axes = plt.subplots(1, count + 1, figsize=(4.6 * (count + 1), 4.4), squeeze=False)
    axes = axes[0]
    low = min(float(np.nanmin(np.log10(np.maximum(f.grad, 1e-30)))) for f in flows)
    high = max(float(np.nanmax(np.log10(np.maximum(f.grad, 1e-30)))) for f in flows)
    image = None
    for ax, flow in zip(axes, flows):
        image = ax.imshow(np.log10(np.maximum(flow.grad.T, 1e-30)), aspect="auto",
                          origin="upper", cmap="viridis", vmin=low, vmax=high,
                          extent=(flow.iterations[0], flow.iterations[-1], len(flow.layers) - 0.5,
                                  -0.5), interpolation="nearest")
        ax.set_title(f"{flow.label}: log10 gradient norm")
        ax.set_xlabel("iteration")
        ax.set_ylabel("layer (input at the top)")
    fig.colorbar(image, ax=list(axes[:count]), shrink=0.85)
    profile = axes[-1]
    styles = ["-", "--", ":", "-."]
    for k, flow in enumerate(flows):
        depth = np.arange(len(flow.layers)) / max(1, len(flow.layers) - 1)
        shown = flow.profile_iterations()
        colours = plt.cm.plasma(np.linspace(0.0, 0.85, len(shown)))
        for colour, iteration in zip(colours, shown):
            row = int(np.searchsorted(flow.iterations, iteration))
            profile.semilogy(depth, flow.grad[row], styles[k % len(styles)], color=colour,
                             linewidth=1.2, label=f"{flow.label}, it. {iteration}")
    profile.set_xlabel("relative depth (layer / last layer)")
    profile.set_ylabel("gradient norm (mean over the log row's steps)")
    profile.set_title("gradient norm against depth")
    profile.grid(alpha=0.3, which="both")
    profile.legend(fontsize="x-small")
    fig.suptitle("Gradient flow: " + " vs ".join(f.label for f in flows))
    try:
        return save_figure(fig, out_stem, formats, dpi=120)
    finally:
        plt.close(fig)
