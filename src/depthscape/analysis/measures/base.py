"""What a Hessian measure is: :class:`Measure`, the :class:`Estimate` it gives per quantity,
how draws combine, and the context one draw's measures share (:class:`Draw`).

A measure (extremes, trace, top-k, ...) is one module of this package defining ``MEASURE``.
It declares the settings it reads (fields of
:class:`~depthscape.analysis.sharpness_estimate.SharpnessConfig`) and the values that turn
it off, its command-line options, how it estimates its quantities on one draw, how it is
stored in a sharpness JSON file (each quantity under its own names, the files' layout since
the first version), its table columns, CSV fields and the footnote of its unconverged
values. Combining draws is the same for every measure (:meth:`Estimate.combine`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from depthscape.analysis.hessian import (
    UNCONVERGED_MARK,
    HessianOperator,
    extreme_eigenvalues,
    hessian_trace,
)
from depthscape.analysis.spectrum import extremes_and_top
from depthscape.analysis.stats import mean_ci


@dataclass
class Estimate:
    """One quantity's estimate: its ``value`` (a number, or a list for a vector quantity
    such as the top-k), ``converged`` (per value for a list; None: not recorded), ``ci``
    (half-width of the Student-t interval over draws; None for one draw) and ``details``:
    how the estimate ended (steps, residual bounds, standard error ...), by name."""

    value: Any
    converged: Any = None
    ci: Any = None
    details: dict = field(default_factory=dict)

    @staticmethod
    def combine(draws: Sequence[Estimate], confidence: float) -> Estimate:
        """One estimate from independent draws: the mean with its Student-t half-width,
        a flag converged only where every draw's is (None where a draw did not record it),
        and each detail's worst case (the largest number; flags: all draws)."""
        first = draws[0]
        if isinstance(first.value, list):
            k = len(first.value)
            pairs = [mean_ci([d.value[i] for d in draws if len(d.value) > i], confidence)
                     for i in range(k)]
            value, ci = [p[0] for p in pairs], [p[1] for p in pairs]
            converged = [all(d.converged[i] for d in draws if len(d.converged) > i)
                         for i in range(k)]
        else:
            value, ci, _ = mean_ci([d.value for d in draws], confidence)
            converged = _all_flags([d.converged for d in draws])
        names = dict.fromkeys(name for d in draws for name in d.details)
        details = {name: _worst([d.details.get(name) for d in draws]) for name in names}
        return Estimate(value, converged, ci, details)


def _all_flags(flags: Sequence) -> bool | None:
    return None if any(f is None for f in flags) else all(bool(f) for f in flags)


def _worst(values: Sequence):
    """The worst case of one detail over draws: all of flags, the largest of numbers (per
    position for lists); None where no draw recorded it."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    if isinstance(known[0], bool):
        return _all_flags(values)
    if isinstance(known[0], list):
        if len(known) < len(values):  # a draw without it: unknown for the whole
            return None
        k = max(len(v) for v in known)
        return [max(v[i] for v in known if len(v) > i) for i in range(k)]
    return max(known)


def mark_unconverged(text: str, converged: bool) -> str:
    """``text`` with :data:`~depthscape.analysis.hessian.UNCONVERGED_MARK` appended unless
    ``converged``."""
    return text if converged else f"{text}{UNCONVERGED_MARK}"


def padded_flags(estimate: Estimate) -> list[bool]:
    """Per value of a list quantity: converged (False where its flag was not recorded)."""
    values, flags = estimate.value or [], estimate.converged or []
    return [i < len(flags) and bool(flags[i]) for i in range(len(values))]


def finite_or_none(value):
    """``value`` where it is a finite number, else None (what a footnote can show)."""
    return value if value is not None and math.isfinite(value) else None


class Draw:
    """What one draw's measures share: its Hessian-vector products (``operator``), the
    settings, the seed of its Lanczos and probe starts, one Lanczos run that serves the
    extremes and the top-k (:meth:`lanczos`: the same start, the same products) and one
    Hutchinson run that serves the trace and the block traces (:meth:`trace`)."""

    def __init__(self, operator: HessianOperator, config, seed: int):
        self.operator, self.params, self.config, self.seed = (operator, operator.params,
                                                              config, seed)
        self._lanczos = self._trace = None

    def trace(self):
        """``((trace, stderr, probes, converged), parts)``: Hutchinson's run
        (:func:`~depthscape.analysis.hessian.hessian_trace`) and each probe's
        ``v_p . (H v)_p`` per parameter tensor, from which any block's trace is read."""
        if self._trace is None:
            config, parts = self.config, []
            found = hessian_trace(self.operator, self.params, config.trace_samples,
                                  config.trace_tol, config.min_trace_samples, self.seed, parts)
            self._trace = (found, parts)
        return self._trace

    def lanczos(self):
        """``(ends, top)``: the extremes (:class:`~depthscape.analysis.hessian.
        EigenExtremes`) and the top-k (None where ``config.top_k`` is 0) of one run."""
        if self._lanczos is None:
            config = self.config
            if config.top_k > 0:  # one run for both ends and the top-k: one consistent set
                self._lanczos = extremes_and_top(self.operator, self.params, config.top_k,
                                                 config.power_iters, config.power_tol,
                                                 self.seed)
            else:
                self._lanczos = (extreme_eigenvalues(self.operator, self.params,
                                                     config.power_iters, config.power_tol,
                                                     self.seed), None)
        return self._lanczos


