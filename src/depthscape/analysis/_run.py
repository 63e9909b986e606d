"""Loading a trained run for the trajectory and curvature views.

ONE private function, :func:`_load_run`, loads it the way
:mod:`depthscape.analysis.landscape.surface` does today (the checkpoint's model, then the
data it was trained on unless overridden), so it can be switched to the shared run loader
in one place.
"""

from __future__ import annotations

import os

from depthscape.core.checkpoint import model_from_checkpoint
from depthscape.core.data import Dataset


def _load_run(checkpoint: str | os.PathLike, model_name: str | None = None, *, with_data: bool = False,
              data_source: str | None = None, data_dir: str | None = None,
              cache_dir: str | None = None, dataset: Dataset | None = None):
    """``(model on the CPU in eval mode, checkpoint dict, dataset or None)`` of a trained run.

    With ``with_data`` the dataset is ``dataset`` when given, else the one the run was
    trained on, with ``data_source``/``data_dir``/``cache_dir`` overriding it as the
    landscape command's options do.
    """
    model, data = model_from_checkpoint(checkpoint, model_name)
    if with_data and dataset is None:
        from depthscape.analysis.landscape.surface import LandscapeConfig, _load_data

        dataset = _load_data(data, LandscapeConfig(data_source=data_source, data_dir=data_dir,
                                                   cache_dir=cache_dir))
    return model, data, dataset
