"""Tables 1 and 2: every final checkpoint evaluated (cached per run), then tabulated."""

from __future__ import annotations

from dataclasses import dataclass

from depthscape.analysis.tables import evaluate_runs, table1, table2, write_table
from depthscape.study.blocks import Heading, TableBlock
from depthscape.study.stages.base import Stage


@dataclass(frozen=True)
class TablesConfig:
    """The images Table 1 evaluates per run (None: the run's training split / all)."""

    train_limit: int | None
    test_limit: int | None


class TablesStage(Stage):
    name = "tables"
    order = 30
    report_order = 10
    budgets = {"paper": TablesConfig(train_limit=None, test_limit=None),
               "quick": TablesConfig(train_limit=5000, test_limit=None),
               "smoke": TablesConfig(train_limit=128, test_limit=64)}
    numbers = {"table_train_limit": "train_limit", "table_test_limit": "test_limit"}
    folders = ("tables", "tables/metrics")

    def run(self, study) -> None:
        out, limits = study.out, study.budget.tables
        study.say("evaluating the final checkpoints for Tables 1 and 2")
        metrics = evaluate_runs(study.runs, study.dataset, study.config.device,
                                train_limit=limits.train_limit, test_limit=limits.test_limit,
                                cache_dir=out / "tables" / "metrics",
                                progress=study.config.progress)
        for table, stem in ((table1(metrics), "table1"), (table2(metrics), "table2")):
            write_table(table, out / "tables", stem)
        study.result.metrics = metrics

    def blocks(self, result, budget) -> list:
        if not result.metrics:
            return []
        return [Heading("Table 1: final training vs. test performance"),
                TableBlock(table1(result.metrics), "Evaluated from each final checkpoint in eval "
                           "mode, without augmentation."),
                Heading("Table 2: generalization by depth and training time"),
                TableBlock(table2(result.metrics), "Time: training wall-clock; ratio: relative to "
                           "the shallowest depth of the family; gain: test-accuracy points "
                           "over it.")]

    def budget_rows(self, budget) -> list[list[str]]:
        limits = budget.tables
        return [["Table 1 images (train / test)", f"{limits.train_limit or 'all'} / "
                                                  f"{limits.test_limit or 'all'}"]]


STAGE = TablesStage()
