"""What the API's functions take: the data, the loss, the model (and its output adapter).

* ``model`` is any ``torch.nn.Module`` returning a tensor (wrap one that returns a dict or
  a tuple with :func:`select_output`);
* ``data`` is an ``(inputs, targets)`` pair of tensors, a ``torch.utils.data.Dataset`` of
  ``(input, target)`` items or a ``DataLoader``; it is collected into two tensors once;
* ``loss`` is any ``(outputs, targets) -> loss`` callable returning the batch's mean (or
  one value per sample).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from depthscape.core.checkpoint import check_finite
from depthscape.core.errors import UserError
from depthscape.core.splits import Split
from depthscape.core.subject import Subject, subject_from_model

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


def collect(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` as one ``(inputs, targets)`` pair of CPU tensors (a loader is read once)."""
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


def check_model(model: nn.Module) -> nn.Module:
    """``model`` if it is a module whose weights and buffers are all finite; else one line."""
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_finite(model, "the model")
    return model


def check_in(name: str, value, lo: float, hi: float) -> float:
    """``value`` as a float if it is a finite number in ``[lo, hi]``; else one line naming
    ``name`` (a tolerance of NaN would never stop, nor ever be met)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not lo <= value <= hi:
        raise UserError(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def check_count(name: str, value, lo: int, hi: int) -> int:
    """``value`` if it is a whole number in ``[lo, hi]``; else one line naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
            not lo <= value <= hi:
        raise UserError(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}")
    return int(value)


def model_name(model: nn.Module) -> str:
    inner = model.model if isinstance(model, SelectOutput) else model
    return type(inner).__name__


def loss_name(loss: LossFn | None) -> str:
    if loss is None:
        return "cross_entropy"
    if isinstance(loss, nn.Module):
        return repr(loss)
    return getattr(loss, "__qualname__", None) or type(loss).__name__


def subject_of(model: nn.Module, data: Data, loss: LossFn | None) -> Subject:
    """``model`` on ``data`` (collected once), measured with ``loss``, as the
    :class:`~depthscape.core.subject.Subject` the analyses take."""
    return subject_from_model(model, data=Split(*collect(data)), loss=loss,
                              name=model_name(model), loss_name=loss_name(loss))


def spans(span, dims: int) -> tuple[tuple[float, float], tuple[float, float]]:
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
