"""Datasets in memory: uint8 image tensors and int64 labels, and what identifies them.

Every split is held as ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64
(:class:`Split`); a :class:`Dataset` is a train and a test split with class names, its
shape, the pixel mean its preprocessing subtracts, and :func:`content_hash` of its
decoded content (a run records it; a resume on changed data is refused).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from depthscape.core.datasets import dataset_info, find_dataset
from depthscape.core.errors import UserError


@dataclass
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        # Always plain contiguous NCHW: a channels-last view (as decoding HWC images gives)
        # would send convolutions down other kernels and change results in the last bits.
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, size: int | None, seed: int = 0) -> Split:
        """A seeded random subset of ``size`` samples (the whole split when None or larger)."""
        if size is None or size >= len(self):
            return self
        if size <= 0:
            raise UserError(f"subset size must be positive, got {size}")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=generator)[:size].sort().values
        return Split(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    """A dataset's train and test splits and class names."""

    name: str
    train: Split
    test: Split
    classes: list[str]
    #: sha256 of the decoded arrays and class names (see :meth:`content_sha256`)
    content: str | None = field(default=None, compare=False, repr=False)

    def content_sha256(self) -> str:
        """A hash of the decoded pixels, labels and class names, computed once: a run
        records it, and a resume on data that changed under the same names is refused."""
        if self.content is None:
            self.content = content_hash(self.train, self.test, self.classes)
        return self.content

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pixel_mean_255(self) -> tuple[float, ...]:
        """The per-channel mean subtracted by the ResNet/PlainNet preprocessing: a named
        dataset's own (its record's), CIFAR-10's for other colour images (an ImageFolder of
        CIFAR-10, as the JPEG archive is), else this data's rounded mean."""
        info = find_dataset(self.name)
        if info is not None and info.name == self.name:  # exactly a record's (an ImageFolder
            return info.pixel_mean_255                   # named "MNIST" computes its own)
        if self.in_channels == 3:
            return dataset_info("cifar10").pixel_mean_255
        return tuple(float(v) for v in self.train.images.float().mean(dim=(0, 2, 3)).round())


def content_hash(train: Split, test: Split, classes: list[str]) -> str:
    """sha256 of two splits' shapes, pixels and labels and the class names."""
    digest = hashlib.sha256()
    for split in (train, test):
        for tensor in (split.images, split.labels):
            tensor = tensor.contiguous().cpu()
            digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(tensor.numpy().tobytes())
    digest.update("\n".join(classes).encode())
    return digest.hexdigest()
