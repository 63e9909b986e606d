"""How much of the spec's work a study does: the ``paper``, ``quick`` and ``smoke`` budgets.

A :class:`Budget` is a name, a description and one nested config per stage, which the stage
itself declares (``Stage.budgets``: the analysis config it runs with, e.g. the landscapes'
:class:`~depthscape.analysis.landscape.surface.LandscapeConfig`, or the stage's own record).
So ``budget.landscapes.resolution`` is the landscape grid of a budget, and a new stage
brings its own numbers for every budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from depthscape.core.errors import UserError
from depthscape.study.stages import all_stages

#: The seven models of the spec, in its order.
STUDY_MODELS = ("cnn", "resnet20", "resnet56", "resnet110", "plain20", "plain56", "plain110")

#: The budgets that train and draw their landscapes in bf16 on a CPU with native bf16
#: (AVX-512 BF16 or AMX) unless told otherwise: the quick study's 45 minutes on two cores
#: need it (docs/study.md); on other CPUs, and on GPUs (their own defaults), nothing changes.
CPU_BF16 = ("quick",)

#: The budgets, in the order ``--help`` lists them.
DESCRIPTIONS = {
    "paper": "the spec's full recipes and data",
    "quick": "scaled schedules, subsets and grids for a 2-core CPU (<45 min)",
    "smoke": "a few iterations on a few images, to check the pipeline",
}


@dataclass(frozen=True)
class Budget:
    """How much of the spec's work a study does: ``budget.<stage>`` is that stage's config."""

    name: str
    description: str
    stages: Mapping[str, object] = field(default_factory=dict)  # stage name -> its config
    models: tuple[str, ...] = STUDY_MODELS
    cpu_bf16: bool = False  # bf16 training and landscapes on a CPU with native bf16 (CPU_BF16)

    def __getattr__(self, name: str):
        stages = self.__dict__.get("stages", {})
        if name in stages:
            return stages[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def with_stage(self, name: str, **changes) -> Budget:
        """This budget with some numbers of one stage's config changed."""
        return replace(self, stages={**self.stages, name: replace(self.stages[name], **changes)})

    # the training's numbers, which the others read through these
    def recipe(self, model: str):
        """The recipe ``model`` trains with under this budget (already scaled)."""
        return self.training.recipe(model)

    def snapshot_every(self, model: str) -> int | None:
        """Iterations (epochs for the CNN) between weight snapshots."""
        return self.training.snapshot_every(model)

    def snapshot_count(self, model: str) -> int:
        """How many snapshots a finished run of ``model`` keeps (0 without snapshots)."""
        return self.training.snapshot_count(model)

    def iterations(self, model: str) -> str:
        """Human-readable training length of ``model`` under this budget."""
        return self.training.iterations(model)


def _budget(name: str) -> Budget:
    configs = {}
    for stage in all_stages():
        if stage.budgets is not None:
            if name not in stage.budgets:
                raise TypeError(f"stage {stage.name!r} has no config for the {name!r} budget")
            configs[stage.name] = stage.budgets[name]
    return Budget(name, DESCRIPTIONS[name], configs, cpu_bf16=name in CPU_BF16)


BUDGETS: dict[str, Budget] = {name: _budget(name) for name in DESCRIPTIONS}


def get_budget(name: str) -> Budget:
    """The budget called ``name``; an unknown name is a UserError listing the known ones."""
    if name not in BUDGETS:
        raise UserError(f"unknown budget {name!r}: choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]


def budget_numbers(budget: Budget) -> dict:
    """The numbers that identify a study folder (``study.json``): name, description and
    each stage's ``numbers``; a changed one makes a folder "another budget"."""
    numbers = {"name": budget.name, "description": budget.description}
    for stage in all_stages():
        if stage.numbers:
            numbers.update(stage.settings_of(budget))
    return numbers


def describe_budgets() -> str:
    """One line per budget with its numbers (for ``--help`` and the docs)."""
    lines = []
    for budget in BUDGETS.values():
        parts = [part for stage in all_stages() if (part := stage.describe(budget))]
        if budget.cpu_bf16:
            parts.append("bf16 training and landscapes on a CPU with native bf16")
        lines.append(f"{budget.name}: {budget.description}; {', '.join(parts)}")
    return "\n".join(lines)
