"""Datasets by name: one :class:`DatasetInfo` record per dataset, registered by its own file.

A record holds everything about a named dataset: its name (also the file tag in run names:
``resnet-20_cifar10``), the other spellings it answers to, where its files come from
(torchvision's class) and the per-channel pixel mean its ResNet/PlainNet preprocessing
subtracts. The loader (:func:`depthscape.core.data.load_dataset`), the command line's help
and run lookup, and the preprocessing read the records; none of them tests a dataset's name.
A dataset that is not registered is an ImageFolder path (its folder's name is its tag).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from depthscape.core.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """One named dataset."""

    name: str  # canonical name, and the tag in run and file names
    torchvision: str  # the torchvision.datasets class its files are read (and fetched) with
    pixel_mean_255: tuple[float, ...]  # per-channel mean on the 0..255 scale
    aliases: tuple[str, ...] = ()  # other spellings (lower case) it answers to
    summary: str = ""  # a few words for help texts


#: The study's dataset: the default everywhere, and the one whose runs' file names carry no tag.
DEFAULT_DATASET = "cifar10"

_DATASETS: dict[str, DatasetInfo] = {}
_NAMES: dict[str, str] = {}  # every spelling -> canonical name


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Register ``info`` under its name and aliases (a name already taken is a ValueError)."""
    spellings = (info.name, *info.aliases)
    taken = [s for s in spellings if s in _NAMES]
    if taken:
        raise ValueError(f"dataset name {taken[0]!r} is already registered")
    _DATASETS[info.name] = info
    _NAMES.update({s: info.name for s in spellings})
    return info


def find_dataset(source: str) -> DatasetInfo | None:
    """The record ``source`` names (any spelling, any case), or None for a path."""
    name = _NAMES.get(source.strip().lower())
    return _DATASETS[name] if name is not None else None


def dataset_info(name: str) -> DatasetInfo:
    """The record of a registered dataset (a UserError naming the choices otherwise)."""
    info = find_dataset(name)
    if info is None:
        raise UserError(f"unknown dataset {name!r}: use {dataset_names_text()}")
    return info


def datasets() -> list[DatasetInfo]:
    """Every registered dataset, in registration order."""
    return list(_DATASETS.values())


def dataset_names_text() -> str:
    """``cifar10, mnist, fashion-mnist or a path to an ImageFolder directory/archive``: the
    datasets a command takes, for help texts and messages."""
    names = ", ".join(info.name for info in datasets())
    return f"{names} or a path to an ImageFolder directory/archive with train/ and test/"


def dataset_tag(source: str | None, default: str = DEFAULT_DATASET) -> str:
    """The tag a dataset's runs carry in their file names: the record's name, else the
    ImageFolder path's name up to its first dot (``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg``)."""
    if source is None:
        return default
    info = find_dataset(source)
    if info is not None:
        return info.name
    return PurePath(source).name.split(".")[0]
