"""Datasets as records (issue 30): each named dataset is one file of depthscape.core.datasets
that registers its DatasetInfo; the loader, the help texts, run lookup and the preprocessing
read the records."""

from __future__ import annotations

import pytest

from depthscape.core import datasets as registry_package
from depthscape.core.data import load_dataset
from depthscape.core.datasets import registry
from depthscape.core.errors import UserError


def test_every_dataset_module_registers_its_record():
    names = [info.name for info in registry.datasets()]
    assert names[0] == "cifar10" and {"mnist", "fashion-mnist"} <= set(names)
    assert len(names) == len(registry_package.DATASET_MODULES)
    for spelling, name in (("CIFAR-10", "cifar10"), (" fashion_mnist ", "fashion-mnist"),
                           ("FashionMNIST", "fashion-mnist"), ("mnist", "mnist")):
        assert registry.find_dataset(spelling).name == name
    assert registry.find_dataset("runs/my-images.tar.gz") is None


def test_a_registered_dataset_is_known_to_the_loader_help_and_run_names(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    monkeypatch.setattr(registry, "_NAMES", dict(registry._NAMES))
    info = registry.register_dataset(registry.DatasetInfo(
        name="svhn", torchvision="SVHN", pixel_mean_255=(111.0, 113.0, 120.0), aliases=("svhn-1",)))
    assert "svhn" in registry.dataset_names_text()
    assert registry.dataset_tag("SVHN-1") == "svhn" and registry.dataset_tag("a/b.c.tar") == "b"
    assert registry.dataset_tag(None) == registry.DEFAULT_DATASET
    with pytest.raises(ValueError, match="already registered"):
        registry.register_dataset(info)
    with pytest.raises(UserError, match="unknown dataset 'nothing': use cifar10, .*svhn"):
        load_dataset("nothing", cache_dir=tmp_path)


def test_only_a_records_exact_name_takes_its_pixel_mean():
    import torch

    from depthscape.core.splits import Dataset, Split

    colour = Split(torch.full((2, 3, 4, 4), 10, dtype=torch.uint8), torch.zeros(2).long())
    grey = Split(torch.full((2, 1, 4, 4), 10, dtype=torch.uint8), torch.zeros(2).long())
    assert Dataset("mnist", grey, grey, ["a"]).pixel_mean_255 == (33.0,)
    # an ImageFolder's name is its folder's: "MNIST" is not the record, its mean is its own
    assert Dataset("MNIST", grey, grey, ["a"]).pixel_mean_255 == (10.0,)
    assert Dataset("Fashion_MNIST", colour, colour, ["a"]).pixel_mean_255 == (125.0, 123.0, 114.0)
