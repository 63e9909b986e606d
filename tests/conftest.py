"""Shared fixtures: tiny image datasets written to disk, the real CIFAR-10 archive if present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _threads import torch_threads

REPO = Path(__file__).resolve().parents[1]
#: The JPEG CIFAR-10 archive beside the checkout (../shared/data), or $DEPTHSCAPE_CIFAR10_JPEG.
REAL_CIFAR10 = Path(os.environ.get(
    "DEPTHSCAPE_CIFAR10_JPEG", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


def write_image_folder(root: Path, train_per_class: int = 24, test_per_class: int = 8,
                       classes: tuple[str, ...] = ("cat", "dog", "ship"), size: int = 32,
                       channels: int = 3, seed: int = 0) -> Path:
    """Write a small learnable ImageFolder dataset (train/ and test/) of PNGs; returns root.

    Each class has its own mean colour plus noise, so a few iterations can learn it.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = 40 + 80 * k
                array = np.clip(rng.normal(base, 30, (size, size, channels)), 0, 255).astype(np.uint8)
                image = Image.fromarray(array[..., 0] if channels == 1 else array)
                image.save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path_factory) -> Path:
    """A fresh tiny 3-class RGB ImageFolder dataset on disk."""
    return write_image_folder(tmp_path_factory.mktemp("tinydata"))


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """An empty data cache, also set as $DEPTHSCAPE_DATA so nothing touches ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DEPTHSCAPE_DATA", str(path))
    return path


@pytest.fixture
def real_cifar10() -> Path:
    """The JPEG CIFAR-10 archive; the test is skipped where it is absent."""
    if not REAL_CIFAR10.exists():
        pytest.skip(f"real CIFAR-10 archive not found at {REAL_CIFAR10}")
    return REAL_CIFAR10


@pytest.fixture
def trained_resnet8(tiny_data, cache_dir, tmp_path_factory) -> Path:
    """A ResNet-8 trained for two iterations on ``tiny_data``: its final checkpoint."""
    from depthscape.training.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    result = train(TrainConfig(model="resnet8", dataset=str(tiny_data), out_dir=str(out),
                               scale=2 / 64_000, progress=False))
    return result.paths.final


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine tiny models run far faster (and bit for
    bit like one-thread subprocesses) than with threads fighting for the cores."""
    with torch_threads(1):
        yield
