"""`depthscape study`: the smoke budget end to end on tiny data, rerun, resume, bad input."""

from __future__ import annotations

import csv
import json
import re

import pytest

from depthscape.cli import main
from depthscape.core.errors import UserError
from depthscape.core.recipes import recipe_for
from depthscape.core.runs import run_paths
from depthscape.study.runner import StudyConfig, get_budget, run_study, training_configs

MODELS = ["resnet8", "plain8"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke study of two tiny models on tiny data (shared by the tests below)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("study")
    data = write_image_folder(root / "tiny")
    config = StudyConfig(budget="smoke", out_dir=str(root / "out"), dataset=str(data),
                         cache_dir=str(root / "cache"), models=MODELS, progress=False)
    return config, run_study(config)


def test_smoke_study_writes_every_artifact(smoke):
    config, result = smoke
    out = result.out_dir
    for model in MODELS:
        paths = run_paths(out, model, 0, "tiny")
        assert paths.final.exists() and paths.log.exists() and not paths.resume.exists()
        assert (out / "landscapes" / f"{paths.run_name}.h5").exists()
        assert (out / "landscapes" / f"{paths.run_name}_3d.html").exists()
        assert (out / "sharpness" / f"{paths.run_name}.json").exists()
        for kind in ("contour", "contourf", "surface3d"):  # drawn on a log scale
            assert (out / "plots" / "landscapes" / f"{paths.run_name}_loss_log_{kind}.png").exists()
    rows = list(csv.DictReader((out / "tables" / "table1.csv").open()))
    assert [r["model"] for r in rows] == ["resnet8", "plain8"]
    assert all(0 <= float(r["test_acc_mean"]) <= 100 for r in rows)
    assert (out / "tables" / "table2.md").read_text().count("8-layer") == 1
    assert {f.key for f in result.figures} >= {"resnet", "plain", "resnet_vs_plain_8"}
    assert len(result.landscapes) == 2 and len(result.sharpness) == 2
    # trajectories (ResNet | PlainNet at depth 8) and curvature maps on one scale
    assert [v.model for v in result.trajectories] == MODELS
    assert [depth for depth, _ in result.trajectory_pairs] == [8]
    assert result.trajectory_pairs[0][1].exists() and result.curvature_grid.exists()
    assert [v.model for v in result.curvature] == MODELS and all(v.png.exists() for v in result.curvature)
    settings = json.loads((out / "study.json").read_text())
    assert settings["budget"]["name"] == "smoke" and settings["models"] == MODELS
    # issue 18: each model's eigenvalue density (ResNet vs PlainNet at depth 8) and flatness
    assert [r.model for r, _ in result.densities] == MODELS
    for run, density in result.densities:
        assert (out / "sharpness" / f"{run.paths.run_name}.density.json").exists()
        assert density.settings["runs"] == 2 and density.settings["steps"] == 3
        assert density.products <= 6 and abs(density.mass() - 1) < 1e-3
    assert [depth for depth, _ in result.density_pairs] == [8]
    assert result.density_pairs[0][1].exists()
    assert sorted(r.model for r, _ in result.flatness) == sorted(MODELS)
    for run, flat in result.flatness:
        assert len(flat.rise) == 2 and flat.settings["subset"] == 32  # of 24 test images
        assert (out / "flatness" / f"{run.paths.run_name}.flatness.png").exists()
    assert (out / "flatness" / "flatness.md").exists() and result.flatness_figure.exists()
    assert {"density", "flatness"} <= set(result.timings)
    # issue 33: where in depth, the pair's gradient flow drawn and compared in the report
    (flow,) = result.gradient_flow
    assert flow.depth == 8 and flow.png.exists() and len(flow.rows[0]) == len(flow.rows[1])
    report = result.report_md.read_text()
    assert "## Where in depth: gradient flow" in report and "PlainNet / ResNet (early)" in report
    # and the curvature per stage: the sharpness stage's block rows, drawn and tabulated
    (blocks,) = result.block_profiles
    assert blocks.depth == 8 and blocks.png.exists()
    assert "## Where in depth: curvature per stage" in report and "PlainNet / ResNet (λmax)" in report
    table = list(csv.DictReader((out / "plots" / "depth" / "blocks.csv").open()))
    assert (out / "plots" / "depth" / "blocks.md").exists()
    assert [r["stage"] for r in table] == ["stem", "layer1", "layer2", "layer3", "head"]
    for side, model in (("first", "resnet8"), ("second", "plain8")):
        name = run_paths(out, model, 0, "tiny").run_name
        rows = json.loads((out / "sharpness" / f"{name}.blocks.json").read_text())["rows"]
        assert [r["block"] for r in rows] == [r["stage"] for r in table]
        # the table's numbers are the run's own block file's (one seed: no λmax interval)
        assert [float(r[f"{side}_trace"]) for r in table] == [r["trace"] for r in rows]
        assert [float(r[f"{side}_lambda_max"]) for r in table] == [r["lambda_max"] for r in rows]
        assert all(r[f"{side}_lambda_max_half"] == "" for r in table)
        # the stages partition the parameters, so the block traces sum to the whole trace
        # probe by probe (the same Hutchinson probes)
        whole = json.loads((out / "sharpness" / f"{name}.json").read_text())["result"]
        assert sum(r["trace"] for r in rows) == pytest.approx(whole["trace"], rel=1e-9, abs=1e-9)
        assert sum(r["num_params"] for r in rows) == whole["num_parameters"]


def test_report_markdown_links_existing_files(smoke):
    _, result = smoke
    text = result.report_md.read_text()
    for heading in ("## Table 1", "## Table 2", "## Sharpness", "## Training curves",
                    "## Loss landscapes", "### Interactive 3-D surfaces",
                    "## Optimization trajectories", "## Curvature maps",
                    "## Hessian eigenvalue density", "## Flatness with error bars"):
        assert heading in text
    assert "ResNet-8" in text and "PlainNet-8" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) >= 8
    for link in links:
        assert (result.out_dir / link).exists(), link
    html = result.report_html.read_text()
    assert html.count("data:image/png;base64,") >= 7  # 4 curve figures + contours + surfaces
    assert 'src="plots/' not in html and "<script src=" not in html  # self-contained
    assert html.count('class="surface"') == 2


