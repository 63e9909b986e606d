"""The Hessian of any model's loss: its extreme eigenvalues and its trace (the CLI's
``depthscape sharpness``)."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from depthscape.analysis import hessian as _hessian
from depthscape.analysis.hessian import EigenExtremes
from depthscape.api._inputs import Data, LossFn, check_in, check_model, collect
from depthscape.core.device import get_device
from depthscape.core.plugins import copy_model
from depthscape.core.runtime import resolve_precision


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
    check_model(model)
    device = get_device(str(device) if device is not None else None)
    precision = resolve_precision(precision, device, backward=True)
    inputs, targets = collect(data)
    network = copy_model(model).to(device).eval()
    if loss is None:
        summed = None  # the operator's own: summed cross-entropy
    else:
        def summed(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            value = loss(outputs, y)
            return value.sum() if value.dim() else value * len(y)
    # the operator sets the TF32 switches as the precision says around each product
    yield _hessian.HessianOperator(network, inputs.to(device), targets.to(device),
                                   batch_size, summed, precision)


def hessian_extremes(model: nn.Module, data: Data, *, loss: LossFn | None = None,
                     iters: int = 20, tol: float = 1e-3, seed: int = 0, batch_size: int = 500,
                     device: str | torch.device | None = None, precision: str = "fp32"
                     ) -> EigenExtremes:
    """The largest and the smallest eigenvalue of the Hessian of the mean loss on ``data``.

    By the Lanczos method on exact Hessian-vector products (the CLI's ``sharpness``): at
    most ``iters`` products, stopping when each end is converged: its residual bound under
    ``tol`` times its own magnitude (floor: 1e-3 of the largest), now and 5 steps before
    (:func:`depthscape.analysis.hessian.ritz_converged`). Its ``repr`` marks an end that is
    not converged with a dagger.
    The Hessian is taken with respect to every parameter that requires grad, with the
    model in eval mode (dropout off, BatchNorm on its running statistics, never folded),
    on a copy. ``batch_size`` cuts the data into chunks (the values do not depend on it up
    to rounding). Returns an :class:`EigenExtremes` (``.largest``, ``.smallest``, ``.ratio``
    = ``|smallest / largest|``, ``.iterations``, ``.converged`` and per-end details).

    Example::

        >>> ends = ds.hessian_extremes(model, data, iters=30)
        >>> ends.largest, ends.smallest, ends.converged
    """
    tol = check_in("tol", tol, 0.0, 1.0)  # --power-tol's range (and 0: every step), before work
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
    tol = check_in("tol", tol, 0.0, 1e3)  # --trace-tol's range (and 0: every probe), before work
    with _operator(model, data, loss, batch_size, device, precision) as operator:
        return TraceEstimate(*_hessian.hessian_trace(operator, operator.params, samples, tol,
                                                     min_samples, seed))
