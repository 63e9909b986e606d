"""A training recipe: the type every recipe is written in (the spec's, a family's, a TOML
file's), with its learning-rate schedule as a pure function and its preprocessing.

The recipes themselves live with their model families (``FamilyInfo.recipes``), found by
model name through :func:`depthscape.core.recipes.recipe_for`; this module knows no model,
so the families can import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from depthscape.core.data import Dataset, Preprocess


@dataclass(frozen=True)
class Recipe:
    """One training recipe. ``unit`` says whether ``length`` counts iterations or epochs."""

    name: str
    optimizer: str  # "sgd" or "adam"
    lr: float  # base learning rate
    batch_size: int
    unit: str  # "iteration" or "epoch"
    length: int  # total iterations or epochs
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "step"  # "step": / decay at each milestone; "cosine": CosineAnnealingLR
    milestones: tuple[int, ...] = ()  # in iterations (step schedule)
    decay: float = 10.0  # the lr is divided by this at each milestone
    cosine_t_max: int = 0  # in epochs (cosine schedule), stepped once per epoch
    warmup_lr: float | None = None  # lr for the first warmup_length iterations
    warmup_length: int = 0
    augment: bool = False  # RandomCrop(32, padding=4) + RandomHorizontalFlip
    pixel_scale: float = 1.0  # 255: pixels in 0..255 (ResNet/PlainNet); 1: ToTensor's [0, 1]
    subtract_mean: bool = False  # subtract the dataset's per-channel 0..255 mean
    log_every: int = 100  # iterations between CSV rows (iteration recipes)

    def lr_at(self, iteration: int, epoch: int = 0) -> float:
        """Learning rate used for the update at 0-based ``iteration`` (in ``epoch``)."""
        if self.schedule == "cosine":
            # CosineAnnealingLR(T_max) stepped once per epoch, eta_min = 0, in closed form.
            return self.lr * (1 + math.cos(math.pi * epoch / self.cosine_t_max)) / 2
        if self.warmup_lr is not None and iteration < self.warmup_length:
            return self.warmup_lr
        decays = sum(1 for m in self.milestones if iteration >= m)
        return self.lr / self.decay**decays

    def scaled(self, factor: float) -> Recipe:
        """The same recipe with length, warm-up, milestones and cosine period times ``factor``."""
        if factor == 1:
            return self
        if factor <= 0:
            raise ValueError("scale factor must be positive")

        def scale(n: int) -> int:
            return max(1, round(n * factor)) if n else 0

        return replace(
            self,
            length=scale(self.length),
            milestones=tuple(scale(m) for m in self.milestones),
            warmup_length=scale(self.warmup_length),
            cosine_t_max=scale(self.cosine_t_max),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        data = dict(data)
        data["milestones"] = tuple(data.get("milestones", ()))
        return cls(**data)


def preprocess_for(recipe: Recipe, dataset: Dataset) -> Preprocess:
    """The recipe's preprocessing for ``dataset`` (its pixel mean where the recipe subtracts one)."""
    mean = dataset.pixel_mean_255 if recipe.subtract_mean else (0.0,) * dataset.in_channels
    return Preprocess(scale=recipe.pixel_scale, mean=tuple(mean), augment=recipe.augment)