def test_rerun_reuses_everything(smoke):
    config, first = smoke
    finals = {m: run_paths(first.out_dir, m, 0, "tiny").final for m in MODELS}
    before = {m: p.stat().st_mtime_ns for m, p in finals.items()}
    surfaces = {p: p.stat().st_mtime_ns for folder in ("landscapes", "trajectories")
                for p in (first.out_dir / folder).glob("*.h5")}
    second = run_study(config)
    assert {m: p.stat().st_mtime_ns for m, p in finals.items()} == before
    assert {p: p.stat().st_mtime_ns for p in surfaces} == surfaces
    assert [m.test_acc for m in second.metrics] == [m.test_acc for m in first.metrics]
    history = json.loads((first.out_dir / "timings.json").read_text())
    assert len(history) == 2 and set(history[1]["steps_s"]) >= {"training", "landscapes"}


def test_another_budget_in_the_same_folder_is_refused(smoke):
    config, _ = smoke
    from dataclasses import replace

    with pytest.raises(UserError, match="'smoke' budget"):
        run_study(replace(config, budget="quick"))


def test_a_folder_from_before_a_new_stage_is_still_this_budget(tmp_path):
    """Budget numbers added since a study folder was made (the density, the flatness) do
    not make it "another budget"; a changed number does."""
    from dataclasses import asdict

    from depthscape.study.runner import _check_folder, _saved_study, _settings

    budget = get_budget("quick")
    settings = _settings(StudyConfig(out_dir=str(tmp_path)), budget, ["resnet20"])
    old = {k: v for k, v in settings["budget"].items() if not k.startswith(("density", "flat"))}
    (tmp_path / "study.json").write_text(json.dumps({**settings, "budget": old}))
    _check_folder(tmp_path, _saved_study(tmp_path), settings)
    # the sharpness recomputes where its settings change (the quick budget's Lanczos steps
    # went from 8 to 40): not another budget; a training number is
    old["sharpness_power_iters"] = 8
    (tmp_path / "study.json").write_text(json.dumps({**settings, "budget": old}))
    _check_folder(tmp_path, _saved_study(tmp_path), settings)
    old["train_subset"] = 5000
    (tmp_path / "study.json").write_text(json.dumps({**settings, "budget": old}))
    with pytest.raises(UserError, match="'quick' budget"):
        _check_folder(tmp_path, _saved_study(tmp_path), settings)
    assert asdict(budget)["stages"]["density"]["runs"] == 2


