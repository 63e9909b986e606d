"""The Hessian measures of ``depthscape sharpness``: extremes, trace, top-k, ...

Every module of this package that defines ``MEASURE`` (a :class:`~depthscape.analysis.
measures.base.Measure`) is one: :func:`all_measures` finds them, in their ``order``, so a
new measure is one new module here (its settings, estimator, file fields, table columns,
CSV fields and options), and the sharpness result, its file, table, CSV, cache key and
command line take it up.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from depthscape.analysis.measures.base import Draw, Estimate, Measure

__all__ = ["Draw", "Estimate", "Measure", "all_measures", "measure_of"]


@functools.cache
def all_measures() -> tuple[Measure, ...]:
    """Every measure, in the order they are computed and shown."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "MEASURE", None), Measure):
            found.append(module.MEASURE)
    return tuple(sorted(found, key=lambda measure: measure.order))


def measure_of(quantity: str) -> Measure:
    """The measure that gives ``quantity`` (e.g. ``"largest"``: the extremes)."""
    for measure in all_measures():
        if quantity in measure.quantities:
            return measure
    raise KeyError(f"no Hessian measure gives {quantity!r}")
