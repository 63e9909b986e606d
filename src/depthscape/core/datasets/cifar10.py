"""CIFAR-10: the study's dataset (32x32 colour images, 10 classes)."""

from depthscape.core.datasets.registry import DatasetInfo, register_dataset

#: The spec's per-channel mean, subtracted from 0..255 pixels by the ResNet/PlainNet recipes.
CIFAR10 = register_dataset(DatasetInfo(
    name="cifar10", torchvision="CIFAR10", pixel_mean_255=(125.0, 123.0, 114.0),
    aliases=("cifar-10",), summary="CIFAR-10 (the study's)"))
