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

from dataclasses import replace

from depthscape.core.errors import UserError
from depthscape.core.models import families, model_info
from depthscape.core.recipe import Recipe, preprocess_for  # noqa: F401  (re-exported)


def recipe_for(model_name: str) -> Recipe:
    """The recipe for ``model_name`` from its family's record; other depths take the nearest
    depth the family has a recipe for (ties: the shallower), renamed for the model."""
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
    found = {}
    for family in families():
        for depth in family.recipes:
            name = family.prefix if depth is None else f"{family.prefix}{depth}"
            found[name] = recipe_for(name)
    return found


def __getattr__(name: str):
    # RECIPES: the spec's recipes by the model they were written for, read off the family
    # records on use (so a family registered later is in it too)
    if name == "RECIPES":
        return _recipes_by_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
