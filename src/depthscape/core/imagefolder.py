"""ImageFolder datasets: a ``train/`` and ``test/`` tree of class folders, or a tar archive of one.

Class folders in alphabetical order are the labels; every image is decoded to uint8 (16-bit
grey scaled to 8 bits, other modes to RGB), checked (one shape per split, at least two
classes, every test class trained on, no image larger than :data:`MAX_IMAGE_SIDE` a side)
and the decoded arrays are cached as ``.npz`` in the data cache
(:func:`~depthscape.core.datacache.cache_file_for`), so the next start is fast.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from depthscape.core.atomic import atomic_open, refuse_link, remove_stale_temporaries
from depthscape.core.datacache import cache_file_for, default_cache_dir, make_cache_dir
from depthscape.core.errors import UserError, notice
from depthscape.core.splits import Dataset, Split

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
#: The largest width or height decoded, read from an image's header before its pixels: a
#: whole split is held in memory at one shape, so a 10000x10000 image (1.7 GB as int32)
#: is refused before it is decoded.
MAX_IMAGE_SIDE = 4096


def looks_like_image_folder(path: Path) -> bool:
    """Whether ``path`` is a tar archive or holds ``train/`` and ``test/`` (or one level down)."""
    path = path.expanduser()
    if path.is_file():
        return path.name.endswith((".tar", ".tar.gz", ".tgz"))
    return _find_split_root(path) is not None


def _find_split_root(path: Path) -> Path | None:
    """The folder holding ``train/`` and ``test/``: ``path`` itself or one level down."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if (child / "train").is_dir() and (child / "test").is_dir():
                return child
    return None


def load_image_folder(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      name: str | None = None) -> Dataset:
    """Read an ImageFolder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) or archive.

    Decoded arrays are cached in ``cache_dir`` under a key made of the path and the sizes and
    modification times of its files (:func:`cache_file_for`), so a changed source is decoded
    again; the hash of the decoded content is computed once and cached with them.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise UserError(f"data not found: {path} does not exist")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache_file_for(path, cache)
    dataset_name = name or path.name.split(".")[0]
    refuse_link(cache_file, "decoded-data cache")
    if cache_file.exists():
        try:
            with np.load(cache_file) as archive:
                classes = [str(c) for c in archive["classes"]]
                content = (str(archive["content_sha256"]) if "content_sha256" in archive.files
                           else None)  # older caches: hashed on first use
                return Dataset(
                    dataset_name,
                    Split(torch.from_numpy(archive["train_x"]), torch.from_numpy(archive["train_y"])),
                    Split(torch.from_numpy(archive["test_x"]), torch.from_numpy(archive["test_y"])),
                    classes, content,
                )
        except Exception:
            pass  # a damaged cache is decoded again below
    if path.is_file():
        splits, classes = _decode_archive(path)
    else:
        root = _find_split_root(path)
        if root is None:
            raise UserError(f"no train/ and test/ folders found in {path} (ImageFolder layout expected)")
        splits, classes = _decode_tree(root)
    dataset = Dataset(dataset_name, splits["train"], splits["test"], classes)
    dataset.content_sha256()  # once, while decoding; kept in the cache beside the arrays
    try:
        if not make_cache_dir(cache):
            return dataset  # no home folder to cache in: decoded again next time
        remove_stale_temporaries([cache_file])  # of decodes that were killed (pid dead)
        with atomic_open(cache_file, "wb") as handle:  # a new file, never through a link
            np.savez(handle, train_x=dataset.train.images.numpy(),
                     train_y=dataset.train.labels.numpy(), test_x=dataset.test.images.numpy(),
                     test_y=dataset.test.labels.numpy(), classes=np.array(classes),
                     content_sha256=np.array(dataset.content))
    except (OSError, UserError):
        pass  # caching is an optimisation; a read-only cache dir must not stop the run
    return dataset


def _first_line(error: BaseException) -> str:
    """An exception's message on one line (tarfile's and PIL's span several)."""
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def _pixels(image, where: str) -> np.ndarray:
    """An opened image's pixels as HxW or HxWxC uint8, 16-bit grey scaled to 8 bits."""
    width, height = image.size  # from the header: nothing is decoded yet
    if max(width, height) > MAX_IMAGE_SIDE:
        raise UserError(f"the image {where} is {width}x{height} pixels, larger than the "
                        f"{MAX_IMAGE_SIDE} a side depthscape decodes; resize or remove it")
    if image.mode.startswith("I"):  # 16-bit grey (I;16, I;16B, or I from a PNG)
        wide = np.asarray(image).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise UserError(f"the image {where} holds {image.mode} values outside 0..65535; "
                            "save it as 8 or 16 bits a channel")
        return (wide >> 8).astype(np.uint8)  # the high byte, as Pillow reads 16-bit RGB
    if image.mode == "F":
        raise UserError(f"the image {where} holds floating-point pixels; save it as 8 bits "
                        "a channel")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _decode(data: bytes | Path, where: str) -> np.ndarray:
    """An image as a CxHxW uint8 array; ``where`` names it (file, or archive and member)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            array = _pixels(image, where)
    except UserError:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        raise UserError(f"cannot decode the image {where}: {_first_line(error)}; "
                        "replace or remove it") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[2]} with {shape[0]} channel{'' if shape[0] == 1 else 's'}"


def _stack(items: list[tuple[str, str, np.ndarray]], classes: list[str], split: str,
           where: str) -> Split:
    """One split from (class, file, CxHxW array) items; ``where`` names the split's folder."""
    chosen = sorted((c, f, a) for c, f, a in items)
    if not chosen:
        raise UserError(f"the {split}/ split of {where} holds no images")
    shapes: dict[tuple[int, ...], int] = {}
    for _, _, array in chosen:
        shapes[array.shape] = shapes.get(array.shape, 0) + 1
    if len(shapes) != 1:
        usual = max(shapes, key=shapes.get)
        odd_class, odd_file, odd = next(item for item in chosen if item[2].shape != usual)
        raise UserError(f"images in {split}/ of {where} differ in shape: "
                        f"{split}/{odd_class}/{odd_file} is {_shape_text(odd.shape)}, "
                        f"{shapes[usual]} other(s) are {_shape_text(usual)}; all must match")
    index = {c: i for i, c in enumerate(classes)}
    images = torch.from_numpy(np.stack([a for _, _, a in chosen]))
    labels = torch.tensor([index[c] for c, _, _ in chosen], dtype=torch.int64)
    return Split(images, labels)


