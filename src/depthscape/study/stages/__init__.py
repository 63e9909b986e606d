"""The study's stages, one module each: data, training, curves, tables, landscapes,
sharpness, depth (where in depth: gradient flow and curvature per stage),
trajectories, curvature, density, flatness, report.

Every module of this package that defines ``STAGE`` (a :class:`~depthscape.study.stages.base.
Stage`) is a stage: :func:`all_stages` finds them, so a new stage is one new module here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

import depthscape.study.stages as package
from depthscape.study.stages.base import Stage, Study, is_fresh

__all__ = ["Stage", "Study", "all_stages", "is_fresh", "switchable_stages"]


@functools.cache
def all_stages() -> tuple[Stage, ...]:
    """Every stage, in the order the study runs them."""
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if isinstance(getattr(module, "STAGE", None), Stage):
            found.append(module.STAGE)
    return tuple(sorted(found, key=lambda stage: stage.order))


def switchable_stages() -> list[Stage]:
    """The stages ``depthscape study --no-<name>`` can switch off, in the order they run."""
    return [stage for stage in all_stages() if stage.skip_help]
