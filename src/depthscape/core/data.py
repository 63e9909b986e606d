"""Datasets as uint8 tensors, loaded once, and whole-batch augmentation on the device.

Every split is held as ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64. Sources:

* ``cifar10``, ``mnist``, ``fashion-mnist`` through torchvision, downloaded on first use
  into the cache directory (``$DEPTHSCAPE_DATA`` or ``~/.cache/depthscape``) or read from
  ``data_dir`` where the files already lie there;
* a directory in ImageFolder layout with ``train/`` and ``test/`` (class folders inside,
  alphabetical order = label order), or a ``.tar``/``.tar.gz`` archive holding one. Decoded
  images are cached as ``.npz`` in the cache directory so the next start is fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from depthscape.core.atomic import atomic_open, refuse_link, remove_stale_temporaries
from depthscape.core.errors import UserError

#: Per-channel means on the 0..255 scale used by the ResNet/PlainNet recipes. CIFAR-10's are
#: the spec's [125, 123, 114]; the grey datasets get their own rounded pixel means.
PIXEL_MEANS_255 = {
    "cifar10": (125.0, 123.0, 114.0),
    "mnist": (33.0,),
    "fashion-mnist": (73.0,),
}

_TORCHVISION_NAMES = {
    "cifar10": "CIFAR10",
    "cifar-10": "CIFAR10",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "fashionmnist": "FashionMNIST",
    "fashion_mnist": "FashionMNIST",
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
#: The largest width or height decoded, read from an image's header before its pixels: a
#: whole split is held in memory at one shape, so a 10000x10000 image (1.7 GB as int32)
#: is refused before it is decoded.
MAX_IMAGE_SIDE = 4096


@dataclass
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        # Always plain contiguous NCHW: a channels-last view (as decoding HWC images gives)
        # would send convolutions down other kernels and change results in the last bits.
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, size: int | None, seed: int = 0) -> Split:
        """A seeded random subset of ``size`` samples (the whole split when None or larger)."""
        if size is None or size >= len(self):
            return self
        if size <= 0:
            raise UserError(f"subset size must be positive, got {size}")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=generator)[:size].sort().values
        return Split(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    """A dataset's train and test splits and class names."""

    name: str
    train: Split
    test: Split
    classes: list[str]
    #: sha256 of the decoded arrays and class names (see :meth:`content_sha256`)
    content: str | None = field(default=None, compare=False, repr=False)

    def content_sha256(self) -> str:
        """A hash of the decoded pixels, labels and class names, computed once: a run
        records it, and a resume on data that changed under the same names is refused."""
        if self.content is None:
            self.content = content_hash(self.train, self.test, self.classes)
        return self.content

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pixel_mean_255(self) -> tuple[float, ...]:
        """The per-channel mean subtracted by the ResNet/PlainNet preprocessing."""
        if self.name in PIXEL_MEANS_255:
            return PIXEL_MEANS_255[self.name]
        if self.in_channels == 3:
            return PIXEL_MEANS_255["cifar10"]
        return tuple(float(v) for v in self.train.images.float().mean(dim=(0, 2, 3)).round())


