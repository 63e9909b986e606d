"""Real CIFAR-10 (JPEG archive): a short scaled ResNet-20 run learns. Skipped where absent."""

from __future__ import annotations

import pytest

from depthscape.core.data import load_dataset
from depthscape.training.loop import TrainConfig, train

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_archive_loads_with_the_official_split(real_cifar10):
    dataset = load_dataset("cifar10", data_dir=real_cifar10)
    assert dataset.train.images.shape == (50_000, 3, 32, 32)
    assert dataset.test.images.shape == (10_000, 3, 32, 32)
    assert dataset.classes[:3] == ["airplane", "automobile", "bird"]
    assert dataset.train.labels.bincount().tolist() == [5000] * 10
    assert dataset.test.labels.bincount().tolist() == [1000] * 10


def test_resnet20_400_scaled_iterations_reach_38_percent(real_cifar10, tmp_path):
    dataset = load_dataset("cifar10", data_dir=real_cifar10)
    config = TrainConfig(model="resnet20", out_dir=str(tmp_path), scale=400 / 64_000,
                         eval_every=400, checkpoint_every=10_000, progress=False)
    result = train(config, dataset=dataset)
    assert result.finished and result.iteration == 400
    # Evaluated on the full 10,000-image test set.
    assert result.test_acc >= 38.0, result.test_acc
