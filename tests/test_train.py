"""The training loop end to end on small data written to disk: logs, checkpoints, resume."""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.csvlog import LOG_COLUMNS, read_log
from depthscape.core.errors import TrainingDiverged, UserError
from depthscape.core.recipes import recipe_for
from depthscape.core.trained import load_trained_run
from depthscape.training.loop import BatchSchedule, TrainConfig, train

SHORT = dict(log_every=4, eval_every=6, checkpoint_every=5, progress=False)


def resnet_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """ResNet-8 with the ResNet-20 recipe shrunk to 12 iterations (decays at 6 and 9)."""
    settings = dict(model="resnet8", dataset=str(data), out_dir=str(out),
                    scale=12 / 64_000, **SHORT)
    settings.update(overrides)
    return TrainConfig(**settings)


def rows_without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in read_log(path)]


def assert_same_weights(a: Path, b: Path) -> None:
    state_a, state_b = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_few_iterations_end_to_end(tiny_data, cache_dir, tmp_path):
    result = train(resnet_config(tiny_data, tmp_path / "out"))
    assert result.finished and result.iteration == 12
    paths = result.paths
    assert paths.log == tmp_path / "out" / "logs" / f"resnet8_{tiny_data.name}_log.csv"
    with open(paths.log) as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == LOG_COLUMNS
    rows = read_log(paths.log)
    assert [r["iteration"] for r in rows] == [4, 8, 12]
    assert [r["lr"] for r in rows] == [0.1, 0.01, 0.001]  # lr used at iterations 4, 8, 12
    assert math.isnan(rows[0]["test_acc"]) and not math.isnan(rows[1]["test_acc"])
    assert all(abs(r["train_acc"] + r["train_err"] - 100) < 1e-9 for r in rows)
    assert rows[0]["epoch"] == pytest.approx(4 * 128 / 72, abs=1e-4)
    assert not paths.resume.exists()
    trained = load_trained_run(paths.final)
    model, checkpoint = trained.model, trained.checkpoint
    assert checkpoint["model"] == "resnet8" and checkpoint["iteration"] == 12
    assert checkpoint["config"]["recipe"]["length"] == 12
    assert checkpoint["config"]["preprocess"]["mean"] == [125.0, 123.0, 114.0]
    assert checkpoint["metrics"]["test_acc"] == rows[-1]["test_acc"]
    assert sum(p.numel() for p in model.parameters()) > 0


def test_spec_file_names_for_cifar10(tmp_path):
    from depthscape.core.runs import run_paths

    assert run_paths(tmp_path, "resnet56").final.name == "resnet-56_cifar10.pth"
    assert run_paths(tmp_path, "plainnet 110").final.name == "plainnet-110.cifar10.pth"
    assert run_paths(tmp_path, "cnn").final.name == "cnn_cifar10.pth"
    assert run_paths(tmp_path, "plain110").log.name == "plainnet110_log.csv"
    assert run_paths(tmp_path, "resnet20", seed=2).log.name == "resnet20_seed2_log.csv"


def test_resume_gives_identical_weights_and_rows(tiny_data, cache_dir, tmp_path):
    whole = train(resnet_config(tiny_data, tmp_path / "whole"))
    first = train(resnet_config(tiny_data, tmp_path / "split", stop_after=7))
    assert not first.finished and first.iteration == 7 and first.paths.resume.exists()
    second = train(resnet_config(tiny_data, tmp_path / "split", resume=True))
    assert second.finished and second.iteration == 12
    assert_same_weights(whole.paths.final, second.paths.final)
    assert rows_without_time(whole.paths.log) == rows_without_time(second.paths.log)


def test_resume_after_a_kill_drops_rows_written_past_the_checkpoint(tiny_data, cache_dir, tmp_path):
    whole = train(resnet_config(tiny_data, tmp_path / "whole"))
    out = tmp_path / "killed"
    paths = train(resnet_config(tiny_data, out, stop_after=5)).paths
    saved = tmp_path / "at5.pth"
    shutil.copy(paths.resume, saved)
    train(resnet_config(tiny_data, out, stop_after=10, resume=True))
    assert [r["iteration"] for r in read_log(paths.log)] == [4, 8]
    shutil.copy(saved, paths.resume)  # as if killed after the row of iteration 8 was written
    train(resnet_config(tiny_data, out, resume=True))
    assert_same_weights(whole.paths.final, paths.final)
    assert rows_without_time(whole.paths.log) == rows_without_time(paths.log)


