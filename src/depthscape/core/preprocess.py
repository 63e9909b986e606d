"""Preprocessing and augmentation on whole batches, on the device the data lives on.

:class:`Preprocess` turns uint8 pixels into model input (scale, minus the per-channel mean)
and, for training batches, crops and flips them first (:func:`random_crop_flip`: one
gather on the whole batch, the same distribution as torchvision's per-image transforms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from depthscape.core.errors import UserError


@dataclass(frozen=True)
class Preprocess:
    """How uint8 pixels become model input: ``(x * scale/255 - mean)``, optional crop+flip.

    ResNet/PlainNet (spec): pixels in 0..255 (``scale=255``), minus the per-channel mean,
    std 1, ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``. CNN: ``ToTensor()``
    only (``scale=1``, mean 0, no augmentation).
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    augment: bool = False
    crop_padding: int = 4
    #: The mean as device tensors, one per (device, dtype), built on first use: a tensor made
    #: from Python numbers per batch is a host-to-device copy that waits for the GPU.
    _means: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def mean_tensor(self, device: torch.device | str, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
        """The per-channel mean as a (1, C, 1, 1) ``dtype`` tensor on ``device``, made once."""
        key = (torch.device(device), dtype)
        mean = self._means.get(key)
        if mean is None:
            with torch.inference_mode(False):  # a normal tensor even when first used in evaluation
                mean = torch.tensor(self.mean, dtype=dtype).view(1, -1, 1, 1).to(key[0])
            self._means[key] = mean
        return mean

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float model input (no host-to-device copy after the first batch)."""
        x = images.to(dtype)
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if any(self.mean):
            x = x - self.mean_tensor(x.device, dtype)
        return x

    def train_batch(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Augment (if set) and normalise one training batch."""
        if self.augment:
            images = random_crop_flip(images, self.crop_padding, generator)
        return self.normalize(images)


def recorded_preprocess(stored, source: str) -> Preprocess | None:
    """The evaluation :class:`Preprocess` a run's config records (``config["preprocess"]``),
    checked: a table with a finite positive ``scale`` and a list of finite ``mean`` values;
    None where nothing is recorded (the caller's default applies). Anything else (a
    string, a list, a NaN scale: a hand-edited or damaged config) is one line naming
    ``source``."""
    if stored is None or stored == {}:
        return None

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    problem = None
    if not isinstance(stored, dict):
        problem = f"a {type(stored).__name__}, not a table of scale and mean"
    elif not number(stored.get("scale")) or stored["scale"] <= 0:
        problem = f"scale {stored.get('scale', 'missing')!r}, not a finite positive number"
    elif not isinstance(stored.get("mean"), (list, tuple)) or not stored["mean"] \
            or not all(number(m) for m in stored["mean"]):
        problem = f"mean {stored.get('mean', 'missing')!r}, not a list of finite numbers"
    if problem is not None:
        raise UserError(f"{source} records a preprocessing this version cannot use "
                        f"({problem[:120]}): retrain, or repair its config")
    return Preprocess(scale=float(stored["scale"]), mean=tuple(float(m) for m in stored["mean"]),
                      augment=False)


def crop_flip_params(batch: int, padding: int, generator: torch.Generator | None,
                     device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets (uniform over 0..2*padding) and flip flags (probability 0.5)."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=device)
    flips = torch.randint(0, 2, (batch,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flips


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator | None,
                     params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                     ) -> torch.Tensor:
    """``RandomCrop(size, padding)`` with zero fill + ``RandomHorizontalFlip()``, per sample.

    Done as one gather on the whole batch: pad with zeros, then pick each sample's window
    of rows ``top..top+H`` and columns ``left..left+W`` (reversed where it is flipped).
    Same distribution as the torchvision transforms applied image by image.
    """
    batch, channels, height, width = images.shape
    top, left, flip = params if params is not None else crop_flip_params(
        batch, padding, generator, images.device)
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(height, device=images.device)
    steps = torch.arange(width, device=images.device)
    cols = left[:, None] + torch.where(flip[:, None], width - 1 - steps, steps)
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]