class Measure:
    """One Hessian measure. Subclasses set the class attributes and override what applies."""

    name: str = ""
    order: int = 100  # computation, table, CSV and option order
    quantities: tuple[str, ...] = ()  # the estimates it gives, by name
    #: its fields of :class:`~depthscape.analysis.sharpness_estimate.SharpnessConfig`:
    #: name -> (type, default)
    settings: Mapping[str, tuple[type, Any]] = {}
    #: fields added after results were first stored, each with the value those results
    #: were measured at (left out of the cache key there, so the stored results stay valid)
    added: Mapping[str, Any] = {}
    #: an optional measure's quantity: its table columns, CSV fields and notes appear only
    #: where a result of the table holds it (None: always; see :meth:`shown_in`)
    shown_with: str | None = None

    def enabled(self, config) -> bool:
        return True

    def check(self, config, num_parameters: int) -> None:
        """Refuse (:class:`~depthscape.core.errors.UserError`) settings it cannot run."""

    def check_model(self, config, model) -> None:
        """Refuse settings it cannot run on ``model`` (one line, before any product)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Its options of ``depthscape sharpness``."""

    def check_options(self, config) -> None:
        """What the command refuses beyond :meth:`check` (one line, before any work)."""

    def config_values(self, args: argparse.Namespace) -> dict:
        """Its config fields from the parsed options (those it has options for)."""
        return {name: getattr(args, name) for name in self.settings if hasattr(args, name)}

    def estimate(self, draw: Draw) -> dict[str, Estimate]:
        raise NotImplementedError

    # the sharpness JSON file's layout
    def to_flat(self, estimates: Mapping[str, Estimate]) -> dict:
        raise NotImplementedError

    def from_flat(self, data: Mapping) -> dict[str, Estimate]:
        raise NotImplementedError

    def draw_value(self, estimates: Mapping[str, Estimate]) -> dict:
        """The draw's values as each draw's record lists them."""
        return {q: estimates[q].value if q in estimates else None for q in self.quantities}

    # the table (``group``: a model's results over seeds; see sharpness_table), asked only
    # of the measures :meth:`shown_in` it
    def shown_in(self, layout) -> bool:
        """Whether its columns, CSV fields and notes are in the table of ``layout``: always,
        or, with :attr:`shown_with`, where any of its results measured that quantity."""
        return self.shown_with is None or any(self.shown_with in r for r in layout.results)

    def headers(self, layout) -> list[str]:
        return []

    def cells(self, group, layout) -> list[str]:
        return []

    def csv_fields(self, group, layout) -> dict:
        return {}

    def details(self, result, quantity: str) -> str | None:
        """What is known about ``quantity`` in ``result`` where it did not converge."""
        return None

    def shown(self, quantity: str) -> str:
        """The quantity's name in the table's footnote."""
        return quantity

    def notes(self, layout) -> list[str]:
        return []

    def write_files(self, result, stem) -> list:
        """Files of its own beside a result ``<stem>.json`` (atomically); the paths."""
        return []
