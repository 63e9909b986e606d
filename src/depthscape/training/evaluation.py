"""Loss and accuracy of a model over a whole split held on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.core.data import Preprocess, Split


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, preprocess: Preprocess, batch_size: int = 1000,
             device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy (percent) of ``model`` in eval mode on ``split``.

    The split is moved to ``device`` (default: the model's) once; sums accumulate on the
    device and are read back once at the end. The model's train/eval mode is restored.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    images, labels = split.images.to(device), split.labels.to(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(labels), batch_size):
        x = preprocess.normalize(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = max(1, len(labels))
    return float(loss_sum) / n, 100.0 * float(correct) / n
