"""The Hessian of any model's loss: its extreme eigenvalues, its top-k, its trace and its
whole eigenvalue density (the CLI's ``depthscape sharpness``, ``--top-k`` and ``--density``),
and per block (``--blocks``: :class:`~depthscape.analysis.blocks.BlockHessian`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from depthscape.analysis import hessian as _hessian
from depthscape.analysis.blocks import BlockHessian, block_hessian, by_name, partition
from depthscape.analysis.density import SpectralDensity, spectral_density
from depthscape.analysis.hessian import UNCONVERGED_MARK, EigenExtremes, hold_steps
from depthscape.analysis.spectrum import TopEigenvalues, top_eigenvalues
from depthscape.analysis.stats import CONFIDENCE, student_t_quantile
from depthscape.api._inputs import (
    Data,
    LossFn,
    check_count,
    check_in,
    check_model,
    collect,
    loss_name,
    model_name,
)
from depthscape.core.device import get_device
from depthscape.core.errors import UserError
from depthscape.core.plugins import copy_model
from depthscape.core.runtime import resolve_precision

#: What ``blocks`` takes: ``"layer"``, ``"stage"`` or layer and stage names (None: off).
Blocks = str | Sequence[str] | None


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of the Hessian's trace (unpacks as the 4-tuple it is)."""

    trace: float
    stderr: float  # the standard error of the mean over the probes
    samples: int  # probes (Hessian-vector products) used
    converged: bool  # the standard error fell under tol * |trace|

    @property
    def ci(self) -> float:
        """The half-width of the trace's two-sided 95 % Student-t interval over the probes,
        ``t(0.975, samples - 1) * stderr`` (nan for one probe)."""
        if self.samples < 2 or not math.isfinite(self.stderr):
            return math.nan
        return student_t_quantile(0.5 + CONFIDENCE / 2, self.samples - 1) * self.stderr

    @property
    def interval(self) -> tuple[float, float]:
        """``(trace - ci, trace + ci)``: the 95 % Student-t interval of the trace."""
        return self.trace - self.ci, self.trace + self.ci

    def __repr__(self) -> str:
        mark = "" if self.converged else UNCONVERGED_MARK
        return (f"TraceEstimate(trace={self.trace:.6g}{mark} ± {self.ci:.2g} (95 %), "
                f"stderr={self.stderr:.3g}, samples={self.samples}, "
                f"converged={self.converged})")


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
    operator = _hessian.HessianOperator(network, inputs.to(device), targets.to(device),
                                        batch_size, summed, precision)
    operator.check_curved()  # no second derivative: one line, before any product
    yield operator


