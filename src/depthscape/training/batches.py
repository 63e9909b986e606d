"""Which samples each training step uses, and this process's part of them.

:class:`BatchSchedule` is a pure function of (seed, step): seeded per-epoch permutations
read in fixed batches; :func:`shard_batch` cuts one global batch (and its augmentation
draws) into this rank's slice, so the ranks together train on the single-process inputs.
"""

from __future__ import annotations

import math

import torch

from depthscape.core.data import Preprocess, crop_flip_params, random_crop_flip
from depthscape.core.distributed import shard_bounds


class BatchSchedule:
    """Which training samples each step uses: a pure function of the seed and the step.

    Epoch ``e`` visits the samples in the order of a permutation seeded by (seed, e).
    ``stream=True`` (iteration recipes) reads the permutations back to back in fixed-size
    batches, crossing epoch boundaries, so every batch has the same shape; ``stream=False``
    (epoch recipes) ends each epoch with a smaller last batch, as a DataLoader does.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, stream: bool,
                 device: torch.device | str = "cpu"):
        self.n, self.batch, self.seed, self.stream = num_samples, batch_size, seed, stream
        self.device = device
        self.steps_per_epoch = math.ceil(num_samples / batch_size)
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            perm = torch.randperm(self.n, generator=generator)
            if torch.device(self.device).type == "cuda":  # from pinned memory: the CPU does not wait
                perm = perm.pin_memory().to(self.device, non_blocking=True)
            self._perms[epoch] = perm.to(self.device)
        return self._perms[epoch]

    def epoch_of(self, step: int) -> int:
        return (step * self.batch) // self.n if self.stream else step // self.steps_per_epoch

    def indices(self, step: int) -> torch.Tensor:
        """Sample indices (on the device) of 0-based ``step``."""
        if not self.stream:
            epoch, position = divmod(step, self.steps_per_epoch)
            start = position * self.batch
            return self.permutation(epoch)[start:start + self.batch]
        start = step * self.batch
        epoch, offset = divmod(start, self.n)
        parts, need = [], self.batch
        while need > 0:
            piece = self.permutation(epoch)[offset:offset + need]
            parts.append(piece)
            need -= len(piece)
            epoch, offset = epoch + 1, 0
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def batch_sizes(self) -> list[int]:
        """Every length :meth:`indices` returns: the batch, and an epoch's smaller last one."""
        last = 0 if self.stream else self.n % self.batch
        return sorted({self.batch, last} - {0})


def shard_batch(preprocess: Preprocess, images: torch.Tensor, labels: torch.Tensor,
                index: torch.Tensor, generator: torch.Generator | None, rank: int,
                world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the global batch ``index``: model input and labels.

    The augmentation draws are made for the whole global batch (the same calls a single
    process makes, from a generator every rank holds in the same state) and sliced like
    the indices, so the ranks together train on exactly the single-process inputs.
    """
    lo, hi = shard_bounds(len(index), rank, world_size)
    mine = images[index[lo:hi]]
    if preprocess.augment:
        params = crop_flip_params(len(index), preprocess.crop_padding, generator, images.device)
        mine = random_crop_flip(mine, preprocess.crop_padding, None,
                                params=tuple(p[lo:hi] for p in params))
    return preprocess.normalize(mine), labels[index[lo:hi]]
