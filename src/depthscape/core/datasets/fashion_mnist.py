"""Fashion-MNIST: 28x28 grey images of clothing."""

from depthscape.core.datasets.registry import DatasetInfo, register_dataset

FASHION_MNIST = register_dataset(DatasetInfo(
    name="fashion-mnist", torchvision="FashionMNIST", pixel_mean_255=(73.0,),  # rounded mean
    aliases=("fashionmnist", "fashion_mnist"), summary="Fashion-MNIST"))
