"""Sharpness of a trained minimum: the Hessian measures of one model on one data subset.

Each measure is a module of :mod:`depthscape.analysis.measures` (the largest and the
smallest eigenvalue by Lanczos, the trace by Hutchinson, the top-k from the extremes' own
Lanczos run, ...): it declares its settings, which become fields of
:class:`SharpnessConfig`, and its estimator. :func:`model_sharpness` runs every enabled
measure on one draw (the extremes and the top-k share one Lanczos run), :func:`combine_draws`
combines independent draws, and :class:`SharpnessResult` maps each quantity to its
:class:`~depthscape.analysis.measures.Estimate` (value, interval, convergence), stored in
the sharpness JSON file's layout of every earlier version.

The loss is the mean cross-entropy over a fixed data subset, with the model in eval mode
(BatchNorm uses its running statistics, dropout is off), so the function whose Hessian is
measured is deterministic. Every trainable parameter is included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

import torch
from torch import nn

from depthscape.analysis.hessian import HessianOperator
from depthscape.analysis.measures import Draw, Estimate, all_measures
from depthscape.analysis.stats import CONFIDENCE
from depthscape.core.data import Split
from depthscape.core.errors import UserError
from depthscape.core.limits import check_basis_fits
from depthscape.core.runtime import Precision, resolve_precision


@dataclass(frozen=True)
class _Common:
    """The settings every measure shares."""

    split: str = "train"  # "train" (the split the run trained on) or "test"
    subset: int | None = 1000  # fixed random subset of that split; None: all of it
    batch_size: int = 500  # images per Hessian-vector product chunk
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"  # core.runtime.PRECISIONS: bf16 autocasts the forward passes
    draws: int = 1  # independent draws (disjoint data subsets, own Lanczos/probe starts)


#: How sharpness is measured: the shared settings and every measure's own
#: (``power_iters``, ``power_tol``: the extremes; ``trace_*``: the trace; ``top_k``: ...).
SharpnessConfig = make_dataclass(
    "SharpnessConfig",
    [(name, kind, field(default=default)) for measure in all_measures()
     for name, (kind, default) in measure.settings.items()],
    bases=(_Common,), frozen=True)
SharpnessConfig.__module__ = __name__  # pickled by name (study units, torchrun ranks)
SharpnessConfig.__doc__ = ("How sharpness is measured: " + ", ".join(
    f.name for f in fields(SharpnessConfig)) + " (see the measures' modules).")


def active_measures(config) -> list:
    """The measures ``config`` asks for, in their order."""
    return [m for m in all_measures() if m.enabled(config)]


@dataclass(frozen=True)
class DensityConfig:
    """How the eigenvalue density is estimated (:func:`~depthscape.analysis.spectrum.
    spectral_density`); data, batch, seed, device and precision are the SharpnessConfig's."""

    runs: int = 3  # Lanczos runs from independent random starts
    steps: int = 80  # Lanczos steps per run
    # Gaussian standard deviation: None, from the bulk of the nodes (analysis/broadening.py);
    # a number, that fraction of the Ritz values' span (the rule before the bulk's)
    width: float | None = None
    points: int = 1000  # grid points


#: The fields of a sharpness JSON file's ``result``, in the order every version wrote them
#: (and the positional order of :meth:`SharpnessResult.from_fields`).
FILE_FIELDS = ("largest_eigenvalue", "smallest_eigenvalue", "eigen_steps", "eigen_converged",
               "trace", "trace_stderr", "trace_samples", "trace_converged", "subset_size",
               "num_parameters", "largest_converged", "smallest_converged", "largest_change",
               "smallest_change", "largest_residual", "smallest_residual", "top_eigenvalues",
               "top_converged", "top_steps", "draws", "confidence", "largest_ci", "smallest_ci",
               "trace_ci", "top_ci", "draw_values", "top_residuals")
_COMMON = ("subset_size", "num_parameters", "draws", "confidence", "draw_values", "same_data")