def test_study_cli_switches_turn_the_density_and_flatness_off(monkeypatch, tmp_path):
    seen = {}

    def fake(config):
        seen["config"] = config
        raise UserError("stop here")

    monkeypatch.setattr("depthscape.study.runner.run_study", fake)
    assert main(["study", "--budget", "smoke", "--out", str(tmp_path / "s"), "--no-density",
                 "--no-flatness"]) == 2
    assert not seen["config"].density and not seen["config"].flatness
    assert main(["study", "--budget", "smoke", "--out", str(tmp_path / "s")]) == 2
    assert seen["config"].density and seen["config"].flatness


def test_interrupted_training_resumes(tmp_path, tiny_data, cache_dir):
    from depthscape.training.loop import train

    config = StudyConfig(budget="smoke", out_dir=str(tmp_path / "out"), dataset=str(tiny_data),
                         cache_dir=str(cache_dir), models=["resnet8"], landscapes=False,
                         sharpness=False, progress=False)
    (first,) = training_configs(config, get_budget("smoke"), ["resnet8"])
    first.stop_after = 4
    stopped = train(first)
    assert not stopped.finished and stopped.paths.resume.exists()
    result = run_study(config)
    total = get_budget("smoke").recipe("resnet8").length
    assert result.metrics[0].iterations == total
    assert not stopped.paths.resume.exists()
    iterations = [int(r["iteration"]) for r in csv.DictReader(stopped.paths.log.open())]
    assert iterations == sorted(set(iterations)) and iterations[-1] == total
    assert "landscapes" not in result.timings and result.report_html.exists()


def test_seeds_repeat_every_model():
    config = StudyConfig(seeds=3, out_dir="x")
    configs = training_configs(config, get_budget("quick"), ["cnn", "resnet20"])
    assert [(c.model, c.seed) for c in configs] == [
        ("cnn", 0), ("resnet20", 0), ("cnn", 1), ("resnet20", 1), ("cnn", 2), ("resnet20", 2)]
    assert all(c.resume and c.scale == 1.0 for c in configs)  # recipes come pre-scaled
    cnn, resnet = configs[0].recipe, configs[1].recipe
    assert (cnn.unit, cnn.length, cnn.cosine_t_max) == ("epoch", 5, 5)
    assert (resnet.length, resnet.milestones) == (400, (200, 300))
    # quick runs its first phase at the spec's warm-up rate, a tenth of the lr
    assert (resnet.warmup_length, resnet.warmup_lr) == (200, 0.01)
    assert [resnet.lr_at(i) for i in (0, 199, 200, 299, 300)] == [0.01, 0.01, 0.01, 0.01,
                                                                   pytest.approx(0.001)]
    plain110 = get_budget("quick").recipe("plain110")
    assert (plain110.lr, plain110.warmup_lr, plain110.warmup_length) == (1e-3, 1e-4, 200)
    # paper is the spec's recipe exactly
    assert get_budget("paper").recipe("resnet110") == recipe_for("resnet110")


