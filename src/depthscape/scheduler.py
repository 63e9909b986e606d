"""Running many training runs: one after another here; see run_trainings."""

from __future__ import annotations

from typing import Sequence

from depthscape.train import TrainConfig, TrainResult, train


def run_trainings(configs: Sequence[TrainConfig], dataset=None) -> list[TrainResult]:
    """Train every config (resuming or skipping finished ones as each config says), in order.

    ``dataset`` (a loaded :class:`depthscape.data.Dataset`) is shared by all runs when given.
    """
    return [train(config, dataset=dataset) for config in configs]