@dataclass
class SharpnessResult(Mapping):
    """Sharpness of one minimum: each quantity (``"largest"``, ``"smallest"``, ``"trace"``,
    ``"top"``, ...) mapped to its :class:`~depthscape.analysis.measures.Estimate`, and what
    all share. With draws > 1 each estimate is the mean over the draws with its Student-t
    half-width at ``confidence`` (steps, residuals, standard errors: the largest; flags: all
    draws) and ``draw_values`` holds each draw's values.

    The names of the file's fields (:data:`FILE_FIELDS`: ``largest_eigenvalue``,
    ``trace_stderr``, ``top_eigenvalues`` ...) read as attributes too."""

    estimates: dict[str, Estimate]
    subset_size: int
    num_parameters: int
    draws: int = 1
    confidence: float | None = None
    draw_values: list[dict] | None = None
    #: the draws measured the same data (the subset covers the split: only the Lanczos and
    #: probe starts differ); None where not recorded (one draw, or stored before)
    same_data: bool | None = None

    def __getitem__(self, quantity: str) -> Estimate:
        return self.estimates[quantity]

    def __iter__(self) -> Iterator[str]:
        return iter(self.estimates)

    def __len__(self) -> int:
        return len(self.estimates)

    def converged(self, quantity: str):
        """``quantity``'s flag (per value for a list); where its own was not recorded, its
        run's (the extremes: both ends)."""
        estimate = self[quantity]
        if estimate.converged is None:
            return bool(estimate.details.get("run_converged", False))
        return estimate.converged

    def end_converged(self, end: str) -> bool:
        """Whether the ``"largest"`` or ``"smallest"`` eigenvalue converged."""
        return bool(self.converged(end))

    def to_dict(self) -> dict:
        """The sharpness file's ``result``: :data:`FILE_FIELDS` first, then the fields added
        since, where recorded (so an old file writes back as it was)."""
        flat: dict[str, Any] = {}
        for measure in all_measures():
            flat.update(measure.to_flat(self))
        flat.update({name: getattr(self, name) for name in _COMMON})
        later = {k: v for k, v in flat.items() if k not in FILE_FIELDS and v is not None}
        return {**{name: flat.get(name) for name in FILE_FIELDS}, **later}

    @classmethod
    def from_dict(cls, data: Mapping) -> SharpnessResult:
        """A result from a file's ``result`` (any version's: absent fields read as None)."""
        estimates: dict[str, Estimate] = {}
        for measure in all_measures():
            estimates.update(measure.from_flat(data))
        return cls(estimates, data["subset_size"], data["num_parameters"],
                   data.get("draws") or 1, data.get("confidence"), data.get("draw_values"),
                   data.get("same_data"))

    @classmethod
    def from_fields(cls, *args, **kwargs) -> SharpnessResult:
        """A result from the file's fields given as values (:data:`FILE_FIELDS`' order
        first, then by name; the first ten are required)."""
        return cls.from_dict({**dict(zip(FILE_FIELDS, args)), **kwargs})

    def __getattr__(self, name: str):
        if name in FILE_FIELDS and "estimates" in vars(self):  # not while unpickling
            return self.to_dict()[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def check_sharpness_fits(config, model: nn.Module,
                         device: torch.device | str | None = None) -> None:
    """One line, before any work, where ``config`` cannot run on ``model``: no trainable
    parameters, a measure's settings it cannot run (more top-k eigenvalues than the
    Hessian has, a block the model does not have, ...), or a Lanczos basis (``power_iters``
    x parameters) larger than memory."""
    params = [p for p in model.parameters() if p.requires_grad]
    size = sum(p.numel() for p in params)
    if not size:
        raise UserError("the model has no trainable parameters (none requires grad): the "
                        "Hessian is taken with respect to them")
    for measure in active_measures(config):
        measure.check(config, size)
        measure.check_model(config, model)
    check_basis_fits(config.power_iters, size, params[0], device)


def model_sharpness(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                    config=None, seed: int | None = None,
                    dist=None, precision: Precision | None = None) -> SharpnessResult:
    """Every measure ``config`` asks for (default :class:`SharpnessConfig`'s) of the Hessian
    of ``model``'s mean loss on the given data: one draw, its Lanczos and probe starts from
    ``seed`` (default ``config.seed``). Under torchrun (``dist``, every rank the same data)
    the Hessian-vector products are split over the ranks and all-reduced
    (:class:`HessianOperator`): every rank returns the same result. ``precision`` is
    ``config.precision`` as the caller resolved it (None: resolved here for the inputs'
    device)."""
    config = SharpnessConfig() if config is None else config
    seed = config.seed if seed is None else seed
    check_sharpness_fits(config, model, inputs.device)
    if precision is None:
        precision = resolve_precision(config.precision, inputs.device, backward=True)
    operator = HessianOperator(model, inputs, labels, config.batch_size,
                               precision=precision, dist=dist)
    draw = Draw(operator, config, seed)
    estimates: dict[str, Estimate] = {}
    for measure in active_measures(config):  # in order: the extremes' Lanczos run first
        estimates.update(measure.estimate(draw))
    return SharpnessResult(estimates, len(labels), operator.num_parameters)


def combine_draws(draws: Sequence[SharpnessResult], seeds: Sequence[int] | None = None,
                  confidence: float | None = None) -> SharpnessResult:
    """One result from independent draws (:meth:`~depthscape.analysis.measures.Estimate.
    combine` per quantity) with each draw's values in ``draw_values``."""
    confidence = CONFIDENCE if confidence is None else confidence
    if len(draws) == 1:
        return draws[0]
    first = draws[0]
    estimates = {q: Estimate.combine([d[q] for d in draws], confidence) for q in first}
    per_draw = [{**{name: value for measure in all_measures()
                    for name, value in measure.draw_value(d).items()},
                 "seed": None if seeds is None else seeds[i]} for i, d in enumerate(draws)]
    return SharpnessResult(estimates, first.subset_size, first.num_parameters, len(draws),
                           confidence, per_draw)


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