def test_study_cli_bad_input(tmp_path, capsys):
    assert main(["study", "--budget", "smoke", "--models", "resnet9", "--out",
                 str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "6n+2" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["study", "--budget", "smoke", "--models", "resnet8", "resnet-8", "--out",
                 str(tmp_path / "b")]) == 2
    assert "twice" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["study", "--budget", "smoke", "--out", str(blocker)]) == 2
    assert blocker.read_text() == "keep me"
    for bad in (["--budget", "huge"], ["--seeds", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["study", *bad])
        assert exit_info.value.code == 2
    help_text = main.__module__  # the budgets' numbers are in the command's help
    assert help_text
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "quick:" in capsys.readouterr().out


def test_interrupt_tells_to_rerun_the_study(tmp_path, tiny_data, cache_dir, monkeypatch, capsys):
    def interrupted(configs, dataset=None):
        raise UserError("interrupted at iteration 3; the run is saved in x.pth: rerun with "
                        "--resume to continue", exit_code=130)

    monkeypatch.setattr("depthscape.study.launcher.run_trainings", interrupted)
    code = main(["study", "--budget", "smoke", "--models", "resnet8", "--dataset", str(tiny_data),
                 "--cache-dir", str(cache_dir), "--out", str(tmp_path / "s"), "--no-progress"])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted at iteration 3" in err and "run the same study command again" in err
    assert "--resume" not in err


def _snapshots_written(every: int, length: int) -> int:
    """How many snapshots the training loop's writer keeps for a run of ``length`` units."""
    from depthscape.training.snapshots import SnapshotWriter

    # the writer's rule is the same in units as in steps (every_steps = every * epoch_steps)
    writer = SnapshotWriter("unused.h5", every, every, length)
    kept = 0
    for step in range(length + 1):
        if writer.due(step):
            writer.last_step, kept = step, kept + 1
    return kept


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_every_budget_keeps_enough_snapshots_for_every_trajectory(name):
    from depthscape.analysis.trajectory import MIN_SNAPSHOTS

    budget = get_budget(name)
    for model in budget.models:  # the seven of the spec, each on its own scaled schedule
        recipe = budget.recipe(model)
        kept = _snapshots_written(budget.snapshot_every(model), recipe.length)
        assert kept == budget.snapshot_count(model)
        assert kept >= MIN_SNAPSHOTS, (name, model, recipe.length, recipe.unit, kept)


def test_too_few_snapshots_are_a_note_not_an_option_to_change(tmp_path, tiny_data, cache_dir,
                                                              monkeypatch):
    from depthscape.study import runner

    # one snapshot per run: the start and the end, one fewer than a trajectory needs
    coarse = get_budget("smoke").with_stage("training", snapshots=1)
    monkeypatch.setitem(runner.BUDGETS, "smoke", coarse)
    assert coarse.snapshot_count("resnet8") == 2
    config = StudyConfig(budget="smoke", out_dir=str(tmp_path / "out"), dataset=str(tiny_data),
                         cache_dir=str(cache_dir), models=["resnet8"], landscapes=False,
                         sharpness=False, curvature=False, progress=False)
    result = run_study(config)
    assert result.trajectories == [] and len(result.notes) == 1
    note = result.notes[0]
    assert "resnet8" in note and "smoke budget" in note and "at least 3" in note
    assert "--snapshot-every" not in note and "--snapshot-every" not in result.report_md.read_text()
    assert note in result.report_md.read_text()


@pytest.mark.realdata
@pytest.mark.slow  # about 7 minutes on one busy core (decoding included), measured once
def test_smoke_study_finishes_on_real_cifar10(real_cifar10, tmp_path, cache_dir, capsys):
    """The issue's command on the real archive, every default of the smoke budget but the
    models: the CNN and one ResNet/PlainNet pair (all seven took about 6 minutes of CI,
    most of it the deeper models' figures and products; the tiny-data smoke above covers
    the pairing, the default seven are checked below)."""
    out = tmp_path / "study"
    models = ("cnn", "resnet20", "plain20")
    code = main(["study", "--budget", "smoke", "--data-dir", str(real_cifar10), "--out", str(out),
                 "--models", *models, "--no-progress"])
    assert code == 0, capsys.readouterr().err
    result_md = (out / "report.md").read_text()
    for model in models:
        paths = run_paths(out, model, 0, "cifar10")
        assert paths.final.exists() and (out / "trajectories" / f"{paths.run_name}.h5").exists()
    assert "no trajectory" not in result_md


def test_every_budget_runs_the_spec_s_seven_models_by_default():
    for name in ("paper", "quick", "smoke"):
        assert get_budget(name).models == ("cnn", "resnet20", "resnet56", "resnet110",
                                           "plain20", "plain56", "plain110")


@pytest.mark.parametrize("native", [True, False])
def test_a_new_quick_study_on_a_cpu_with_bf16_takes_bf16(tmp_path, monkeypatch, native):
    """Issue 18: the quick budget trains and draws its landscapes in bf16 on a CPU with
    native bf16 (its 45 minutes need it); on one without, fp32. Only a new folder. Each
    precision records who chose it (the report's sentence reads it)."""
    from depthscape.core import runtime
    from depthscape.study.runner import _arithmetic

    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: native)

    def resolve(name="quick", **switches):
        config, by = _arithmetic(StudyConfig(out_dir=str(tmp_path), device="cpu", **switches),
                                 get_budget(name), None)
        return config.precision, config.landscape_precision, by["precision"], \
            by["landscape_precision"]

    chosen = "budget" if native else "default"
    assert resolve() == ("bf16" if native else None, "bf16" if native else "fp32", chosen, chosen)
    for name in ("paper", "smoke"):  # the other budgets keep fp32 on the CPU
        assert resolve(name) == (None, "fp32", "default", "default")
    assert resolve(precision="fp32", landscape_precision="fp32") == ("fp32", "fp32", "asked",
                                                                     "asked")
    # one switch asked for, the other left to the budget: each says so
    assert resolve(precision="bf16") == ("bf16", "bf16" if native else "fp32", "asked", chosen)


