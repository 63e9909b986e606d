"""The report: ``report.md`` and ``report.html`` from the sections every other stage adds."""

from __future__ import annotations

from depthscape.study.report import write_report
from depthscape.study.stages.base import Stage


class ReportStage(Stage):
    name = "report"
    order = 1000  # last: it reads what every other stage found

    def run(self, study) -> None:
        write_report(study.result, study.budget, study.settings)


STAGE = ReportStage()
