"""What every stage of the study is: :class:`Stage`, the :class:`Study` it works on, and the
one rule for reusing a file (:func:`is_fresh`).

A stage is one module of this package exposing ``STAGE``, an instance of a :class:`Stage`
subclass. It says what it is called, when it runs, what the budget sets for it (its own
nested config, one per budget), how to run it (skipping finished work) and what it adds to
the report. The runner, the budgets, the report and ``depthscape study``'s switches are
built from the list of stages; none of them names a stage.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class Stage:
    """One step of the study. Subclasses set the attributes and override what they need."""

    #: the stage's name: its timing in ``timings.json``, its config in the budget
    #: (``budget.<name>``), its switch (``--no-<name>``, ``StudyConfig.skip``)
    name: str = ""
    #: where it runs: stages run by increasing ``order``
    order: int = 0
    #: where its report section goes (increasing; None: it adds no section)
    report_order: int | None = None
    #: budget name -> this stage's config under that budget (an analysis config, or the
    #: stage's own small record); None: the stage has no config
    budgets: Mapping[str, object] | None = None
    #: the config's numbers that identify a study folder (``study.json``): name in the
    #: file -> field of the config; a changed number makes the folder "another budget"
    numbers: Mapping[str, str] = {}
    #: True where the stage stores each result with the settings that made it and computes
    #: it again where they differ: a changed number of such a stage does not make a folder
    #: "another budget" (its runs stay valid; the stage redoes its own part)
    recomputes: bool = False
    #: the help of ``--no-<name>``; None: the stage cannot be switched off
    skip_help: str | None = None
    #: folders under the study folder the stage writes (stale temporaries are removed there)
    folders: tuple[str, ...] = ()
    #: True where the stage's work is per model (one unit per model under ``--launcher
    #: slurm``, :mod:`depthscape.study.units`); its parts across models (a table of every
    #: run, a pair figure, one grid of all maps) are written only by a whole study
    per_model: bool = False
    #: the stages whose results this one reads from ``study.result`` (run before it in the
    #: same unit, their results reused from disk; its unit depends on theirs)
    after: tuple[str, ...] = ()

    def planned(self, study: Study) -> bool:
        """Whether the stage will run, judged before any stage has (default: :meth:`wanted`)."""
        return self.wanted(study)

    def wanted(self, study: Study) -> bool:
        """Whether the stage runs in ``study`` (default: whenever it is switched on)."""
        return study.switched_on(self.name)

    def run(self, study: Study) -> None:
        """Do the stage's work, reusing what is already done; record it in ``study.result``."""
        raise NotImplementedError

    def blocks(self, result, budget) -> list:
        """The stage's section of the report (``depthscape.study.blocks``), from a StudyResult."""
        return []

    def budget_rows(self, budget) -> list[list[str]]:
        """Rows (setting, value) the stage adds to the report's budget table."""
        return []

    def describe(self, budget) -> str | None:
        """The stage's part of a budget's one-line summary (``depthscape study --help``)."""
        return None

    def settings_of(self, budget) -> dict:
        """The stage's numbers under ``budget``, as stored in ``study.json``."""
        config = getattr(budget, self.name)
        return {key: operator.attrgetter(path)(config) for key, path in self.numbers.items()}


@dataclass
class Study:
    """One call of the study, as the stages see it: settings, data, runs and the result so far."""

    config: object  # runner.StudyConfig
    budget: object  # budgets.Budget
    out: Path
    models: list[str]
    settings: dict  # what study.json holds
    result: object  # runner.StudyResult, filled by the stages
    dataset: object = None  # core.data.Dataset, loaded by the data stage
    runs: list = field(default_factory=list)  # core.runs.RunInfo, every model x seed
    # one unit's part of the study (depthscape.study.units): (model, seed or None for every
    # seed); the data stage keeps only those runs. None: the whole study
    only: tuple | None = None

    @property
    def partial(self) -> bool:
        """Whether this is one unit's part (then no stage writes its across-model files)."""
        return self.only is not None

    def say(self, message: str) -> None:
        if self.config.progress:
            print(f"[study] {message}", flush=True)

    def switched_on(self, name: str) -> bool:
        """Whether the stage ``name`` is on: not named in ``config.skip``."""
        return name not in self.config.skip

    def finished_runs(self, first_seed_only: bool = False) -> list:
        """The runs with a final checkpoint (of seed 0 only, where asked), in study order."""
        return [run for run in self.runs if run.paths.final.exists()
                and not (first_seed_only and run.seed != 0)]


def is_fresh(target: str | Path, sources: Iterable[str | Path]) -> bool:
    """Whether ``target`` exists and is at least as new as every source: made from them, so
    it need not be made again. The study's one rule for reusing a drawing or page."""
    target = Path(target)
    if not target.exists():
        return False
    made = target.stat().st_mtime_ns
    return all(Path(source).stat().st_mtime_ns <= made for source in sources)