def test_a_folder_keeps_the_arithmetic_it_was_made_with(tmp_path, monkeypatch):
    """A folder made before the arithmetic was recorded keeps fp32 (its runs and surfaces
    stay valid); one that recorded bf16 keeps bf16, and who chose it, even where the
    default would differ; one that recorded bf16 but not who chose it says "unknown"."""
    from dataclasses import replace

    from depthscape.core import runtime
    from depthscape.study.runner import _arithmetic

    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)
    quick = get_budget("quick")
    plain = StudyConfig(out_dir=str(tmp_path), device="cpu")
    old, by = _arithmetic(plain, quick, {"budget": {"name": "quick"}})
    assert (old.precision, old.landscape_precision) == (None, "fp32")
    assert by == {"precision": "default", "landscape_precision": "default"}
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    saved = {"arithmetic": {"precision": "bf16", "landscape_precision": "bf16",
                            "chosen_by": {"precision": "asked", "landscape_precision": "budget"}}}
    kept, by = _arithmetic(plain, quick, saved)
    assert (kept.precision, kept.landscape_precision) == ("bf16", "bf16")
    assert by == {"precision": "asked", "landscape_precision": "budget"}
    older = {"arithmetic": {"precision": "bf16", "landscape_precision": "bf16"}}
    assert _arithmetic(plain, quick, older)[1] == {"precision": "unknown",
                                                   "landscape_precision": "unknown"}
    fp32, by = _arithmetic(replace(plain, precision="fp32", landscape_precision="fp32"), quick,
                           saved)
    assert (fp32.precision, fp32.landscape_precision) == ("fp32", "fp32")
    assert by == {"precision": "asked", "landscape_precision": "asked"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", None])
def test_an_unreadable_study_json_is_refused_not_overwritten(tmp_path, content):
    """A study.json that cannot be read (not JSON, not an object, a directory) is refused in
    one line before any work: the folder's runs could not be matched to a budget, nor its
    arithmetic kept."""
    from depthscape.study.runner import start_study as _start

    path = tmp_path / "study.json"
    path.mkdir() if content is None else path.write_text(content)
    with pytest.raises(UserError, match="study.json .*another --out"):
        _start(StudyConfig(out_dir=str(tmp_path), budget="smoke", device="cpu"))
    assert path.is_dir() if content is None else path.read_text() == content


@pytest.mark.parametrize("native", [True, False])
def test_the_study_records_who_chose_its_arithmetic(tmp_path, monkeypatch, native):
    """study.json keeps chosen_by (the report's sentence reads it, and a later call keeps
    it where the default would now differ)."""
    from depthscape.core import runtime
    from depthscape.study.runner import start_study as _start

    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: native)
    chosen = "budget" if native else "default"
    study = _start(StudyConfig(out_dir=str(tmp_path / "a"), budget="quick", device="cpu"))
    saved = json.loads((tmp_path / "a" / "study.json").read_text())["arithmetic"]
    want = {"precision": chosen, "landscape_precision": chosen}
    assert saved["chosen_by"] == want and study.result.arithmetic["chosen_by"] == want
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: not native)
    again = _start(StudyConfig(out_dir=str(tmp_path / "a"), budget="quick", device="cpu"))
    assert again.result.arithmetic["chosen_by"] == want
    asked = _start(StudyConfig(out_dir=str(tmp_path / "b"), budget="smoke", device="cpu",
                               landscape_precision="bf16"))
    assert asked.result.arithmetic == {"landscapes": "bf16", "chosen_by": {
        "precision": "default", "landscape_precision": "asked"}}


