"""Weight snapshots during training: one file per run, resumable like the checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from depthscape.core.errors import UserError
from depthscape.core.trained import load_trained_run
from depthscape.training.loop import TrainConfig, train
from depthscape.training.snapshots import flatten_parameters, snapshot_path


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    """ResNet-8, 12 iterations, a snapshot every 3 and a checkpoint every 5."""
    settings = dict(model="resnet8", dataset=str(data), out_dir=str(out), scale=12 / 64_000,
                    log_every=4, eval_every=6, checkpoint_every=5, progress=False,
                    snapshot_every=3)
    settings.update(overrides)
    return TrainConfig(**settings)


def contents(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {"steps": f["steps"][()], "weights": f["weights"][()],
                "attrs": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}}


def test_snapshots_written_and_match_final_weights(tiny_data, cache_dir, tmp_path):
    result = train(config(tiny_data, tmp_path / "out"))
    path = snapshot_path(result.paths.final)
    assert path == result.paths.final.with_name(result.paths.final.stem + ".snapshots.h5")
    data = contents(path)
    assert data["steps"].tolist() == [0, 3, 6, 9, 12]
    model = load_trained_run(result.paths.final).model
    assert np.array_equal(data["weights"][-1], flatten_parameters(model))
    names = json.loads(data["attrs"]["names"])
    assert names and all(model.get_parameter(n).dim() > 1 for n in names)  # no biases, no BN
    assert data["weights"].dtype == np.float32
    assert data["weights"].shape[1] == sum(model.get_parameter(n).numel() for n in names)
    assert not np.array_equal(data["weights"][0], data["weights"][-1])


def test_stop_and_resume_gives_the_same_file(tiny_data, cache_dir, tmp_path):
    whole = train(config(tiny_data, tmp_path / "whole"))
    first = train(config(tiny_data, tmp_path / "parts", stop_after=7))
    assert not first.finished
    part = snapshot_path(first.paths.final)
    assert contents(part)["steps"].tolist() == [0, 3, 6]  # written with the checkpoint at 7
    train(config(tiny_data, tmp_path / "parts", resume=True))
    a, b = contents(snapshot_path(whole.paths.final)), contents(part)
    assert a["steps"].tolist() == b["steps"].tolist()
    assert np.array_equal(a["weights"], b["weights"])
    assert a["attrs"] == b["attrs"]


def test_rows_after_the_resume_checkpoint_are_dropped(tiny_data, cache_dir, tmp_path):
    """A kill between writing the snapshots and the checkpoint leaves later rows: resume drops them."""
    whole = train(config(tiny_data, tmp_path / "whole"))
    first = train(config(tiny_data, tmp_path / "parts", stop_after=5))
    resume_file = first.paths.resume
    saved = resume_file.read_bytes()
    train(config(tiny_data, tmp_path / "parts", stop_after=7, resume=True))  # file now at 6
    resume_file.write_bytes(saved)  # as if killed after the snapshots, before the checkpoint
    assert contents(snapshot_path(first.paths.final))["steps"].tolist() == [0, 3, 6]
    train(config(tiny_data, tmp_path / "parts", resume=True))
    a, b = contents(snapshot_path(whole.paths.final)), contents(snapshot_path(first.paths.final))
    assert a["steps"].tolist() == b["steps"].tolist() == [0, 3, 6, 9, 12]
    assert np.array_equal(a["weights"], b["weights"])


def test_a_resume_without_its_snapshot_file_is_refused(tiny_data, cache_dir, tmp_path):
    """Restarting the file silently would lose the snapshots before the resume point."""
    first = train(config(tiny_data, tmp_path / "parts", stop_after=7))
    snapshot_path(first.paths.final).unlink()
    with pytest.raises(UserError, match="snapshots.h5 is missing"):
        train(config(tiny_data, tmp_path / "parts", resume=True))


def test_no_snapshots_unless_asked(tiny_data, cache_dir, tmp_path):
    result = train(config(tiny_data, tmp_path / "out", snapshot_every=None))
    assert not snapshot_path(result.paths.final).exists()


def test_cnn_snapshots_count_epochs(tiny_data, cache_dir, tmp_path):
    # 72 images in batches of 32: 3 steps per epoch; 2 epochs, a snapshot every epoch
    result = train(config(tiny_data, tmp_path / "out", model="cnn", scale=2 / 50, snapshot_every=1))
    data = contents(snapshot_path(result.paths.final))
    assert data["steps"].tolist() == [0, 3, 6]
    assert data["attrs"]["unit"] == "epoch" and data["attrs"]["every_steps"] == 3
