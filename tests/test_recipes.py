"""The spec's recipes as data: learning rate at every boundary, scaling, nearest-depth rule."""

from __future__ import annotations

import math

import pytest

from depthscape.core.recipes import RECIPES, recipe_for

# (iteration, lr) at both sides of every boundary, per the spec (sections 5.2 and 6.2).
STEP_BOUNDARIES = {
    "resnet20": [(0, 0.1), (399, 0.1), (400, 0.1), (31_999, 0.1), (32_000, 0.01),
                 (47_999, 0.01), (48_000, 0.001), (63_999, 0.001)],
    "resnet110": [(0, 0.01), (399, 0.01), (400, 0.1), (31_999, 0.1), (32_000, 0.01),
                  (47_999, 0.01), (48_000, 0.001), (63_999, 0.001)],
    "plain110": [(0, 1e-4), (399, 1e-4), (400, 1e-3), (31_999, 1e-3), (32_000, 1e-4),
                 (47_999, 1e-4), (48_000, 1e-5), (63_999, 1e-5)],
}
STEP_BOUNDARIES["resnet56"] = STEP_BOUNDARIES["plain20"] = STEP_BOUNDARIES["plain56"] = (
    STEP_BOUNDARIES["resnet20"])


@pytest.mark.parametrize("name", sorted(STEP_BOUNDARIES))
def test_step_recipes(name):
    recipe = recipe_for(name)
    assert (recipe.optimizer, recipe.momentum, recipe.weight_decay) == ("sgd", 0.9, 1e-4)
    assert (recipe.batch_size, recipe.unit, recipe.length) == (128, "iteration", 64_000)
    assert recipe.augment and recipe.pixel_scale == 255 and recipe.subtract_mean
    for iteration, lr in STEP_BOUNDARIES[name]:
        assert math.isclose(recipe.lr_at(iteration), lr, rel_tol=1e-12), (name, iteration)


def test_cnn_recipe_is_adam_cosine_per_epoch():
    recipe = recipe_for("cnn")
    assert (recipe.optimizer, recipe.lr, recipe.batch_size) == ("adam", 1e-3, 32)
    assert (recipe.unit, recipe.length, recipe.cosine_t_max) == ("epoch", 50, 50)
    assert not recipe.augment and recipe.pixel_scale == 1 and not recipe.subtract_mean
    assert recipe.lr_at(0, epoch=0) == 1e-3
    assert math.isclose(recipe.lr_at(10_000, epoch=25), 5e-4)
    assert recipe.lr_at(0, epoch=49) < 2e-6
    # Constant within an epoch: stepped once per epoch.
    assert recipe.lr_at(0, epoch=3) == recipe.lr_at(1500, epoch=3)


def test_cnn_schedule_matches_torch_cosine_annealing():
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50)
    recipe = recipe_for("cnn")
    for epoch in range(50):
        assert math.isclose(optimizer.param_groups[0]["lr"], recipe.lr_at(0, epoch),
                            rel_tol=1e-9, abs_tol=1e-15)
        optimizer.step()
        scheduler.step()


def test_scaled_schedule_moves_every_point():
    recipe = recipe_for("resnet110").scaled(0.01)
    assert (recipe.length, recipe.milestones, recipe.warmup_length) == (640, (320, 480), 4)
    assert recipe.lr_at(3) == 0.01 and recipe.lr_at(4) == 0.1 and recipe.lr_at(320) == 0.01
    assert recipe_for("cnn").scaled(0.1).length == 5
    assert recipe_for("resnet20").scaled(1) is recipe_for("resnet20")


@pytest.mark.parametrize("name,nearest", [("resnet32", "resnet20"), ("resnet44", "resnet56"),
                                          ("plain86", "plain110"), ("resnet8", "resnet20")])
def test_other_depths_take_the_nearest_recipe(name, nearest):
    recipe = recipe_for(name)
    reference = RECIPES[nearest]
    assert recipe.name == name
    assert (recipe.lr, recipe.warmup_lr, recipe.milestones) == (
        reference.lr, reference.warmup_lr, reference.milestones)
