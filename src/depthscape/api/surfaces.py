"""Loss surfaces of any model: :class:`Surface`, :func:`loss_surface`, :func:`interpolate`,
:func:`random_directions`; the engine is the CLI's (``depthscape landscape``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from depthscape.analysis.landscape import directions as _directions
from depthscape.analysis.landscape.plots import draw_figure
from depthscape.analysis.landscape.storage import SurfaceState, read_state, write_surface
from depthscape.analysis.landscape.surface import LandscapeConfig, surface_of
from depthscape.analysis.trajectory_plots import draw_trajectory
from depthscape.api._inputs import (
    SPLIT,
    Data,
    Direction,
    LossFn,
    check_model,
    model_name,
    spans,
    subject_of,
)
from depthscape.core.errors import UserError


class Surface:
    """A loss surface (or a 1-D curve): coordinates, values, directions and settings.

    * ``x`` (``(nx,)``), ``y`` (``(ny,)``; None for a curve): the coordinates along the
      directions; ``loss[j, i]`` is the mean loss at ``theta + x[i] d1 + y[j] d2``
      (``loss[i]`` for a curve), NaN where a point is not computed;
    * ``accuracy``: like ``loss``, in percent, or None where the loss has no accuracy;
    * ``directions``: the directions, x first, keyed like the model's state;
    * ``settings``: every setting (what decides the values and how they were computed);
    * ``path``: the file it was read from or last saved to (None if neither).

    ``save(path)`` writes the CLI's HDF5 layout (``depthscape plot`` draws it);
    ``Surface.load(path)`` reads one (also one the CLI wrote); ``plot(kind)`` draws it.
    """

    def __init__(self, state: SurfaceState, path: str | os.PathLike | None = None):
        self._state = state
        self.path = Path(path) if path is not None else None

    @property
    def x(self) -> np.ndarray:
        return self._state.xcoordinates

    @property
    def y(self) -> np.ndarray | None:
        return self._state.ycoordinates

    @property
    def loss(self) -> np.ndarray:
        return self._state.loss

    @property
    def accuracy(self) -> np.ndarray | None:
        acc = self._state.acc
        return acc if np.isfinite(acc).any() else None

    @property
    def directions(self) -> list[Direction]:
        return self._state.directions

    @property
    def settings(self) -> dict:
        return {**self._state.info, **self._state.identity}

    @property
    def dims(self) -> int:
        return self._state.dims

    @property
    def complete(self) -> bool:
        return self._state.complete

    def __repr__(self) -> str:
        shape = "x".join(str(n) for n in self.loss.shape)
        return (f"Surface({self.dims}-D, {shape} points, loss {np.nanmin(self.loss):.4g}.."
                f"{np.nanmax(self.loss):.4g}{', with accuracy' if self.accuracy is not None else ''})")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the surface to ``path`` (HDF5, atomically) in the layout of
        ``depthscape landscape``; returns the path.

        Example::

            >>> surface.save("mine.h5")        # then: depthscape plot mine.h5
            PosixPath('mine.h5')
        """
        self.path = write_surface(path, self._state)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Surface":
        """Read a surface file written by :meth:`save` or by ``depthscape landscape`` (a
        trajectory's, of :func:`depthscape.trajectory` or ``depthscape trajectory``, as a
        :class:`TrajectorySurface`).

        Example::

            >>> surface = ds.Surface.load("mine.h5")
            >>> surface.loss.shape
            (51, 51)
        """
        state = read_state(path)
        return (TrajectorySurface if "path_x" in state.extra else cls)(state, path)

    def _as_read(self) -> dict:
        """The dict :func:`depthscape.analysis.landscape.read_surface` gives, for the plots."""
        state = self._state
        return {"x": state.xcoordinates, "y": state.ycoordinates, "loss": state.loss,
                "acc": state.acc, "done": state.done, "split": state.split, "dims": state.dims,
                "complete": state.complete, "path": self.path, "settings": self.settings}

    def plot(self, kind: str | None = None, *, quantity: str = "loss", log_scale: bool = False,
             levels: int | Sequence[float] = 30, zmin: float | None = None,
             zmax: float | None = None, smooth: float = 0.0):
        """A matplotlib ``Figure`` of the surface (not shown, not saved).

        ``kind``: ``contour`` (the default for 2-D), ``contourf``, ``heatmap``, ``surface3d``;
        ``curve`` for 1-D (the default there). ``quantity`` is ``loss`` or ``acc``; the
        other options as ``depthscape plot``'s (``--log``, ``--levels``, ``--zmin``,
        ``--zmax``, ``--smooth``).

        Example::

            >>> fig = surface.plot("contour", zmax=10)
            >>> fig.savefig("contour.png")
        """
        return draw_figure(self._as_read(), kind, quantity, log_scale, levels, zmin, zmax, smooth)