def test_the_report_says_which_arithmetic_the_runs_used(smoke):
    """Issue 16/18: the summary names each run's recorded arithmetic and the landscapes';
    bf16 comes with what it means and how to get float32."""
    from dataclasses import replace

    import torch

    from depthscape.study.report import _arithmetic

    config, result = smoke
    text = (result.out_dir / "report.md").read_text()
    if not torch.cuda.is_available():  # the smoke budget keeps the CPU's fp32 default
        assert "Arithmetic: training fp32, channels-last (every run), landscapes and " \
               "trajectories fp32." in text
        assert "bf16" not in text.split("## ")[0]
    mixed = replace(result, arithmetic={"training": {"resnet8": "bf16, channels-last",
                                                      "plainnet8": "fp32"},
                                        "landscapes": "bf16"})

    def sentence(training, landscapes, result=mixed):
        chosen = {"precision": training, "landscape_precision": landscapes}
        return _arithmetic(replace(result, arithmetic={**result.arithmetic, "chosen_by": chosen}),
                           get_budget("quick"))

    line = sentence("budget", "budget")
    assert "training bf16, channels-last (resnet8); fp32 (plainnet8)" in line
    assert "landscapes and trajectories bf16" in line and "--landscape-precision fp32" in line
    assert "to finish in time" in line and "asked for" not in line
    asked = sentence("asked", "asked")  # bf16 asked for: not the budget's choice
    assert "to finish in time" not in asked and "asked for with `--precision`" in asked
    both = sentence("asked", "budget")  # one each: both are said
    assert "to finish in time" in both and "asked for" in both
    # no landscape in the report: its precision is not named, nor who chose it
    bare = replace(mixed, landscapes=[], trajectories=[])
    assert "to finish in time" not in sentence("asked", "budget", bare)
    fp32_runs = replace(bare, arithmetic={"training": {"resnet8": "fp32"}, "landscapes": "bf16"})
    assert "bf16" not in sentence("asked", "budget", fp32_runs)
    default = sentence("default", "unknown")  # CUDA's default bf16, an old folder: neither
    assert "to finish in time" not in default and "asked for" not in default
    assert default.endswith("not equal to it.")
