"""Sharpness of a trained minimum: the Hessian's largest and smallest eigenvalue, and its trace.

All three come from Hessian-vector products (:mod:`depthscape.analysis.hessian`):

* the largest and the smallest (algebraic) eigenvalue, by Lanczos
  (:func:`~depthscape.analysis.hessian.extreme_eigenvalues`), stopped when each one's
  residual bound is under ``power_tol`` times its own magnitude
  (:func:`~depthscape.analysis.hessian.ritz_converged`) or after ``power_iters`` steps
  (the settings keep their old names; one step is one Hessian-vector product). With
  ``top_k`` the same Lanczos run also gives the k largest, each judged by the same rule,
  and goes on until they pass too (:func:`~depthscape.analysis.spectrum.extremes_and_top`),
  so the ends and the top-k are one consistent set. The
  largest says how sharp the sharpest direction is; a negative smallest says the point is
  not a minimum of the measured loss (some direction still descends).
* the trace by Hutchinson's estimator ``E[v^T H v]`` with Rademacher ``v``, stopped when
  the running mean's standard error falls under ``trace_tol`` times its magnitude.

The loss is the mean cross-entropy over a fixed data subset, with the model in eval mode
(BatchNorm uses its running statistics, dropout is off), so the function whose Hessian is
measured is deterministic. Every trainable parameter is included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from depthscape.analysis.hessian import (
    HessianOperator,
    extreme_eigenvalues,
    hessian_trace,
)
from depthscape.analysis.spectrum import extremes_and_top
from depthscape.analysis.stats import CONFIDENCE, mean_ci
from depthscape.core.data import Split
from depthscape.core.errors import UserError
from depthscape.core.limits import check_basis_fits
from depthscape.core.runtime import Precision, resolve_precision


@dataclass(frozen=True)
class SharpnessConfig:
    """How sharpness is measured."""

    split: str = "train"  # "train" (the split the run trained on) or "test"
    subset: int | None = 1000  # fixed random subset of that split; None: all of it
    batch_size: int = 500  # images per Hessian-vector product chunk
    power_iters: int = 20  # most Lanczos steps (Hessian-vector products) for both ends
    power_tol: float = 1e-3  # converged: residual bound under this x the value's magnitude
    trace_samples: int = 50  # most Hutchinson probe vectors
    trace_tol: float = 1e-2  # stop when the standard error is under this fraction of the mean
    min_trace_samples: int = 5  # probes before the trace may stop early
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"  # core.runtime.PRECISIONS: bf16 autocasts the forward passes
    top_k: int = 0  # also the k largest eigenvalues (the same Lanczos run, at most power_iters steps); 0: off
    draws: int = 1  # independent draws (disjoint data subsets, own Lanczos/probe starts)


@dataclass(frozen=True)
class DensityConfig:
    """How the eigenvalue density is estimated (:func:`~depthscape.analysis.spectrum.
    spectral_density`); data, batch, seed, device and precision are the SharpnessConfig's."""

    runs: int = 3  # Lanczos runs from independent random starts
    steps: int = 80  # Lanczos steps per run
    width: float = 0.005  # Gaussian standard deviation / span of the Ritz values
    points: int = 1000  # grid points


@dataclass
class SharpnessResult:
    """Sharpness of one minimum, with how the estimates ended."""

    largest_eigenvalue: float  # largest (algebraic): curvature of the sharpest direction
    smallest_eigenvalue: float  # smallest (algebraic): negative where the loss still descends
    eigen_steps: int  # Lanczos steps (Hessian-vector products) for both ends
    eigen_converged: bool  # both ends' residual bounds met power_tol
    trace: float
    trace_stderr: float
    trace_samples: int
    trace_converged: bool
    subset_size: int
    num_parameters: int
    # Each end's own convergence, its last Lanczos change and its Ritz residual (see
    # EigenExtremes); None where not recorded (results stored before they were kept).
    largest_converged: bool | None = None
    smallest_converged: bool | None = None
    largest_change: float | None = None
    smallest_change: float | None = None
    largest_residual: float | None = None
    smallest_residual: float | None = None
    # With draws > 1 every number above is the mean over the draws (steps, changes,
    # residuals and standard errors: the largest; flags: all draws), and these hold the
    # half-widths of the Student-t intervals at ``confidence`` and each draw's values.
    top_eigenvalues: list[float] | None = None  # k largest, descending (top_k > 0)
    top_converged: list[bool] | None = None  # per value: its residual bound met power_tol
    top_steps: int | None = None
    draws: int = 1
    confidence: float | None = None
    largest_ci: float | None = None
    smallest_ci: float | None = None
    trace_ci: float | None = None
    top_ci: list[float] | None = None
    draw_values: list[dict] | None = None  # per draw: largest, smallest, trace, top, subset seed
    # per top-k value: its residual bound (the largest over the draws); None where not
    # recorded (results stored before it was kept)
    top_residuals: list[float] | None = None

    def end_converged(self, end: str) -> bool:
        """Whether the ``"largest"`` or ``"smallest"`` eigenvalue converged (where the end's
        own flag was not recorded, the run's: both ends)."""
        own = getattr(self, f"{end}_converged")
        return self.eigen_converged if own is None else bool(own)


