"""MNIST: 28x28 grey handwritten digits."""

from depthscape.core.datasets.registry import DatasetInfo, register_dataset

MNIST = register_dataset(DatasetInfo(
    name="mnist", torchvision="MNIST", pixel_mean_255=(33.0,),  # its rounded pixel mean
    summary="MNIST digits"))