def random_directions(model: nn.Module, count: int = 2, seed: int = 0, norm: str = "filter"
                      ) -> list[Direction]:
    """``count`` seeded Gaussian directions for ``model``, filter- or layer-normalised.

    Li et al.'s directions, exactly the CLI's: one Gaussian tensor per parameter with two or
    more dimensions, each output filter (``norm="filter"``) or whole tensor
    (``norm="layer"``) rescaled to the norm of the same filter/tensor of the weights;
    biases and BatchNorm parameters get zeros and BatchNorm's statistics are not in them.
    The same model, seed and norm give the same directions on every machine. Returns a list
    of dicts keyed like ``model.state_dict()`` (CPU, float32).

    Example::

        >>> d1, d2 = ds.random_directions(model, count=2, seed=0)
        >>> surface = ds.loss_surface(model, data, directions=[d1, d2])
    """
    check_model(model)
    return _directions.random_directions(model, count, seed, norm)


def _surface(model: nn.Module, data: Data, *, dims: int, resolution: int, span, loss,
             seed: int, norm: str, device, precision: str, output, progress: bool,
             batch_size: int, overwrite: bool, directions=None, target=None,
             target_name: str | None = None) -> Surface:
    """The one path every surface of the API takes (the CLI's ``--model-from`` path)."""
    check_model(model)
    xspan, yspan = spans(span, dims)
    config = LandscapeConfig(resolution=int(resolution), xrange=xspan, yrange=yspan, seed=seed,
                             norm=norm, batch_size=int(batch_size), device=device, dims=dims,
                             precision=precision, split=SPLIT).validate()
    subject = subject_of(model, data, loss)
    state, path = surface_of(subject, config, output, progress=progress, overwrite=overwrite,
                             directions=directions, target=target, target_name=target_name,
                             notify=progress)
    return Surface(state, path)


def loss_surface(model: nn.Module, data: Data, *,
                 directions: str | Sequence[Mapping[str, torch.Tensor]] = "random",
                 resolution: int = 51, span: Sequence = (-1.0, 1.0), dims: int = 2,
                 loss: LossFn | None = None, seed: int = 0, norm: str = "filter",
                 device: str | torch.device | None = None, precision: str = "fp32",
                 output: str | os.PathLike | None = None, progress: bool = True,
                 batch_size: int = 1000, overwrite: bool = False) -> Surface:
    """The loss of ``model`` on ``data`` over a grid around its weights: ``theta + a d1 + b d2``.

    ``directions``: ``"random"`` (seeded with ``seed``, normalised per ``norm``: see
    :func:`random_directions`) or ``dims`` direction dicts of your own (e.g. from
    :func:`random_directions` or two trained models' difference). ``resolution`` points
    per axis over ``span`` (one ``(min, max)`` for both axes or ``((xmin, xmax), (ymin,
    ymax))``); ``dims=1`` gives a curve along one direction. ``loss`` defaults to
    cross-entropy (see the module doc). ``device`` (default: a GPU if there is one) and
    ``precision`` (``fp32`` exact; ``tf32`` on CUDA; ``bf16``) as the CLI's ``--device`` and
    ``--precision``; ``batch_size`` (the CPU caps it at 128) changes the values' last digits.

    Every point is evaluated in eval mode on a copy of the model, with each BatchNorm that
    follows a convolution or linear layer folded into it where the fold reproduces the
    model's output (else unfolded). With ``output`` the surface is written to that HDF5 file
    as it goes (atomically, every few seconds): calling again with the same arguments
    continues an interrupted run and returns a finished one at once; a file computed with
    other settings is refused unless ``overwrite``. Under ``torchrun`` the points are dealt
    out to the ranks, as the CLI's are. Returns a :class:`Surface`.

    Example::

        >>> import depthscape as ds, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(10, 3))
        >>> data = (torch.randn(64, 10), torch.randint(0, 3, (64,)))
        >>> surface = ds.loss_surface(model, data, resolution=11, progress=False)
        >>> surface.loss.shape, surface.accuracy.shape
        ((11, 11), (11, 11))
    """
    if isinstance(directions, str):
        if directions != "random":
            raise UserError(f"directions must be 'random' or a list of direction dicts, got "
                            f"{directions!r}")
        given = None
    else:
        given = [dict(d) for d in directions]
    return _surface(model, data, dims=dims, resolution=resolution, span=span, loss=loss,
                    seed=seed, norm=norm, device=device, precision=precision, output=output,
                    progress=progress, batch_size=batch_size, overwrite=overwrite,
                    directions=given)


