"""Datasets as uint8 tensors, loaded once by name or path, and whole-batch augmentation.

Every split is held as ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64. Sources:

* ``cifar10``, ``mnist``, ``fashion-mnist`` through torchvision, downloaded on first use
  into the cache directory (``$DEPTHSCAPE_DATA`` or ``~/.cache/depthscape``) or read from
  ``data_dir`` where the files already lie there;
* a directory in ImageFolder layout with ``train/`` and ``test/`` (class folders inside,
  alphabetical order = label order), or a ``.tar``/``.tar.gz`` archive holding one. Decoded
  images are cached as ``.npz`` in the cache directory so the next start is fast.

This module is the entry point (:func:`load_dataset`) and the torchvision source; the
pieces live beside it and every name stays importable from here: the types and their
content hash in :mod:`depthscape.core.splits`, the cache folder in
:mod:`depthscape.core.datacache`, ImageFolder trees and archives in
:mod:`depthscape.core.imagefolder`, preprocessing and augmentation in
:mod:`depthscape.core.preprocess`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from depthscape.core.datacache import (  # noqa: F401  (re-exported)
    cache_file_for,
    default_cache_dir,
    make_cache_dir,
)
from depthscape.core.errors import UserError
from depthscape.core.imagefolder import (  # noqa: F401  (re-exported)
    MAX_IMAGE_SIDE,
    load_image_folder,
    looks_like_image_folder,
)
from depthscape.core.preprocess import (  # noqa: F401  (re-exported)
    Preprocess,
    crop_flip_params,
    random_crop_flip,
)
from depthscape.core.splits import (  # noqa: F401  (re-exported)
    PIXEL_MEANS_255,
    Dataset,
    Split,
    content_hash,
)

_TORCHVISION_NAMES = {
    "cifar10": "CIFAR10",
    "cifar-10": "CIFAR10",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "fashionmnist": "FashionMNIST",
    "fashion_mnist": "FashionMNIST",
}
#: The dataset names torchvision loads (any other ``source`` is a path).
TORCHVISION_NAMES = frozenset(_TORCHVISION_NAMES)


def load_dataset(source: str = "cifar10", data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load a dataset by name or path, each split once, as uint8 tensors.

    ``source`` is ``cifar10``, ``mnist``, ``fashion-mnist`` or a path to an ImageFolder
    directory/archive. ``data_dir`` points at data already on disk: for a named dataset,
    the folder torchvision's files lie in (or an ImageFolder tree/archive); it wins over
    the cache. A missing dataset raises :class:`UserError` saying what was looked for.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = source.strip().lower()
    if key in _TORCHVISION_NAMES:
        name = "cifar10" if _TORCHVISION_NAMES[key] == "CIFAR10" else (
            "mnist" if _TORCHVISION_NAMES[key] == "MNIST" else "fashion-mnist")
        if data_dir is not None and looks_like_image_folder(Path(data_dir)):
            return load_image_folder(data_dir, cache, name=name)
        root = Path(data_dir).expanduser() if data_dir is not None else cache
        return _load_torchvision(name, _TORCHVISION_NAMES[key], root,
                                 download=download and data_dir is None)
    path = Path(source).expanduser()
    if path.exists():
        return load_image_folder(path, cache)
    raise UserError(
        f"unknown dataset {source!r}: use cifar10, mnist, fashion-mnist or a path to an "
        "ImageFolder directory/archive with train/ and test/"
    )


def _load_torchvision(name: str, class_name: str, root: Path, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    dataset_class = getattr(tvd, class_name)
    splits = {}
    if not download and not root.is_dir():  # a --data-dir is read, never created
        raise UserError(f"data directory {root} does not exist" if not root.exists()
                        else f"--data-dir {root} is not a directory")
    if download:
        try:
            made = make_cache_dir(root)
        except OSError:
            made = True  # torchvision's download names the reason
        if not made:
            raise UserError(f"cannot download {name} into {root}: the home folder "
                            f"{Path.home()} does not exist; give --cache-dir or set "
                            "DEPTHSCAPE_DATA")
    for train in (True, False):
        try:
            ds = dataset_class(str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise UserError(
                    f"{name} not found in {root}: expected torchvision's files there "
                    f"(e.g. cifar-10-batches-py/), or an ImageFolder with train/ and test/"
                ) from None
            try:
                ds = dataset_class(str(root), train=train, download=True)
            except Exception as error:  # network errors come in many types
                raise UserError(
                    f"{name} is not in {root} and could not be downloaded "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}); "
                    "pass --data-dir to a folder holding it (torchvision layout or ImageFolder "
                    "train/ and test/, or a .tar.gz of one)"
                ) from None
        images = torch.as_tensor(np.asarray(ds.data))
        images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images.unsqueeze(1)
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        splits[train] = Split(images.contiguous(), labels)
        classes = list(ds.classes)
    return Dataset(name, splits[True], splits[False], classes)
