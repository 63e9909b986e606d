"""Loss and accuracy of a model over a whole split held on the device."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.core.data import Preprocess, Split


@torch.inference_mode()
def evaluate_sums(model: nn.Module, split: Split, preprocess: Preprocess, batch_size: int = 1000,
                  device: torch.device | str | None = None,
                  prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``[summed cross-entropy, correct predictions, samples]`` of ``model`` in eval mode on
    ``split``, as one float64 tensor on the device (exact counts; sums over processes add up).

    The split is moved to ``device`` (default: the model's) once; nothing is read back
    (on CUDA no batch waits for the host). ``prepare`` puts each batch in the model's
    memory layout (the fast path's channels-last).
    The model's train/eval mode is restored. An empty split gives zeros.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    images, labels = split.images.to(device), split.labels.to(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(labels), batch_size):
        x = preprocess.normalize(images[start:start + batch_size])
        x = prepare(x) if prepare is not None else x
        y = labels[start:start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    count = torch.tensor(float(len(labels)), dtype=torch.float64, device=device)
    return torch.stack([loss_sum, correct.double(), count])


def mean_metrics(sums: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy (percent) from :func:`evaluate_sums`'s sums (one host read)."""
    loss_sum, correct, count = sums.tolist()
    n = max(1.0, count)
    return loss_sum / n, 100.0 * correct / n


def evaluate(model: nn.Module, split: Split, preprocess: Preprocess, batch_size: int = 1000,
             device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy (percent) of ``model`` in eval mode on ``split``.

    Sums accumulate on the device and are read back once at the end (see :func:`evaluate_sums`).
    """
    return mean_metrics(evaluate_sums(model, split, preprocess, batch_size, device))
