"""The study as a list of stages: what a stage declares reaches the budgets, study.json, the
CLI's switches and the report, so a new stage is one new module in depthscape/study/stages/."""

from __future__ import annotations

import json
import os
import sys

import pytest

import depthscape.study.stages as stages
from depthscape.cli import main
from depthscape.study import budgets
from depthscape.study.runner import StudyConfig, get_budget, run_study
from depthscape.study.stages import all_stages, is_fresh

#: A whole new stage, as a module of its own: it lists the finished runs into echo/runs.txt
#: and says so in the report.
ECHO = '''
from dataclasses import dataclass

from depthscape.study.blocks import Heading, Paragraph
from depthscape.study.stages.base import Stage


@dataclass(frozen=True)
class EchoConfig:
    lines: int


class EchoStage(Stage):
    name = "echo"
    order = 95  # after the flatness, before the report
    report_order = 90
    budgets = {"paper": EchoConfig(3), "quick": EchoConfig(2), "smoke": EchoConfig(1)}
    numbers = {"echo_lines": "lines"}
    skip_help = "skip the echo of the runs"
    folders = ("echo",)

    def run(self, study):
        names = [r.paths.run_name for r in study.finished_runs()][: study.budget.echo.lines]
        (study.out / "echo").mkdir(exist_ok=True)
        (study.out / "echo" / "runs.txt").write_text("\\n".join(names) + "\\n")
        study.result.outputs["echo"] = names

    def blocks(self, result, budget):
        names = result.outputs.get("echo")
        return [Heading("Echo"), Paragraph("runs: " + ", ".join(names))] if names else []

    def budget_rows(self, budget):
        return [["echo", f"{budget.echo.lines} line(s)"]]

    def describe(self, budget):
        return f"echo {budget.echo.lines}"


STAGE = EchoStage()
'''


def test_the_stages_run_in_the_study_order():
    assert [s.name for s in all_stages()] == [
        "data", "training", "curves", "tables", "landscapes", "sharpness", "depth", "trajectories",
        "curvature", "density", "flatness", "report"]
    quick = get_budget("quick")
    assert (quick.landscapes.resolution, quick.sharpness.subset, quick.density.runs) == (11, 128, 2)
    assert quick.recipe("resnet20") == quick.training.recipe("resnet20")


def test_is_fresh_is_newer_than_every_source(tmp_path):
    source, target = tmp_path / "a.h5", tmp_path / "a.png"
    source.write_text("data")
    assert not is_fresh(target, [source])  # not made yet
    target.write_text("drawing")
    os.utime(source, ns=(1, 10**18))
    os.utime(target, ns=(1, 10**18 + 1))
    assert is_fresh(target, [source])
    os.utime(source, ns=(1, 10**18 + 2))  # the data changed since
    assert not is_fresh(target, [source])


@pytest.fixture
def echo_stage(tmp_path_factory, monkeypatch):
    """The ECHO module dropped into the stages package (through its search path)."""
    folder = tmp_path_factory.mktemp("more_stages")
    (folder / "echo.py").write_text(ECHO)
    monkeypatch.setattr(stages, "__path__", [*stages.__path__, str(folder)])
    stages.all_stages.cache_clear()
    for name in budgets.DESCRIPTIONS:  # the budgets are built from the stages on import
        monkeypatch.setitem(budgets.BUDGETS, name, budgets._budget(name))
    yield
    stages.all_stages.cache_clear()
    sys.modules.pop("depthscape.study.stages.echo", None)


def test_a_new_stage_is_one_module(echo_stage, tmp_path, tiny_data, cache_dir, capsys):
    assert [s.name for s in all_stages()][-2:] == ["echo", "report"]
    assert get_budget("smoke").echo.lines == 1
    assert budgets.budget_numbers(get_budget("quick"))["echo_lines"] == 2
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    help_text = capsys.readouterr().out
    assert "--no-echo" in help_text and "skip the echo of the runs" in help_text
    assert "echo 1" in help_text  # the budget's summary

    config = StudyConfig(budget="smoke", out_dir=str(tmp_path / "out"), dataset=str(tiny_data),
                         cache_dir=str(cache_dir), models=["resnet8"], progress=False,
                         skip=("landscapes", "sharpness", "trajectories", "density", "flatness"))
    result = run_study(config)
    (name,) = result.outputs["echo"]
    assert name.startswith("resnet8_") and "echo" in result.timings
    assert (result.out_dir / "echo" / "runs.txt").read_text() == f"{name}\n"
    report = result.report_md.read_text()
    assert f"## Echo\n\nruns: {name}" in report and "| echo | 1 line(s) |" in report
    assert json.loads((result.out_dir / "study.json").read_text())["budget"]["echo_lines"] == 1

    from dataclasses import replace

    again = run_study(replace(config, skip=(*config.skip, "echo")))
    assert "echo" not in again.timings and "## Echo" not in again.report_md.read_text()


def test_only_a_switchable_stage_can_be_skipped(tmp_path):
    from depthscape.core.errors import UserError

    with pytest.raises(UserError, match="'report'"):
        run_study(StudyConfig(budget="smoke", out_dir=str(tmp_path), skip=("report",)))
    config = StudyConfig(skip=("density",), flatness=False)
    assert not config.density and set(config.skip) == {"density", "flatness"}
