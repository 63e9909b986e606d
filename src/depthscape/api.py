"""The Python API: loss surfaces and Hessians of any ``nn.Module`` on any data.

``import depthscape as ds`` and::

    surface = ds.loss_surface(model, (inputs, targets), resolution=21)
    surface.plot("contour").savefig("surface.png")
    extremes = ds.hessian_extremes(model, (inputs, targets))

Every function runs the engine the command line runs (the same evaluator with its
verified BatchNorm folding, the same directions, the same HDF5 files and resume, the same
Lanczos), only on the caller's model and data instead of a depthscape checkpoint:

* ``model`` is any ``torch.nn.Module`` returning a tensor (wrap one that returns a dict or
  a tuple with :func:`select_output`). It is evaluated in eval mode on a copy: dropout is
  off and BatchNorm uses its running statistics; the caller's model is never changed.
* ``data`` is an ``(inputs, targets)`` pair of tensors, a ``torch.utils.data.Dataset`` of
  ``(input, target)`` items or a ``DataLoader``; it is collected into two tensors once.
* ``loss`` is any ``(outputs, targets) -> loss`` callable returning the batch's mean (or
  one value per sample): ``torch.nn.MSELoss()``, ``F.cross_entropy``, ... (default:
  cross-entropy). Accuracy is measured where the targets are class labels (integers, one
  per sample) and the outputs one score per class; otherwise it is None.

This is the package's top layer, beside ``depthscape.cli``: it imports from below only.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from torch import nn

from depthscape import __all__  # noqa: F401  (the one list of public names: the package's)
from depthscape.analysis import hessian as _hessian
from depthscape.analysis.hessian import EigenExtremes
from depthscape.analysis.landscape import directions as _directions
from depthscape.analysis.landscape.storage import SurfaceState, read_state, write_surface
from depthscape.analysis.landscape.surface import LandscapeConfig, compute_model_surface
from depthscape.core.data import Split
from depthscape.core.errors import UserError
from depthscape.core.runtime import resolve_precision, tf32_scope
from depthscape.core.trained import TrainedRun, load_trained_run

#: What ``data`` may be: a pair of tensors, a Dataset or a DataLoader of (input, target).
Data = Union[tuple[torch.Tensor, torch.Tensor], torch.utils.data.Dataset,
             torch.utils.data.DataLoader]
#: ``(outputs, targets) -> loss``: the batch's mean (a scalar) or one loss per sample.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: A direction in parameter space, keyed like ``model.state_dict()``.
Direction = dict[str, torch.Tensor]

#: The name the data is stored under in a surface file (``test_loss``, ``test_acc``): the
#: layout of the CLI's default split, which ``depthscape plot`` and the original tool read.
SPLIT = "test"


# ----------------------------------------------------------------------------- inputs


class SelectOutput(nn.Module):
    """``model`` with its output narrowed to one tensor: ``output[key]`` (a dict key or a
    tuple index), or ``key(output)`` when ``key`` is callable. See :func:`select_output`."""

    def __init__(self, model: nn.Module, key: Any):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, *args, **kwargs) -> torch.Tensor:
        output = self.model(*args, **kwargs)
        return self.key(output) if callable(self.key) else output[self.key]


def select_output(model: nn.Module, key: Any) -> nn.Module:
    """Wrap a model whose forward returns a dict or a tuple so that it returns one tensor.

    ``key`` is a dict key, a tuple index, or a callable ``output -> tensor``. The wrapper
    holds ``model`` as its submodule ``model``, so its state-dict names (and a direction's
    keys) gain the prefix ``model.``.

    Example::

        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 3)
        ...     def forward(self, x):
        ...         return {"logits": self.fc(x), "features": x}
        >>> wrapped = ds.select_output(Net(), "logits")
        >>> wrapped(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"select_output wraps an nn.Module, got {type(model).__name__}")
    return SelectOutput(model, key)


