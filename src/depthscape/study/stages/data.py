"""The data: the dataset loaded once for every stage, and the study's runs (model x seed)."""

from __future__ import annotations

from depthscape.core.data import load_dataset
from depthscape.core.runs import RunInfo, run_paths
from depthscape.study.stages.base import Stage


class DataStage(Stage):
    name = "data"
    order = 0

    def run(self, study) -> None:
        config = study.config
        study.dataset = load_dataset(config.dataset, config.data_dir, config.cache_dir)
        name = study.dataset.name
        study.runs = [RunInfo(m, s, name, run_paths(study.out, m, s, name))
                      for s in range(config.seeds) for m in study.models]
        if study.only is not None:  # one unit's part: its model (and seed)
            model, seed = study.only
            study.runs = [run for run in study.runs
                          if run.model == model and seed in (None, run.seed)]


STAGE = DataStage()
