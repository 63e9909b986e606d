"""Datasets by name: ``find_dataset("cifar-10")``, ``datasets()``.

Each named dataset is one module of this package that registers its own record
(:class:`DatasetInfo`): ``cifar10``, ``mnist``, ``fashion_mnist``. Every module here other
than the registry's own is imported below, so a new dataset is one new file and nothing else.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from depthscape.core.datasets.registry import (
    DEFAULT_DATASET,
    DatasetInfo,
    dataset_info,
    dataset_names_text,
    dataset_tag,
    datasets,
    find_dataset,
    register_dataset,
)

#: The dataset modules, in the order they register: CIFAR-10 (the study's) first.
DATASET_MODULES = ["cifar10"] + sorted(
    m.name for m in _pkgutil.iter_modules(__path__)
    if m.name not in {"registry", "cifar10"} and not m.name.startswith("_"))
for _name in DATASET_MODULES:
    _importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "DEFAULT_DATASET",
    "DATASET_MODULES",
    "DatasetInfo",
    "dataset_info",
    "dataset_names_text",
    "dataset_tag",
    "datasets",
    "find_dataset",
    "register_dataset",
]
