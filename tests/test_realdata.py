"""Real CIFAR-10 (JPEG archive): a short scaled ResNet-8 run learns. Skipped where absent."""

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


def test_resnet8_200_scaled_iterations_reach_38_percent(real_cifar10, tmp_path):
    """The spec's recipe, scaled to 200 iterations, learns real images: ResNet-8 reached
    42.3 % on the whole test set on a Zen 3 CPU (chance is 10 %; a wrong normalisation,
    label order or schedule stays far below). ResNet-20 at 400 iterations asked the same
    question at 6x the cost (about 5 minutes of CI)."""
    dataset = load_dataset("cifar10", data_dir=real_cifar10)
    config = TrainConfig(model="resnet8", out_dir=str(tmp_path), scale=200 / 64_000,
                         eval_every=200, checkpoint_every=10_000, progress=False)
    result = train(config, dataset=dataset)
    assert result.finished and result.iteration == 200
    # Evaluated on the full 10,000-image test set.
    assert result.test_acc >= 38.0, result.test_acc