def check_sharpness_fits(config: SharpnessConfig, model: nn.Module,
                         device: torch.device | str | None = None) -> None:
    """One line, before any work, where ``config`` cannot run on ``model``: no trainable
    parameters, more top-k eigenvalues than the Hessian has (one per trainable
    parameter), or a Lanczos basis (``power_iters`` x parameters) larger than memory."""
    params = [p for p in model.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    if not size:
        raise UserError("the model has no trainable parameters (none requires grad): the "
                        "Hessian is taken with respect to them")
    if config.top_k > size:
        raise UserError(f"--top-k {config.top_k} is more than the model's {size} trainable "
                        f"parameters (its Hessian has {size} eigenvalues)")
    check_basis_fits(config.power_iters, size, params[0], device)


def model_sharpness(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                    config: SharpnessConfig = SharpnessConfig(), seed: int | None = None,
                    dist=None, precision: Precision | None = None) -> SharpnessResult:
    """Largest and smallest eigenvalue and trace (and the top-k where ``config.top_k``) of
    the Hessian of ``model``'s mean loss on the given data: one draw, its Lanczos and probe
    starts from ``seed`` (default ``config.seed``). Under torchrun (``dist``, every rank
    the same data) the Hessian-vector products are split over the ranks and all-reduced
    (:class:`HessianOperator`): every rank returns the same result. ``precision`` is
    ``config.precision`` as the caller resolved it (None: resolved here for the inputs'
    device)."""
    seed = config.seed if seed is None else seed
    check_sharpness_fits(config, model, inputs.device)
    if precision is None:
        precision = resolve_precision(config.precision, inputs.device, backward=True)
    operator = HessianOperator(model, inputs, labels, config.batch_size,
                               precision=precision, dist=dist)
    params = operator.params
    top = None
    if config.top_k > 0:  # one run for both ends and the top-k: one consistent set
        ends, top = extremes_and_top(operator, params, config.top_k, config.power_iters,
                                     config.power_tol, seed)
    else:
        ends = extreme_eigenvalues(operator, params, config.power_iters, config.power_tol,
                                   seed)
    trace, stderr, count, trace_ok = hessian_trace(
        operator, params, config.trace_samples, config.trace_tol, config.min_trace_samples,
        seed)
    return SharpnessResult(ends.largest, ends.smallest, ends.iterations, ends.converged, trace,
                           stderr, count, trace_ok, len(labels), operator.num_parameters,
                           ends.largest_converged, ends.smallest_converged, ends.largest_change,
                           ends.smallest_change, ends.largest_residual, ends.smallest_residual,
                           top_eigenvalues=None if top is None else top.values,
                           top_converged=None if top is None else top.converged,
                           top_steps=None if top is None else top.iterations,
                           top_residuals=None if top is None else top.residuals)


def _largest(values):
    known = [v for v in values if v is not None]
    return max(known) if known else None


def combine_draws(draws: Sequence[SharpnessResult], seeds: Sequence[int] | None = None,
                  confidence: float | None = None) -> SharpnessResult:
    """One result from independent draws: means with Student-t half-widths, worst-case
    steps/changes/residuals/standard errors, and a flag converged only if every draw's is."""
    confidence = CONFIDENCE if confidence is None else confidence
    if len(draws) == 1:
        return draws[0]
    first = draws[0]

    def ci(name):
        return mean_ci([getattr(d, name) for d in draws], confidence)

    largest, smallest, trace = ci("largest_eigenvalue"), ci("smallest_eigenvalue"), ci("trace")
    top = top_ci = top_ok = top_residuals = None
    if first.top_eigenvalues is not None:
        k = len(first.top_eigenvalues)
        pairs = [mean_ci([d.top_eigenvalues[i] for d in draws if len(d.top_eigenvalues) > i],
                         confidence) for i in range(k)]
        top, top_ci = [p[0] for p in pairs], [p[1] for p in pairs]
        top_ok = [all(d.top_converged[i] for d in draws if len(d.top_converged) > i)
                  for i in range(k)]
        if all(d.top_residuals is not None for d in draws):
            top_residuals = [_largest([d.top_residuals[i] for d in draws
                                       if len(d.top_residuals) > i]) for i in range(k)]

    def all_of(name):
        flags = [getattr(d, name) for d in draws]
        return None if any(f is None for f in flags) else all(flags)

    per_draw = [{"largest": d.largest_eigenvalue, "smallest": d.smallest_eigenvalue,
                 "trace": d.trace, "top": d.top_eigenvalues,
                 "seed": None if seeds is None else seeds[i]} for i, d in enumerate(draws)]
    return SharpnessResult(
        largest[0], smallest[0], max(d.eigen_steps for d in draws),
        all(d.eigen_converged for d in draws), trace[0], max(d.trace_stderr for d in draws),
        max(d.trace_samples for d in draws), all(d.trace_converged for d in draws),
        first.subset_size, first.num_parameters, all_of("largest_converged"),
        all_of("smallest_converged"), _largest([d.largest_change for d in draws]),
        _largest([d.smallest_change for d in draws]),
        _largest([d.largest_residual for d in draws]),
        _largest([d.smallest_residual for d in draws]), top, top_ok,
        _largest([d.top_steps for d in draws]), len(draws), confidence, largest[1],
        smallest[1], trace[1], top_ci, per_draw, top_residuals)


def draw_subsets(split, size: int | None, draws: int, seed: int) -> list:
    """``draws`` disjoint random subsets of ``size`` samples from one permutation seeded with
    ``seed`` (the first is :meth:`Split.subset`'s own); all of it each time where ``size`` is
    None or covers the split (then only the Lanczos and probe starts differ)."""
    if size is None or size >= len(split):
        return [split] * draws
    if size * draws > len(split):
        raise UserError(f"{draws} disjoint subsets of {size} need {size * draws} samples; the "
                        f"split has {len(split)}: lower --subset or --draws")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return [Split(split.images[index], split.labels[index]) for index in
            (order[i * size:(i + 1) * size].sort().values for i in range(draws))]
