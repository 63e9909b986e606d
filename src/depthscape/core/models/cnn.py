"""The baseline CNN of the study (spec section 4)."""

from __future__ import annotations

import torch
from torch import nn

from depthscape.core.models.registry import FamilyInfo, register_family, register_model
from depthscape.core.recipe import Recipe


class Net(nn.Module):
    """Four Conv3x3(same) -> ReLU -> BN -> MaxPool2 blocks, then 1024 -> 256 -> 10.

    Channels 3 -> 32 -> 64 -> 128 -> 256; a 32x32 input leaves 256x2x2 = 1024 features.
    654,346 parameters for CIFAR-10 input. The layers keep PyTorch's default
    initialisation (the family's ``init``: the spec changes nothing about it).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        widths = (in_channels, 32, 64, 128, 256)
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding="same"),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        side = image_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x)


@register_model("cnn")
def cnn(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> Net:
    """The study's baseline CNN."""
    return Net(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


#: The spec's CNN recipe: Adam 1e-3, batch 32, 50 epochs, CosineAnnealingLR(T_max=50)
#: stepped per epoch; ToTensor's [0, 1] pixels, no mean subtraction, no augmentation.
CNN_RECIPE = Recipe(
    name="cnn",
    optimizer="adam",
    lr=1e-3,
    batch_size=32,
    unit="epoch",
    length=50,
    schedule="cosine",
    cosine_t_max=50,
)

register_family(FamilyInfo(
    prefix="cnn", label="CNN", file_name="cnn", run_name="cnn",
    checkpoint_name="cnn_{dataset}", order=0,
    curve_unit="epoch",  # its recipe trains and logs by epochs
    data_kwargs=("image_size",),  # its classifier's input size depends on it
    init="pytorch-default",  # the spec's plain PyTorch module: no initialisation of its own
    recipes={None: CNN_RECIPE},
    figure=1,  # the spec's Figure 1: the baseline alone, training vs validation
))
