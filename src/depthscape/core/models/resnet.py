"""CIFAR ResNets and PlainNets of depth 6n+2 (spec sections 5 and 6), and their records.

One block class covers both: ``shortcut=True`` gives He et al.'s basic block with the
parameter-free option-A shortcut, ``shortcut=False`` the same block with the addition removed.
Everything else specific to the two families lives here too: the 6n+2 depth rule, the
spec's recipes, the memory estimate, the file names and the ResNet/PlainNet pairing.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.core.errors import UserError
from depthscape.core.models.registry import FamilyInfo, register_family, register_model
from depthscape.core.recipe import Recipe


def depth_to_blocks(depth: int) -> int:
    """Blocks per group n for a CIFAR ResNet of ``depth`` = 6n+2; a bad depth is a UserError."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise UserError(
            f"depth {depth} is not of the form 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110)"
        )
    return (depth - 2) // 6


#: Per block of the CIFAR ResNet layout: (channels, pixels per side) of its three stages.
CIFAR_STAGES = ((16, 32), (32, 16), (64, 8))
#: Activation tensors kept for the backward pass per convolution (conv, BN, ReLU outputs).
_SAVED_PER_CONV = 3


def cifar_training_bytes(depth: int, batch_size: int) -> int:
    """Estimated memory of training a CIFAR ResNet/PlainNet of ``depth`` at ``batch_size``.

    Weights, gradients and SGD momentum (three float32 copies of the 3x3 convolutions) plus
    the activations kept for the backward pass. A lower bound in spirit: the real use is
    somewhat higher, so what this refuses cannot fit. Its memory follows from its depth
    alone (three stages of 16, 32 and 64 channels at 32, 16 and 8 pixels, two
    convolutions per block).
    """
    blocks = max(0, (depth - 2) // 6)
    params = sum(2 * 9 * c * c for c, _ in CIFAR_STAGES) * blocks
    per_image = sum(2 * _SAVED_PER_CONV * c * s * s for c, s in CIFAR_STAGES) * blocks
    return 4 * (3 * params + per_image * batch_size)


def option_a_shortcut(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    """The identity, or where the shape changes, subsampling plus zero channel padding.

    ``avg_pool2d`` with kernel 1 and stride 2 keeps every second pixel, which is exactly
    He et al.'s option A; the new channels are zeros split evenly before and after the old
    ones (as akamaster's CIFAR ResNets do). No parameters.
    """
    if stride != 1:
        x = F.avg_pool2d(x, kernel_size=1, stride=stride)
    extra = out_channels - x.shape[1]
    if extra:
        x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
    return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut when ``shortcut`` is set, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + option_a_shortcut(x, self.out_channels, self.stride)
        return F.relu(out)


class CifarResNet(nn.Module):
    """conv3x3(16)-BN-ReLU, three groups of n blocks at 16/32/64 channels, GAP, Linear."""

    def __init__(self, blocks_per_group: int, shortcut: bool = True, in_channels: int = 3,
                 num_classes: int = 10):
        super().__init__()
        self.blocks_per_group = blocks_per_group
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, 16, blocks_per_group, stride=1)
        self.layer2 = self._make_layer(16, 32, blocks_per_group, stride=2)
        self.layer3 = self._make_layer(32, 64, blocks_per_group, stride=2)
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, in_channels: int, out_channels: int, blocks: int, stride: int):
        layers = [BasicBlock(in_channels, out_channels, stride, self.shortcut)]
        layers += [BasicBlock(out_channels, out_channels, 1, self.shortcut) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build_resnet(depth: int, shortcut: bool = True, in_channels: int = 3, num_classes: int = 10):
    """A ResNet (``shortcut=True``) or PlainNet of ``depth`` = 6n+2, with PyTorch's default
    initialisation: ``get_model`` then applies the family's Kaiming-normal scheme."""
    return CifarResNet(depth_to_blocks(depth), shortcut, in_channels, num_classes)


def _register(depth: int, shortcut: bool) -> None:
    name = f"{'resnet' if shortcut else 'plain'}{depth}"

    @register_model(name)
    def factory(in_channels: int = 3, num_classes: int = 10):
        return build_resnet(depth, shortcut, in_channels, num_classes)

    factory.__doc__ = f"{'ResNet' if shortcut else 'PlainNet'}-{depth}."


#: The spec's ResNet recipe (sections 5.2 and 6.2): SGD 0.1, momentum 0.9, weight decay
#: 1e-4, batch 128, 64,000 iterations, lr / 10 at 32,000 and 48,000; pixels in 0..255
#: minus the per-channel mean, RandomCrop(32, padding=4) + RandomHorizontalFlip.
RESNET_RECIPE = Recipe(
    name="resnet",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    batch_size=128,
    unit="iteration",
    length=64_000,
    milestones=(32_000, 48_000),
    augment=True,
    pixel_scale=255.0,
    subtract_mean=True,
)
#: By the depth they were written for; other depths take the nearest.
RESNET_RECIPES = {
    20: replace(RESNET_RECIPE, name="resnet20"),
    56: replace(RESNET_RECIPE, name="resnet56"),
    # ResNet-110: lr 0.01 for the first 400 iterations, then 0.1.
    110: replace(RESNET_RECIPE, name="resnet110", warmup_lr=0.01, warmup_length=400),
}
PLAIN_RECIPES = {
    20: replace(RESNET_RECIPE, name="plain20"),
    56: replace(RESNET_RECIPE, name="plain56"),
    # PlainNet-110: lr 1e-4 for the first 400 iterations, then 1e-3.
    110: replace(RESNET_RECIPE, name="plain110", lr=1e-3, warmup_lr=1e-4, warmup_length=400),
}

# The spec's file names: logs/resnet56_log.csv + models/resnet-56_cifar10.pth, and
# logs/plainnet56_log.csv + models/plainnet-56.cifar10.pth (sic: a dot).
register_family(FamilyInfo(
    prefix="resnet", label="ResNet", file_name="resnet", run_name="resnet{depth}",
    checkpoint_name="resnet-{depth}_{dataset}", order=1, init="kaiming-normal",
    depth_rule=depth_to_blocks, depth_form="6n+2",
    factory=functools.partial(build_resnet, shortcut=True), recipes=RESNET_RECIPES,
    training_bytes=cifar_training_bytes, paired_with="plain", figure=2))
register_family(FamilyInfo(
    prefix="plain", label="PlainNet", file_name="plainnet", run_name="plainnet{depth}",
    checkpoint_name="plainnet-{depth}.{dataset}", order=2, init="kaiming-normal",
    aliases=("plainnet",), depth_rule=depth_to_blocks, depth_form="6n+2",
    factory=functools.partial(build_resnet, shortcut=False), recipes=PLAIN_RECIPES,
    training_bytes=cifar_training_bytes, figure=3))
for _shortcut in (True, False):
    for _depth in (20, 56, 110):
        _register(_depth, _shortcut)
