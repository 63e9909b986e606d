"""The study split into units: what ``depthscape study --launcher slurm`` submits as jobs.

A unit is one piece of the study, run by :func:`run_unit` through the same loop and the
same :class:`~depthscape.study.stages.base.Stage` code as a whole study
(:func:`depthscape.study.runner.run_stages`), on a :class:`~depthscape.study.stages.base.
Study` narrowed to its part (``Study.only``), writing the same files in the same places:

- ``training-<model>-s<seed>``: the data and training stages for that one run;
- ``<stage>-<model>`` for each per-model analysis stage (``Stage.per_model``: landscapes,
  sharpness, trajectories, curvature, density, flatness): the data stage, the stages it
  reads (``Stage.after``, reused from disk), then that stage for every seed of the model;
  it needs the model's trainings and the units of the stages it reads;
- ``final``: the whole study (:func:`depthscape.study.runner.finish_study`): it reuses what
  the units made and writes the tables, curves, the across-model files and the report;
  it needs every other unit.

Locally nothing changes: a whole study is every unit's work in one process, in stage order.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from depthscape.core.atomic import atomic_write_text
from depthscape.core.errors import UserError
from depthscape.study import runner
from depthscape.study.jobs import done_path
from depthscape.study.stages import Study, all_stages

FINAL = "final"


@dataclass(frozen=True)
class Unit:
    """One unit: ``stage`` (``training``, a per-model stage's name, or ``final``), its model
    and seed (None: every seed of the model, or no model), the units it waits for."""

    stage: str
    model: str | None = None
    seed: int | None = None
    needs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.stage == FINAL:
            return FINAL
        if self.stage == "training":
            return f"training-{self.model}-s{self.seed}"
        return f"{self.stage}-{self.model}"


def _stage(name: str):
    return next(stage for stage in all_stages() if stage.name == name)


def plan_units(study: Study) -> list[Unit]:
    """Every unit of ``study`` in submission order (a unit after those it needs)."""
    config = study.config
    trainings = {model: [Unit("training", model, seed) for seed in range(config.seeds)]
                 for model in study.models}
    units = [u for seed in range(config.seeds) for model in study.models
             for u in trainings[model] if u.seed == seed]
    stages = [stage for stage in all_stages() if stage.per_model and stage.planned(study)]
    planned = {stage.name for stage in stages}
    for stage in stages:
        for model in study.models:
            needs = [u.name for u in trainings[model]]
            needs += [f"{after}-{model}" for after in stage.after if after in planned]
            units.append(Unit(stage.name, model, None, tuple(needs)))
    units.append(Unit(FINAL, needs=tuple(u.name for u in units)))
    return units


def unit_stages(unit: Unit) -> list:
    """The stages ``unit`` runs, in order (its part of each)."""
    if unit.stage == FINAL:
        return list(all_stages())
    data = _stage("data")
    if unit.stage == "training":
        return [data, _stage("training")]
    stage = _stage(unit.stage)
    return [data, *(_stage(name) for name in stage.after), stage]


class UnitIncomplete(UserError):
    """The unit's work stopped before its end (a training stopped by a signal)."""

    exit_code = 130


def run_unit(config, unit: Unit) -> dict:
    """Do ``unit``'s part of the study ``config`` describes (its folder held by whoever
    submitted it: no study lock here), then write its done marker. Returns the marker."""
    started = time.time()
    if unit.stage == FINAL:
        runner.finish_study(config)
    else:
        study = runner.start_study(config, write=False)
        study.only = (unit.model, unit.seed)
        runner.run_stages(study, unit_stages(unit))
        if unit.stage == "training":
            missing = [run.paths.run_name for run in study.runs if not run.paths.final.exists()]
            if missing:
                raise UnitIncomplete(f"unit {unit.name} stopped before {missing[0]} finished")
    marker = {"unit": unit.name, "host": socket.gethostname(),
              "seconds": round(time.time() - started, 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = done_path(config.out_dir, unit.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(marker) + "\n")
    return marker
