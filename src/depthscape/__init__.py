"""depthscape: why residual connections let deep networks train, measured.

Train a baseline CNN, ResNets and PlainNets on CIFAR-10 at any depth 6n+2, log and plot
their training, and draw and measure their loss landscapes -- of those runs, or of any
``torch.nn.Module`` on any data through the Python API (:mod:`depthscape.api`)::

    import depthscape as ds
    surface = ds.loss_surface(model, (inputs, targets), resolution=21)
    surface.plot("contour").savefig("surface.png")
    print(ds.hessian_extremes(model, (inputs, targets)))
    ds.hessian_density(model, (inputs, targets)).plot("density.png")
    ds.train("resnet", 20, out="runs")   # or a model of your own, with a recipe file

The API's names load on first use, so ``import depthscape`` (and the CLI) stay free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: The public API, re-exported from :mod:`depthscape.api` on first access.
__all__ = [
    "BlockHessian",
    "EigenExtremes",
    "SpectralDensity",
    "Surface",
    "TopEigenvalues",
    "TraceEstimate",
    "TrajectorySurface",
    "hessian_density",
    "hessian_extremes",
    "hessian_top_k",
    "hessian_trace",
    "interpolate",
    "load_run",
    "loss_surface",
    "random_directions",
    "select_output",
    "train",
    "trajectory",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from depthscape.api import (
        BlockHessian,
        EigenExtremes,
        SpectralDensity,
        Surface,
        TopEigenvalues,
        TraceEstimate,
        TrajectorySurface,
        hessian_density,
        hessian_extremes,
        hessian_top_k,
        hessian_trace,
        interpolate,
        load_run,
        loss_surface,
        random_directions,
        select_output,
        train,
        trajectory,
    )


def __getattr__(name: str):
    if name in __all__:
        from depthscape import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'depthscape' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