def _collect(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` as one ``(inputs, targets)`` pair of CPU tensors (a loader is read once)."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
    elif isinstance(data, (DataLoader, Dataset)):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=256)
        parts_x, parts_y = [], []
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise UserError("each batch of the data must be an (inputs, targets) pair, got "
                                f"{type(batch).__name__}")
            parts_x.append(torch.as_tensor(batch[0]))
            parts_y.append(torch.as_tensor(batch[1]))
        if not parts_x:
            raise UserError("the data holds no samples")
        inputs, targets = torch.cat(parts_x), torch.cat(parts_y)
    else:
        raise UserError("data must be an (inputs, targets) pair of tensors, a Dataset or a "
                        f"DataLoader, got {type(data).__name__}")
    if len(inputs) != len(targets):
        raise UserError(f"the data has {len(inputs)} inputs but {len(targets)} targets")
    if len(inputs) == 0:
        raise UserError("the data holds no samples")
    return inputs.detach().cpu(), targets.detach().cpu()


def _check_model(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _model_name(model: nn.Module) -> str:
    inner = model.model if isinstance(model, SelectOutput) else model
    return type(inner).__name__


def _loss_name(loss: LossFn | None) -> str:
    if loss is None:
        return "cross_entropy"
    if isinstance(loss, nn.Module):
        return repr(loss)
    return getattr(loss, "__qualname__", None) or type(loss).__name__


def _spans(span, dims: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(xrange, yrange)`` from one ``(min, max)`` (both axes) or a pair of them."""
    try:  # the lengths and the order are checked by LandscapeConfig.validate
        if len(span) == 2 and all(isinstance(s, Sequence) for s in span):
            xspan, yspan = (tuple(float(v) for v in s) for s in span)
        else:
            xspan = yspan = tuple(float(v) for v in span)
    except (TypeError, ValueError):
        raise UserError(f"span must be (min, max) or ((xmin, xmax), (ymin, ymax)), got {span!r}") \
            from None
    return xspan, (yspan if dims == 2 else (-1.0, 1.0))


# ----------------------------------------------------------------------------- surfaces


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
        """Read a surface file written by :meth:`save` or by ``depthscape landscape``.

        Example::

            >>> surface = ds.Surface.load("mine.h5")
            >>> surface.loss.shape
            (51, 51)
        """
        return cls(read_state(path), path)

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
        from depthscape.analysis.landscape.plots import draw_figure

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
    _check_model(model)
    return _directions.random_directions(model, count, seed, norm)


def _surface(model: nn.Module, data: Data, *, dims: int, resolution: int, span, loss,
             seed: int, norm: str, device, precision: str, output, progress: bool,
             batch_size: int, overwrite: bool, directions=None, target=None,
             target_name: str | None = None) -> Surface:
    """The one path every surface of the API takes (the CLI's ``--model-from`` path)."""
    _check_model(model)
    xspan, yspan = _spans(span, dims)
    config = LandscapeConfig(resolution=int(resolution), xrange=xspan, yrange=yspan, seed=seed,
                             norm=norm, batch_size=int(batch_size), device=device, dims=dims,
                             precision=precision, split=SPLIT).validate()
    inputs, targets = _collect(data)
    state, path = compute_model_surface(
        model, Split(inputs, targets), config, loss_fn=loss, loss_name=_loss_name(loss),
        model_name=_model_name(model), directions=directions, target_state=target,
        output=output, info={"source": "python api", "target": target_name},
        overwrite=overwrite, progress=progress)
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
    _check_model(model_b)
    return _surface(model_a, data, dims=1, resolution=resolution, span=span, loss=loss, seed=0,
                    norm="filter", device=device, precision=precision, output=output,
                    progress=progress, batch_size=batch_size, overwrite=overwrite,
                    target=model_b.state_dict(), target_name=_model_name(model_b))


# ----------------------------------------------------------------------------- Hessians


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of the Hessian's trace (unpacks as the 4-tuple it is)."""

    trace: float
    stderr: float  # the standard error of the mean over the probes
    samples: int  # probes (Hessian-vector products) used
    converged: bool  # the standard error fell under tol * |trace|


@contextlib.contextmanager
def _operator(model: nn.Module, data: Data, loss: LossFn | None, batch_size: int, device,
              precision: str):
    """A :class:`HessianOperator` on a copy of ``model`` in eval mode, on the device."""
    from depthscape.core.device import get_device

    _check_model(model)
    device = get_device(str(device) if device is not None else None)
    precision, _ = resolve_precision(precision, device)
    inputs, targets = _collect(data)
    network = copy.deepcopy(model).to(device).eval()
    if loss is None:
        summed = None  # the operator's own: summed cross-entropy
    else:
        def summed(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            value = loss(outputs, y)
            return value.sum() if value.dim() else value * len(y)
    with tf32_scope(precision == "tf32"):
        yield _hessian.HessianOperator(network, inputs.to(device), targets.to(device),
                                       batch_size, summed, precision)


def hessian_extremes(model: nn.Module, data: Data, *, loss: LossFn | None = None,
                     iters: int = 20, tol: float = 1e-3, seed: int = 0, batch_size: int = 500,
                     device: str | torch.device | None = None, precision: str = "fp32"
                     ) -> EigenExtremes:
    """The largest and the smallest eigenvalue of the Hessian of the mean loss on ``data``.

    By the Lanczos method on exact Hessian-vector products (the CLI's ``sharpness``): at
    most ``iters`` products, stopping when both ends move by less than ``tol`` (relative).
    The Hessian is taken with respect to every parameter that requires grad, with the
    model in eval mode (dropout off, BatchNorm on its running statistics, never folded),
    on a copy. ``batch_size`` cuts the data into chunks (the values do not depend on it up
    to rounding). Returns an :class:`EigenExtremes` (``.largest``, ``.smallest``, ``.ratio``
    = ``|smallest / largest|``, ``.iterations``, ``.converged`` and per-end details).

    Example::

        >>> ends = ds.hessian_extremes(model, data, iters=30)
        >>> ends.largest, ends.smallest, ends.converged
    """
    with _operator(model, data, loss, batch_size, device, precision) as operator:
        return _hessian.extreme_eigenvalues(operator, operator.params, iters, tol, seed)


def hessian_trace(model: nn.Module, data: Data, *, loss: LossFn | None = None,
                  samples: int = 50, tol: float = 1e-2, min_samples: int = 5, seed: int = 0,
                  batch_size: int = 500, device: str | torch.device | None = None,
                  precision: str = "fp32") -> TraceEstimate:
    """Hutchinson's estimate of the trace of the Hessian of the mean loss on ``data``.

    The mean of ``v^T H v`` over up to ``samples`` Rademacher probes ``v``, stopping once at
    least ``min_samples`` give a standard error under ``tol * |trace|``. The model is
    treated as in :func:`hessian_extremes`. Returns a :class:`TraceEstimate`
    ``(trace, stderr, samples, converged)``.

    Example::

        >>> estimate = ds.hessian_trace(model, data, samples=100)
        >>> estimate.trace, estimate.stderr
    """
    with _operator(model, data, loss, batch_size, device, precision) as operator:
        return TraceEstimate(*_hessian.hessian_trace(operator, operator.params, samples, tol,
                                                     min_samples, seed))


# ----------------------------------------------------------------------------- runs


def load_run(path: str | os.PathLike, *, device: str | torch.device | None = None
             ) -> TrainedRun:
    """A run depthscape trained (its checkpoint file), to measure with this API.

    Returns a :class:`~depthscape.core.trained.TrainedRun`: ``.model`` (eval mode, on
    ``device``, default the CPU), ``.model_name``, ``.recipe``, ``.preprocess`` and the data
    it was trained on, ``.train`` and ``.test`` (uint8 images and labels: the model reads
    ``.preprocess.normalize(images)``).

    Example::

        >>> run = ds.load_run("runs/resnet-20_cifar10/models/resnet-20_cifar10.pth")
        >>> data = (run.preprocess.normalize(run.test.images), run.test.labels)
        >>> surface = ds.loss_surface(run.model, data, resolution=21)
    """
    return load_trained_run(path, device=device)
