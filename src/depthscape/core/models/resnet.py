"""CIFAR ResNets and PlainNets of depth 6n+2 (spec sections 5 and 6).

One block class covers both: ``shortcut=True`` gives He et al.'s basic block with the
parameter-free option-A shortcut, ``shortcut=False`` the same block with the addition removed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.core.models.registry import (
    FamilyInfo,
    depth_to_blocks,
    register_depth_family,
    register_family,
    register_model,
)


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


register_depth_family("resnet", functools.partial(build_resnet, shortcut=True))
register_depth_family("plain", functools.partial(build_resnet, shortcut=False))
# The spec's file names: logs/resnet56_log.csv + models/resnet-56_cifar10.pth, and
# logs/plainnet56_log.csv + models/plainnet-56.cifar10.pth (sic: a dot).
register_family(FamilyInfo(prefix="resnet", label="ResNet", file_name="resnet",
                           run_name="resnet{depth}", checkpoint_name="resnet-{depth}_{dataset}",
                           order=1, init="kaiming-normal"))
register_family(FamilyInfo(prefix="plain", label="PlainNet", file_name="plainnet",
                           run_name="plainnet{depth}",
                           checkpoint_name="plainnet-{depth}.{dataset}", order=2,
                           init="kaiming-normal"))
for _shortcut in (True, False):
    for _depth in (20, 56, 110):
        _register(_depth, _shortcut)