def interpolate(model_a: nn.Module, model_b: nn.Module, data: Data, *, resolution: int = 51,
                span: tuple[float, float] = (0.0, 1.0), loss: LossFn | None = None,
                device: str | torch.device | None = None, precision: str = "fp32",
                output: str | os.PathLike | None = None, progress: bool = True,
                batch_size: int = 1000, overwrite: bool = False) -> Surface:
    """The loss along the line from ``model_a`` (``x = 0``) to ``model_b`` (``x = 1``).

    Every floating-point entry of the state moves, BatchNorm's running statistics included,
    so the point ``x = 1`` *is* ``model_b`` (the CLI's ``landscape --target``). The two
    models must have the same architecture. ``span`` (default ``(0, 1)``) may reach past
    either end, e.g. ``(-0.5, 1.5)``. Other arguments as :func:`loss_surface`'s. Returns a
    1-D :class:`Surface`.

    Example::

        >>> line = ds.interpolate(model_at_init, trained_model, data, resolution=21)
        >>> line.plot("curve").savefig("line.png")
    """
    check_model(model_b)
    return _surface(model_a, data, dims=1, resolution=resolution, span=span, loss=loss, seed=0,
                    norm="filter", device=device, precision=precision, output=output,
                    progress=progress, batch_size=batch_size, overwrite=overwrite,
                    target=model_b.state_dict(), target_name=model_name(model_b))


class TrajectorySurface(Surface):
    """A :class:`Surface` over a path's two principal directions, with the path on it
    (:func:`depthscape.trajectory`, ``depthscape trajectory``).

    Besides the surface's attributes: ``points`` (``(k, 2)``: each snapshot's coordinates,
    the model's weights, the path's end, at ``(0, 0)``), ``steps`` (``(k,)``: each
    snapshot's training step, or its index in a list), ``explained_variance`` and
    ``explained_variance_ratio`` (``(2,)``: the path's variance along each direction, and
    its share). ``plot()`` draws the contour with the path (kind ``"path"``)."""

    @property
    def points(self) -> np.ndarray:
        extra = self._state.extra
        return np.stack([extra["path_x"], extra["path_y"]], axis=1)

    @property
    def steps(self) -> np.ndarray:
        return self._state.extra["path_steps"]

    @property
    def explained_variance(self) -> np.ndarray:
        return self._state.extra["explained_variance"]

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return self._state.extra["explained_variance_ratio"]

    def plot(self, kind: str | None = "path", *, log_scale: bool = True, levels: int = 25,
             **options):
        """The contour (log10 of the loss unless ``log_scale=False``) with the path drawn on
        it, a matplotlib ``Figure``; another ``kind`` draws the surface as
        :meth:`Surface.plot` does.

        Example::

            >>> ds.trajectory(snapshots, model, data).plot().savefig("path.png")
        """
        if kind != "path":
            return super().plot(kind, log_scale=log_scale, levels=levels, **options)
        # deferred on purpose: matplotlib is slow to import and only figures need it
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 5.2))
        draw_trajectory(fig.add_subplot(), {
            **self._as_read(), "path": self.points, "steps": self.steps,
            "explained_variance_ratio": self.explained_variance_ratio}, log_scale, levels)
        return fig
