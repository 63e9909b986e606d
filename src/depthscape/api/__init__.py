"""The Python API: loss surfaces, paths and Hessians of any ``nn.Module`` on any data.

``import depthscape as ds`` and::

    surface = ds.loss_surface(model, (inputs, targets), resolution=21)
    surface.plot("contour").savefig("surface.png")
    extremes = ds.hessian_extremes(model, (inputs, targets))
    density = ds.hessian_density(model, (inputs, targets))   # .plot(), .moment(k), .to_csv()

Every function runs the engine the command line runs (the same evaluator with its
verified BatchNorm folding, the same directions, the same HDF5 files and resume, the same
Lanczos, the same training loop), only on the caller's model and data instead of a
depthscape checkpoint:

* ``model`` is any ``torch.nn.Module`` returning a tensor (wrap one that returns a dict or
  a tuple with :func:`select_output`). It is evaluated in eval mode on a copy: dropout is
  off and BatchNorm uses its running statistics; the caller's model is never changed.
* ``data`` is an ``(inputs, targets)`` pair of tensors, a ``torch.utils.data.Dataset`` of
  ``(input, target)`` items or a ``DataLoader``; it is collected into two tensors once.
* ``loss`` is any ``(outputs, targets) -> loss`` callable returning the batch's mean (or
  one value per sample): ``torch.nn.MSELoss()``, ``F.cross_entropy``, ... (default:
  cross-entropy). Accuracy is measured where the targets are class labels (integers, one
  per sample) and the outputs one score per class; otherwise it is None.

One module per concept: :mod:`~depthscape.api.surfaces` (surfaces and lines),
:mod:`~depthscape.api.trajectories` (optimization paths), :mod:`~depthscape.api.hessians`,
:mod:`~depthscape.api.runs` (training and loading depthscape's runs); what they take is
in :mod:`~depthscape.api._inputs`. This is the package's top layer, beside
``depthscape.cli``: it imports from below only.
"""

# ruff: noqa: F401  (everything here is re-exported)
from __future__ import annotations

from depthscape import __all__  # the one list of public names: the package's
from depthscape.api._inputs import (  # also the types, for annotations
    Data,
    Direction,
    LossFn,
    SelectOutput,
    select_output,
)
from depthscape.api.hessians import (
    BlockHessian,
    EigenExtremes,
    SpectralDensity,
    TopEigenvalues,
    TraceEstimate,
    hessian_density,
    hessian_extremes,
    hessian_top_k,
    hessian_trace,
)
from depthscape.api.runs import load_run, train
from depthscape.api.surfaces import (
    Surface,
    TrajectorySurface,
    interpolate,
    loss_surface,
    random_directions,
)
from depthscape.api.trajectories import trajectory
