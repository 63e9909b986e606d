"""Data: loading paths (ImageFolder dir and archive, torchvision layouts), cache, augmentation."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
import torch
from conftest import write_image_folder

from depthscape.core.data import (
    Preprocess,
    crop_flip_params,
    load_dataset,
    load_image_folder,
    random_crop_flip,
)
from depthscape.core.errors import UserError


def test_image_folder_directory(tiny_data, cache_dir):
    dataset = load_dataset(str(tiny_data))
    assert dataset.classes == ["cat", "dog", "ship"]
    assert dataset.train.images.shape == (72, 3, 32, 32) and dataset.train.images.dtype == torch.uint8
    assert dataset.test.images.shape == (24, 3, 32, 32)
    assert dataset.train.labels.bincount().tolist() == [24, 24, 24]
    # Class k was drawn around 40 + 80k: labels line up with folder order.
    means = [dataset.train.images[dataset.train.labels == k].float().mean().item() for k in range(3)]
    assert means[0] < means[1] < means[2]


def test_image_folder_archive_equals_directory_and_is_cached(tiny_data, cache_dir, tmp_path,
                                                             monkeypatch):
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_data, arcname="tiny")
    from_dir = load_dataset(str(tiny_data))
    from_tar = load_dataset("cifar10", data_dir=archive)
    assert torch.equal(from_dir.train.images, from_tar.train.images)
    assert torch.equal(from_dir.test.labels, from_tar.test.labels)
    assert from_tar.name == "cifar10" and from_tar.pixel_mean_255 == (125.0, 123.0, 114.0)
    assert len(list(cache_dir.glob("imagefolder-*.npz"))) == 2

    # The next start reads the cache and decodes nothing.
    import depthscape.core.imagefolder as data_module

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_module, "_decode_archive", no_decoding)
    again = load_image_folder(archive, cache_dir, name="cifar10")
    assert torch.equal(again.train.images, from_tar.train.images)
    assert again.classes == from_tar.classes


def test_grey_image_folder(tmp_path, cache_dir):
    root = write_image_folder(tmp_path / "grey", channels=1, size=28)
    dataset = load_dataset(str(root))
    assert dataset.train.images.shape[1:] == (1, 28, 28)
    assert len(dataset.pixel_mean_255) == 1


def _write_cifar_batches(folder):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 10) for i in range(1, 6)] + [("test_batch", 7)]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return entry


def test_cifar10_pickled_batches_through_torchvision(tmp_path, cache_dir, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    last = _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    # torchvision checks each file's MD5 against the real dataset's; our files are made up.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    dataset = load_dataset("cifar10", data_dir=tmp_path)
    assert dataset.train.images.shape == (50, 3, 32, 32)
    assert dataset.test.images.shape == (7, 3, 32, 32)
    expected = torch.from_numpy(last["data"].reshape(7, 3, 32, 32))
    assert torch.equal(dataset.test.images, expected)
    assert dataset.test.labels.tolist() == last["labels"]


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files_through_torchvision(tmp_path, cache_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    train_x, test_x = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (5, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, 12))
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    _write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 5))
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert dataset.train.images.shape == (12, 1, 28, 28)
    assert torch.equal(dataset.test.images[:, 0], torch.from_numpy(test_x.astype(np.uint8)))
    assert dataset.pixel_mean_255 == (33.0,)


def test_missing_data_without_network_is_one_clear_error(cache_dir, monkeypatch):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(UserError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "\n" not in message
    assert "cifar10" in message and str(cache_dir) in message and "--data-dir" in message


def test_data_dir_without_the_files_says_what_was_looked_for(tmp_path, cache_dir):
    with pytest.raises(UserError, match="not found in"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet-9000")


# ---- augmentation --------------------------------------------------------------------


def test_crop_flip_matches_torchvision_per_sample():
    import torchvision.transforms.functional as TF

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    params = crop_flip_params(16, 4, torch.Generator().manual_seed(0), "cpu")
    out = random_crop_flip(images, 4, None, params)
    for i in range(16):
        top, left, flip = (int(p[i]) for p in params)
        expected = TF.crop(TF.pad(images[i], 4), top, left, 32, 32)
        assert torch.equal(out[i], TF.hflip(expected) if flip else expected)


def test_augmentation_statistics():
    n = 40_000
    top, left, flip = crop_flip_params(n, 4, torch.Generator().manual_seed(1), "cpu")
    for offsets in (top, left):
        counts = torch.bincount(offsets, minlength=9).float()
        assert offsets.min() == 0 and offsets.max() == 8
        # Uniform over the 9 offsets: each within 5 standard deviations of n/9.
        assert torch.all((counts - n / 9).abs() < 5 * (n / 9 * 8 / 9) ** 0.5)
    assert abs(flip.float().mean().item() - 0.5) < 0.01
    # The two offsets are independent of each other and of the flip.
    assert abs(torch.corrcoef(torch.stack([top.float(), left.float(), flip.float()]))[0, 1:]).max() < 0.03


def test_padded_border_is_zero_pixel_then_minus_mean():
    images = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    prep = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0), augment=True)
    out = prep.train_batch(images, torch.Generator().manual_seed(0))
    values = set(torch.unique(out[:, 0]).tolist())
    assert values <= {75.0, -125.0} and -125.0 in values
    assert set(torch.unique(out[:, 2]).tolist()) <= {86.0, -114.0}


def test_normalisation_per_recipe():
    images = torch.tensor([[[[0, 255]], [[128, 1]], [[114, 114]]]], dtype=torch.uint8)
    resnet = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0)).normalize(images)
    assert resnet.flatten().tolist() == [-125.0, 130.0, 5.0, -122.0, 0.0, 0.0]
    cnn = Preprocess().normalize(images)
    assert torch.allclose(cnn, images.float() / 255)


def _normalize_per_batch(prep: Preprocess, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The normalisation as it was before the mean became a cached device constant."""
    x = images.to(dtype)
    if prep.scale != 255.0:
        x = x * (prep.scale / 255.0)
    if any(prep.mean):
        x = x - torch.tensor(prep.mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_mean_is_built_once_per_device_and_results_stay_bit_identical(dtype):
    generator = torch.Generator().manual_seed(0)
    resnet = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0))
    grey = Preprocess(scale=255.0, mean=(33.0,))
    cnn = Preprocess()
    for prep, channels in ((resnet, 3), (grey, 1), (cnn, 3)):
        for _ in range(3):
            images = torch.randint(0, 256, (5, channels, 8, 8), dtype=torch.uint8, generator=generator)
            assert torch.equal(prep.normalize(images, dtype), _normalize_per_batch(prep, images, dtype))
    first = resnet.mean_tensor("cpu", dtype)
    assert resnet.mean_tensor(torch.device("cpu"), dtype) is first  # one tensor per run, not per batch
    assert first.shape == (1, 3, 1, 1) and not first.is_inference()
    assert len(resnet._means) == 1 and cnn._means == {}  # a zero mean builds nothing
    # the cache is no part of the settings: equal, hashable, and a fresh instance starts empty
    assert resnet == Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0))
    assert hash(resnet) == hash(Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0)))


def test_a_mean_first_built_in_inference_mode_serves_training_too():
    prep = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0))
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with torch.inference_mode():
        prep.normalize(images)
    weight = torch.ones(3, requires_grad=True)
    (prep.normalize(images) * weight.view(1, 3, 1, 1)).sum().backward()
    assert weight.grad.tolist() == [-125.0 * 32, -123.0 * 32, -114.0 * 32]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_normalising_a_cuda_batch_never_waits_for_the_gpu():
    prep = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device="cuda")
    expected = prep.normalize(images)  # the first call builds the constant (one copy)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = prep.normalize(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out, expected)
    assert torch.equal(out.cpu(), _normalize_per_batch(prep, images.cpu(), torch.float32))
