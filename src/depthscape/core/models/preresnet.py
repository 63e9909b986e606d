"""Pre-activation CIFAR ResNets of depth 6n+2 (He et al. 2016, "Identity Mappings in Deep
Residual Networks"), and the family's record.

The ResNet of :mod:`depthscape.core.models.resnet` with each block reordered to
BN-ReLU-conv3x3-BN-ReLU-conv3x3 and nothing after the addition, so the shortcut path is a
pure identity from block to block; a final BN-ReLU comes before the pooling. The stem is a
single conv3x3(16): its BN-ReLU is the first block's pre-activation, taken, as in the paper,
"before splitting into two paths" (so that block's shortcut sees the activated input). Where
a stage begins (16 -> 32 -> 64 channels, stride 2) the block's shortcut is the ResNet's
parameter-free option A applied to the pre-activated input, as fb.resnet.torch's
``preresnet`` does. Same widths, depth rule, initialisation, recipe and memory estimate as
the ResNet; it is compared with the ResNet at each depth in the study.

This file is the whole family: the package imports every module beside the registry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.core.models.registry import FamilyInfo, register_family
from depthscape.core.models.resnet import (
    RESNET_RECIPES,
    cifar_training_bytes,
    depth_to_blocks,
    option_a_shortcut,
)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the identity (option-A) shortcut; no ReLU after.

    ``activated_shortcut``: the shortcut takes the pre-activated input ``relu(bn1(x))``
    instead of ``x`` (the first block of each stage: the activation comes before the split).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 activated_shortcut: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.activated_shortcut = activated_shortcut
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + option_a_shortcut(pre if self.activated_shortcut else x,
                                       self.out_channels, self.stride)


class CifarPreResNet(nn.Module):
    """conv3x3(16), three groups of n pre-activation blocks at 16/32/64 channels, BN-ReLU,
    GAP, Linear."""

    def __init__(self, blocks_per_group: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.blocks_per_group = blocks_per_group
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(16, 16, blocks_per_group, stride=1)
        self.layer2 = self._make_layer(16, 32, blocks_per_group, stride=2)
        self.layer3 = self._make_layer(32, 64, blocks_per_group, stride=2)
        self.bn = nn.BatchNorm2d(64)  # the final BN-ReLU before pooling
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _make_layer(in_channels: int, out_channels: int, blocks: int, stride: int):
        layers = [PreActBlock(in_channels, out_channels, stride, activated_shortcut=True)]
        layers += [PreActBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build_preresnet(depth: int, in_channels: int = 3, num_classes: int = 10) -> CifarPreResNet:
    """A pre-activation ResNet of ``depth`` = 6n+2, with PyTorch's default initialisation:
    ``get_model`` then applies the family's Kaiming-normal scheme."""
    return CifarPreResNet(depth_to_blocks(depth), in_channels, num_classes)


register_family(FamilyInfo(
    prefix="preresnet", label="PreResNet", file_name="preresnet", run_name="preresnet{depth}",
    checkpoint_name="preresnet-{depth}_{dataset}", order=3, init="kaiming-normal",
    aliases=("preresnet", "preactresnet"), depth_rule=depth_to_blocks, depth_form="6n+2",
    factory=build_preresnet,
    recipes=RESNET_RECIPES,  # the ResNet's CIFAR recipe at every depth (He et al. 2016, s. 4.2)
    training_bytes=cifar_training_bytes,  # the same layout and activations kept per conv
    paired_with="resnet",  # the paper's comparison: pre- vs post-activation at each depth
))
