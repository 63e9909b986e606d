"""The spec's training recipes, as data.

Each recipe is a frozen dataclass; :func:`recipe_for` picks the one for a model name and
:meth:`Recipe.scaled` shrinks a schedule for machines without a GPU. The learning rate at
any step is the pure function :meth:`Recipe.lr_at`, so a resumed run needs no scheduler
state to continue exactly.

Each model family keeps the recipes written for it in its own record
(``FamilyInfo.recipes``, by depth, beside the model's code); other depths take the recipe
of the nearest depth the family has one for (ties go to the shallower one): e.g. ResNet-32
and ResNet-38 use ResNet-20's, ResNet-44 ResNet-56's, ResNet-86 ResNet-110's warm-up recipe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from depthscape.core.data import Dataset, Preprocess
from depthscape.core.errors import UserError


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


def recipe_for(model_name: str) -> Recipe:
    """The recipe for ``model_name`` from its family's record; other depths take the nearest
    depth the family has a recipe for (ties: the shallower), renamed for the model."""
    # the family modules define their recipes with this module's Recipe: imported here, not
    # at the top, so that either module may be imported first
    from depthscape.core.models import model_info

    info = model_info(model_name)
    recipes = info.family.recipes
    if not recipes:
        raise UserError(f"{info.name} has no recipe of its own: give one (--recipe FILE)")
    if info.depth is None or None in recipes:
        recipe = recipes[None]
    else:
        depths = [d for d in recipes if d is not None]
        recipe = recipes[min(depths, key=lambda d: (abs(d - info.depth), d))]
    return recipe if recipe.name == info.name else replace(recipe, name=info.name)


def _recipes_by_model() -> dict[str, Recipe]:
    """Every family's recipes by the model they were written for (``resnet110``, ``cnn``)."""
    from depthscape.core.models import families

    found = {}
    for family in families():
        for depth in family.recipes:
            name = family.prefix if depth is None else f"{family.prefix}{depth}"
            found[name] = recipe_for(name)
    return found


def __getattr__(name: str):
    # RECIPES: the spec's recipes by the model they were written for, read off the family
    # records on use (the records import this module, so it cannot be built at import)
    if name == "RECIPES":
        return _recipes_by_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preprocess_for(recipe: Recipe, dataset: Dataset) -> Preprocess:
    """The recipe's preprocessing for ``dataset`` (its pixel mean where the recipe subtracts one)."""
    mean = dataset.pixel_mean_255 if recipe.subtract_mean else (0.0,) * dataset.in_channels
    return Preprocess(scale=recipe.pixel_scale, mean=tuple(mean), augment=recipe.augment)