def default_cache_dir() -> Path:
    """Where downloads and decoded caches go: ``$DEPTHSCAPE_DATA`` or ``~/.cache/depthscape``."""
    env = os.environ.get("DEPTHSCAPE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "depthscape"


def make_cache_dir(path: Path) -> bool:
    """Make the cache folder ``path`` (and parents); False where that would mean making a
    home folder that does not exist (``HOME=/nonexistent/home``): nothing is created then."""
    home = Path.home()
    if not home.is_dir() and (path == home or home in path.parents):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return True


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
        if data_dir is not None and _looks_like_image_folder(Path(data_dir)):
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


def _looks_like_image_folder(path: Path) -> bool:
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


def content_hash(train: Split, test: Split, classes: list[str]) -> str:
    """sha256 of two splits' shapes, pixels and labels and the class names."""
    digest = hashlib.sha256()
    for split in (train, test):
        for tensor in (split.images, split.labels):
            tensor = tensor.contiguous().cpu()
            digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(tensor.numpy().tobytes())
    digest.update("\n".join(classes).encode())
    return digest.hexdigest()


def cache_file_for(path: Path, cache: Path) -> Path:
    """The decoded-data cache file of the ImageFolder tree or archive ``path`` (resolved).

    The key holds the path and the size and modification time of the archive, or of every
    file of the tree: an image overwritten in place, or a tree replaced at the same path,
    is decoded again (the top folder's own time does not change when a file inside does).
    """
    digest = hashlib.sha256(str(path).encode())
    stat = path.stat()
    digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    if path.is_dir():
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            for name in sorted(files):
                try:
                    info = os.stat(os.path.join(folder, name))
                except OSError:
                    continue  # a file that vanished: the decode names what it finds
                relative = os.path.relpath(os.path.join(folder, name), path)
                digest.update(f"\n{relative}|{info.st_size}|{info.st_mtime_ns}".encode())
    return cache / f"imagefolder-{digest.hexdigest()[:16]}.npz"


def _first_line(error: BaseException) -> str:
    """An exception's message on one line (tarfile's and PIL's span several)."""
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def _notice(message: str) -> None:
    print(f"depthscape: notice: {message}", file=sys.stderr, flush=True)


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
        _notice(f"{where}: the class folder(s) {', '.join(repr(c) for c in empty)} of train/ "
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


# --------------------------------------------------------------------------------------
# Preprocessing and augmentation on whole batches, on the device the data lives on.


@dataclass(frozen=True)
class Preprocess:
    """How uint8 pixels become model input: ``(x * scale/255 - mean)``, optional crop+flip.

    ResNet/PlainNet (spec): pixels in 0..255 (``scale=255``), minus the per-channel mean,
    std 1, ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``. CNN: ``ToTensor()``
    only (``scale=1``, mean 0, no augmentation).
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    augment: bool = False
    crop_padding: int = 4
    #: The mean as device tensors, one per (device, dtype), built on first use: a tensor made
    #: from Python numbers per batch is a host-to-device copy that waits for the GPU.
    _means: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def mean_tensor(self, device: torch.device | str, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
        """The per-channel mean as a (1, C, 1, 1) ``dtype`` tensor on ``device``, made once."""
        key = (torch.device(device), dtype)
        mean = self._means.get(key)
        if mean is None:
            with torch.inference_mode(False):  # a normal tensor even when first used in evaluation
                mean = torch.tensor(self.mean, dtype=dtype).view(1, -1, 1, 1).to(key[0])
            self._means[key] = mean
        return mean

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float model input (no host-to-device copy after the first batch)."""
        x = images.to(dtype)
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if any(self.mean):
            x = x - self.mean_tensor(x.device, dtype)
        return x

    def train_batch(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Augment (if set) and normalise one training batch."""
        if self.augment:
            images = random_crop_flip(images, self.crop_padding, generator)
        return self.normalize(images)


def crop_flip_params(batch: int, padding: int, generator: torch.Generator | None,
                     device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets (uniform over 0..2*padding) and flip flags (probability 0.5)."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=device)
    flips = torch.randint(0, 2, (batch,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flips


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator | None,
                     params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                     ) -> torch.Tensor:
    """``RandomCrop(size, padding)`` with zero fill + ``RandomHorizontalFlip()``, per sample.

    Done as one gather on the whole batch: pad with zeros, then pick each sample's window
    of rows ``top..top+H`` and columns ``left..left+W`` (reversed where it is flipped).
    Same distribution as the torchvision transforms applied image by image.
    """
    batch, channels, height, width = images.shape
    top, left, flip = params if params is not None else crop_flip_params(
        batch, padding, generator, images.device)
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(height, device=images.device)
    steps = torch.arange(width, device=images.device)
    cols = left[:, None] + torch.where(flip[:, None], width - 1 - steps, steps)
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]
