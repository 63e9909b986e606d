"""Tiny deterministic data and checkpoints for the landscape tests (also used by their
subprocesses, which put this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _threads import torch_threads
from torch import nn

from depthscape.core.checkpoint import save_checkpoint
from depthscape.core.data import Dataset, Preprocess, Split
from depthscape.core.models import get_model

CLASSES = ("a", "b", "c")
PREPROCESS = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0), augment=False)


def tiny_dataset(train: int = 24, test: int = 48, size: int = 16, seed: int = 0) -> Dataset:
    """Three classes of noisy images, each class its own brightness; same seed, same data."""
    generator = torch.Generator().manual_seed(seed)

    def split(count: int) -> Split:
        labels = torch.arange(count) % len(CLASSES)
        noise = torch.randn(count, 3, size, size, generator=generator) * 30
        images = (40 + 80 * labels.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    return Dataset("tiny", split(train), split(test), list(CLASSES))


def calibrated_model(name: str = "resnet8", seed: int = 0, dataset: Dataset | None = None,
                     steps: int = 0) -> torch.nn.Module:
    """``name`` with seeded weights, a few SGD steps (if ``steps``) and BatchNorm statistics
    measured on the training images, so the losses are of a trained net's size."""
    torch.manual_seed(seed)
    dataset = dataset or tiny_dataset()
    model = get_model(name, in_channels=3, num_classes=len(CLASSES))
    x = PREPROCESS.normalize(dataset.train.images)
    if steps:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), dataset.train.labels).backward()
            optimizer.step()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        model(x)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return model.eval()


def write_checkpoint(path: Path, model: torch.nn.Module, name: str = "resnet8",
                     data_source: str | None = None) -> Path:
    """Save ``model`` as a depthscape checkpoint whose config carries the preprocessing."""
    save_checkpoint(path, {
        "model": name,
        "model_kwargs": {"in_channels": 3, "num_classes": len(CLASSES)},
        "config": {
            "model": name,
            "preprocess": {"scale": PREPROCESS.scale, "mean": list(PREPROCESS.mean),
                           "augment": True, "crop_padding": 4},
            "train": {"dataset": data_source, "data_dir": None, "cache_dir": None, "seed": 0},
        },
        "state_dict": model.state_dict(),
    })
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine, tiny models run far faster (and
    bit-for-bit like the one-thread subprocesses) than with threads fighting for cores."""
    with torch_threads(1):
        yield


class TinyNet(nn.Module):
    """Conv + BatchNorm + tanh + linear: curved in every parameter, BN has running stats."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))