def _check_classes(where: str, train: list[str], test: set[str], empty: list[str]) -> None:
    """The classes a dataset trains on: at least two, and every test class among them."""
    unknown = sorted(test - set(train))
    if unknown:
        raise UserError(f"the test/ split of {where} has class {unknown[0]!r}"
                        f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''} that "
                        "train/ has no images of; every test class must be trained on")
    if len(train) < 2:
        named = f" ({train[0]!r})" if train else ""
        raise UserError(f"{where} has {len(train)} class{'' if len(train) == 1 else 'es'} with "
                        f"training images{named}; a classifier needs at least 2")
    if empty:
        notice(f"{where}: the class folder(s) {', '.join(repr(c) for c in empty)} of train/ "
               f"hold no images and are left out; training on {len(train)} classes")


def _decode_tree(root: Path) -> tuple[dict[str, Split], list[str]]:
    def images_in(folder: Path) -> list[Path]:
        return [f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES]

    folders = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not folders:
        raise UserError(f"{root / 'train'} holds no class folders")
    classes = [c for c in folders if images_in(root / "train" / c)]
    test = {d.name for d in (root / "test").iterdir() if d.is_dir() and images_in(d)}
    _check_classes(str(root), classes, test, [c for c in folders if c not in classes])
    splits = {}
    for split in ("train", "test"):
        items = []
        for class_name in classes:
            folder = root / split / class_name
            if not folder.is_dir():
                continue
            for file in images_in(folder):
                items.append((class_name, file.name, _decode(file, str(file))))
        splits[split] = _stack(items, classes, split, str(root))
    return splits, classes


def _decode_archive(path: Path) -> tuple[dict[str, Split], list[str]]:
    try:
        archive = tarfile.open(path)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise UserError(f"cannot read {path} as a tar archive (.tar, .tar.gz): "
                        f"{_first_line(error)}") from None
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    folders: set[str] = set()  # train/<class>/ folders the archive lists, images or not
    last = None  # the last member read whole, to say where a damaged archive breaks off
    with archive:
        try:
            for member in archive:
                parts = Path(member.name).parts
                if member.isdir() and len(parts) >= 2 and parts[-2] == "train":
                    folders.add(parts[-1])
                if member.isfile() and member.name.lower().endswith(_IMAGE_SUFFIXES):
                    if len(parts) >= 3 and parts[-3] in found:
                        data = archive.extractfile(member).read()
                        found[parts[-3]].append(
                            (parts[-2], parts[-1], _decode(data, f"{member.name} in {path}")))
                last = member.name
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            after = f"after member {last}" if last else "at its first member"
            raise UserError(f"{path} is damaged or truncated: reading it failed {after} "
                            f"({_first_line(error)}); download or copy it again") from None
    classes = sorted({c for c, _, _ in found["train"]})
    if not classes:
        raise UserError(f"{path} holds no train/<class>/<image> files (ImageFolder layout expected)")
    _check_classes(str(path), classes, {c for c, _, _ in found["test"]},
                   sorted(folders - set(classes)))
    return {s: _stack(found[s], classes, s, str(path)) for s in found}, classes