def test_cnn_epoch_recipe_resumes_exactly_with_dropout(tiny_data, cache_dir, tmp_path):
    def config(out, **kw):
        return TrainConfig(model="cnn", dataset=str(tiny_data), out_dir=str(out),
                           scale=2 / 50, progress=False, checkpoint_every=1000, **kw)

    whole = train(config(tmp_path / "whole"))
    rows = read_log(whole.paths.log)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["iteration"] for r in rows] == [3, 6]  # 72 images at batch 32: 3 steps/epoch
    assert rows[0]["lr"] == 1e-3 and rows[1]["lr"] == pytest.approx(5e-4)
    train(config(tmp_path / "split", stop_after=4))
    resumed = train(config(tmp_path / "split", resume=True))
    assert_same_weights(whole.paths.final, resumed.paths.final)
    assert rows_without_time(whole.paths.log) == rows_without_time(resumed.paths.log)


def test_resume_of_a_finished_run_returns_without_training(tiny_data, cache_dir, tmp_path):
    first = train(resnet_config(tiny_data, tmp_path))
    mtime = first.paths.final.stat().st_mtime_ns
    again = train(resnet_config(tiny_data, tmp_path, resume=True))
    assert again.finished and again.test_acc == first.test_acc
    assert first.paths.final.stat().st_mtime_ns == mtime


def test_existing_run_is_not_overwritten_by_accident(tiny_data, cache_dir, tmp_path):
    first = train(resnet_config(tiny_data, tmp_path))
    before = first.paths.final.read_bytes()
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        train(resnet_config(tiny_data, tmp_path))
    assert first.paths.final.read_bytes() == before
    train(resnet_config(tiny_data, tmp_path, overwrite=True))


def test_resume_with_other_settings_is_refused(tiny_data, cache_dir, tmp_path):
    train(resnet_config(tiny_data, tmp_path, stop_after=3))
    with pytest.raises(UserError, match="different setting"):
        train(resnet_config(tiny_data, tmp_path, resume=True, train_subset=50))


class _DivergeAfter:
    """Stands in for torch.nn.functional in depthscape.training.step; the loss turns NaN after n calls."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def cross_entropy(self, *args, **kwargs):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(*args, **kwargs)
        return loss * math.nan if self.calls > self.n else loss


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_data, cache_dir, tmp_path,
                                                             monkeypatch):
    import depthscape.training.step as step_module

    monkeypatch.setattr(step_module, "F", _DivergeAfter(6))
    config = resnet_config(tiny_data, tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        train(config)
    message = str(info.value)
    assert "non-finite" in message and "iteration 5" in message and "\n" not in message
    (resume_file,) = (tmp_path / "models").glob("resnet-8_*.resume.pth")
    resume = load_checkpoint(resume_file)
    assert resume["iteration"] == 5
    assert all(torch.isfinite(t).all() for t in resume["model_state"].values() if t.is_floating_point())
    assert list((tmp_path / "models").glob("*.pth")) == [resume_file]


def test_batch_schedule_streams_fixed_batches_over_epochs():
    schedule = BatchSchedule(10, 4, seed=3, stream=True)
    seen = torch.cat([schedule.indices(s) for s in range(5)])  # 20 = two epochs
    assert all(len(schedule.indices(s)) == 4 for s in range(5))
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])
    again = BatchSchedule(10, 4, seed=3, stream=True)
    assert torch.equal(again.indices(3), schedule.indices(3))  # a pure function of (seed, step)
    epochs = BatchSchedule(10, 4, seed=3, stream=False)
    assert [len(epochs.indices(s)) for s in range(4)] == [4, 4, 2, 4]


def test_subsets_are_fixed_and_recorded(tiny_data, cache_dir, tmp_path):
    result = train(resnet_config(tiny_data, tmp_path, train_subset=30, test_subset=9))
    checkpoint = load_checkpoint(result.paths.final)
    assert checkpoint["config"]["dataset"]["train_size"] == 30
    assert checkpoint["config"]["dataset"]["test_size"] == 9
    assert result.test_acc * 9 / 100 == pytest.approx(round(result.test_acc * 9 / 100))


def test_custom_recipe_object(tiny_data, cache_dir, tmp_path):
    recipe = replace(recipe_for("resnet20"), length=3, milestones=(), log_every=1)
    result = train(TrainConfig(model="resnet8", dataset=str(tiny_data), out_dir=str(tmp_path),
                               recipe=recipe, progress=False))
    assert [r["iteration"] for r in read_log(result.paths.log)] == [1, 2, 3]