def hessian_extremes(model: nn.Module, data: Data, *, loss: LossFn | None = None,
                     iters: int = 20, tol: float = 1e-3, seed: int = 0, batch_size: int = 500,
                     device: str | torch.device | None = None, precision: str = "fp32",
                     blocks: Blocks = None) -> EigenExtremes | BlockHessian:
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

    With ``blocks`` (``"stage"``, ``"layer"`` or a list of layer or stage names: the CLI's
    ``--blocks``) it returns a :class:`~depthscape.analysis.blocks.BlockHessian`: the
    extremes as ``.whole`` and one row per block with the largest eigenvalue of its diagonal
    block ``H_bb`` (Lanczos, at most ``iters`` more products per block).

    Example::

        >>> ends = ds.hessian_extremes(model, data, iters=30)
        >>> ends.largest, ends.smallest, ends.converged
        >>> ds.hessian_extremes(model, data, blocks="stage").rows  # lambda_max per stage
    """
    tol = check_in("tol", tol, 0.0, 1.0)  # --power-tol's range (and 0: every step), before work
    if blocks is not None:
        partition(model, blocks)  # an unknown name, one block ...: one line, before work
    with _operator(model, data, loss, batch_size, device, precision) as operator:
        ends = _hessian.extreme_eigenvalues(operator, operator.params, iters, tol, seed)
        if blocks is None:
            return ends
        return block_hessian(operator, partition(operator.model, blocks), by_name(blocks),
                             None, iters, tol, seed, whole=ends)


def hessian_trace(model: nn.Module, data: Data, *, loss: LossFn | None = None,
                  samples: int = 50, tol: float = 1e-2, min_samples: int = 5, seed: int = 0,
                  batch_size: int = 500, device: str | torch.device | None = None,
                  precision: str = "fp32", blocks: Blocks = None) -> TraceEstimate | BlockHessian:
    """Hutchinson's estimate of the trace of the Hessian of the mean loss on ``data``.

    The mean of ``v^T H v`` over up to ``samples`` Rademacher probes ``v``, stopping once at
    least ``min_samples`` give a standard error under ``tol * |trace|``. The model is
    treated as in :func:`hessian_extremes`. Returns a :class:`TraceEstimate`
    ``(trace, stderr, samples, converged)``, with ``.ci`` and ``.interval``: the trace's
    95 % Student-t interval over the probes (independent, so the interval is exact for
    Gaussian values and close for many probes).

    With ``blocks`` (as in :func:`hessian_extremes`) it returns a
    :class:`~depthscape.analysis.blocks.BlockHessian`: the trace as ``.whole`` and each
    block's trace ``tr(H_bb)`` with its standard error, from the same probes (no product
    more; the block traces sum to the trace probe by probe).

    Example::

        >>> estimate = ds.hessian_trace(model, data, samples=100)
        >>> estimate.trace, estimate.stderr, estimate.interval
        >>> ds.hessian_trace(model, data, blocks="layer").rows  # the layer-wise profile
    """
    tol = check_in("tol", tol, 0.0, 1e3)  # --trace-tol's range (and 0: every probe), before work
    if blocks is not None:
        partition(model, blocks)  # as in hessian_extremes: before work
    parts = None if blocks is None else []
    with _operator(model, data, loss, batch_size, device, precision) as operator:
        whole = TraceEstimate(*_hessian.hessian_trace(operator, operator.params, samples, tol,
                                                      min_samples, seed, parts))
        if blocks is None:
            return whole
        return block_hessian(operator, partition(operator.model, blocks), by_name(blocks),
                             parts, whole=whole)


def hessian_top_k(model: nn.Module, data: Data, k: int, *, loss: LossFn | None = None,
                  iters: int | None = None, tol: float = 1e-3, seed: int = 0,
                  batch_size: int = 500, device: str | torch.device | None = None,
                  precision: str = "fp32") -> TopEigenvalues:
    """The ``k`` largest eigenvalues of the Hessian of the mean loss on ``data``.

    The ``k`` largest Ritz values of one Lanczos run (the CLI's ``--top-k``), stopped once
    each passes :func:`depthscape.analysis.hessian.ritz_converged` (its residual bound under
    ``tol`` times its own magnitude) and held its place 10 steps, or after ``iters`` steps
    (default ``max(50, 2 k + 20)``): at most ``iters`` products. The model is treated as in
    :func:`hessian_extremes`. Returns a :class:`~depthscape.analysis.spectrum.TopEigenvalues`:
    ``.values`` (descending), ``.converged`` and ``.residuals`` per value (a converged value
    lies within its residual of an eigenvalue), ``.iterations`` (the steps),
    ``.all_converged``; its ``repr`` marks each value that did not converge with a dagger.

    Example::

        >>> top = ds.hessian_top_k(model, data, 5)
        >>> top.values, top.converged
    """
    k = check_count("k", k, 1, 10**4)  # --top-k's range, before work
    iters = max(50, 2 * k + 2 * hold_steps(k)) if iters is None else check_count(
        "iters", iters, 1, 10**6)
    if k > iters:  # the top-k are Ritz values of that one run
        raise UserError(f"k = {k} needs at least {k} Lanczos steps: iters is {iters}")
    tol = check_in("tol", tol, 0.0, 1.0)
    with _operator(model, data, loss, batch_size, device, precision) as operator:
        if k > operator.num_parameters:
            raise UserError(f"k = {k} is more eigenvalues than the Hessian has: the model has "
                            f"{operator.num_parameters} trainable parameters")
        return top_eigenvalues(operator, operator.params, k, iters, tol, seed)


def hessian_density(model: nn.Module, data: Data, *, loss: LossFn | None = None,
                    runs: int = 3, steps: int = 80, width: float | None = None,
                    points: int = 1000, tol: float = 1e-3, seed: int = 0,
                    batch_size: int = 500, device: str | torch.device | None = None,
                    precision: str = "fp32") -> SpectralDensity:
    """The eigenvalue density of the Hessian of the mean loss on ``data`` (SLQ).

    Stochastic Lanczos quadrature (the CLI's ``--density``): ``runs`` Lanczos runs of
    ``steps`` steps from independent random starts, Gaussian-broadened by a width the bulk
    of the nodes sets (``width`` None; docs/spectrum.md) or ``width`` times their span (an
    explicit ``width``, the older rule), on ``points`` grid points. Each run's outer nodes
    are judged at ``tol``. The model is treated as in :func:`hessian_extremes`. Cost:
    ``runs * steps`` products. Returns a
    :class:`~depthscape.analysis.density.SpectralDensity`: ``.plot(path=None)`` (a Figure,
    or the file written), ``.moment(k)`` (``tr(H^k) / n`` with its 95 % interval over the
    runs), ``.negative_mass()`` (the share of eigenvalues below ``-0.01 |lambda|_max``,
    with its interval), ``.outliers()``, ``.bulk()``, ``.to_csv()``, ``.to_json()``.

    Example::

        >>> density = ds.hessian_density(model, data, runs=3, steps=40)
        >>> density.moment(1), density.negative_mass()
        >>> density.plot("density.png")
    """
    runs = check_count("runs", runs, 1, 10**4)  # --density-runs' range, and so on
    steps = check_count("steps", steps, 1, 10**5)
    points = check_count("points", points, 2, 10**6)
    if width is not None:
        width = check_in("width", width, 1e-3, 1.0)
    tol = check_in("tol", tol, 0.0, 1.0)
    with _operator(model, data, loss, batch_size, device, precision) as operator:
        density = spectral_density(operator, operator.params, runs, steps, width, points,
                                   seed=seed, tol=tol)
        density.settings.update({"model": model_name(model), "loss": loss_name(loss),
                                 "samples": operator.total, "batch_size": batch_size,
                                 "precision": operator.precision.name})
        return density
