"""Issue 11's mechanisms one by one: argument types, stale temporaries, overwrite, damaged
logs, memory refusal, locks of surfaces and studies, batch-size independent landscapes."""

from __future__ import annotations

import argparse
import math
import os

import pytest
import torch

from depthscape.cli._common import float_in, int_in, model_name
from depthscape.core.atomic import atomic_path, ensure_writable_dir, remove_stale_temporaries
from depthscape.core.csvlog import (
    LOG_COLUMNS,
    DamagedLog,
    append_log,
    init_log_file,
    read_log,
    truncate_log,
)
from depthscape.core.errors import UserError
from depthscape.core.limits import require_fits, training_bytes
from depthscape.core.locking import LockHeld, claim_run, exclusive_lock, output_lock_path
from depthscape.core.runs import run_paths


@pytest.mark.parametrize("text,ok", [("1", True), ("2147483647", True), ("0", False),
                                     ("2147483648", False), ("1e3", False), ("inf", False),
                                     ("nan", False), ("abc", False), ("-3", False)])
def test_int_in(text, ok):
    parse = int_in(1)
    if ok:
        assert parse(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


@pytest.mark.parametrize("text,ok", [("0.5", True), ("1e-9", True), ("0", False), ("1", True),
                                     ("1.0000001", False), ("inf", False), ("-inf", False),
                                     ("nan", False), ("1e999", False), ("x", False)])
def test_float_in(text, ok):
    parse = float_in(0.0, 1.0, lo_open=True)
    if ok:
        assert parse(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


@pytest.mark.parametrize("depth,fragment", [("abc", "'abc' of resnet is not a number"),
                                            ("-4", "got -4"), ("0", "got 0"),
                                            ("10000000", "up to")])
def test_model_name_names_what_was_typed(depth, fragment):
    with pytest.raises(UserError, match=fragment):
        model_name("resnet", depth)
    assert model_name("resnet", "56") == "resnet56"


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_are_removed_by_the_next_claim(tmp_path):
    paths = run_paths(tmp_path, "resnet8", 0, "data")
    init_log_file(paths.log, LOG_COLUMNS)
    paths.final.parent.mkdir(parents=True)
    dead = _dead_pid()
    stale = [paths.log.with_name(f".{paths.log.name}.dstmp{dead}.k2j3h4ab.tmp"),
             paths.resume.with_name(f".{paths.resume.name}.dstmp{dead}.a8s7d6cd.tmp")]
    for tmp in stale:
        tmp.write_bytes(b"half a file")
    kept = [paths.log.with_name(f".{paths.log.name}.dstmp{dead}.zz.tmp".replace(
                paths.run_name, "resnet80")),  # another run's
            paths.log.with_name(f".{paths.log.name}.k2j3h4.tmp"),  # no marker: not depthscape's
            paths.log.with_name(f".{paths.log.name}.dstmp{os.getppid()}.live.tmp")]  # a live writer
    for tmp in kept:
        tmp.write_bytes(b"")
    with claim_run(paths):
        assert not any(tmp.exists() for tmp in stale)
    assert all(tmp.exists() for tmp in kept) and paths.log.exists()


def test_interrupted_atomic_write_leaves_a_temporary_that_cleanup_finds(tmp_path):
    target = tmp_path / "surface.h5"
    dead = _dead_pid()
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        assert tmp.name.startswith(f".surface.h5.dstmp{os.getpid()}.")
        leftover = tmp.with_name(tmp.name.replace(f"dstmp{os.getpid()}", f"dstmp{dead}"))
        leftover.write_bytes(b"as a SIGKILL would leave it")
        raise KeyboardInterrupt
    assert not tmp.exists()
    assert remove_stale_temporaries([target]) == [leftover]


def test_overwrite_removes_every_file_of_the_old_run_before_training(tmp_path):
    paths = run_paths(tmp_path, "resnet8", 0, "data")
    files = (paths.log, paths.config, paths.final, paths.resume, paths.snapshots)
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old run")
    with claim_run(paths, overwrite=False):
        assert all(p.exists() for p in files)
    with claim_run(paths, overwrite=True):
        assert not any(p.exists() for p in files)


def test_second_claim_of_a_run_in_one_process_is_refused(tmp_path):
    paths = run_paths(tmp_path, "resnet8", 0, "data")
    with claim_run(paths):
        with pytest.raises(LockHeld, match="run resnet8_data is being written by another process"):
            with claim_run(paths, overwrite=True):
                pass
        assert True


def _log(tmp_path, rows):
    path = tmp_path / "log.csv"
    init_log_file(path, LOG_COLUMNS)
    for row in rows:
        append_log(path, row)
    return path


def test_truncate_log_keeps_rows_up_to_the_checkpoint(tmp_path):
    row = [1, 0.1, 0.1, 2.0, 10.0, 90.0, None, None, None, 1.0]
    path = _log(tmp_path, [[i, *row[1:]] for i in (4, 8, 12)])
    truncate_log(path, 8)
    assert [r["iteration"] for r in read_log(path)] == [4, 8]
    assert math.isnan(read_log(path)[0]["test_loss"])


@pytest.mark.parametrize("damage,fragment", [
    (lambda text: text.replace("2.0", "two", 1), "train_loss is 'two', not a number"),
    (lambda text: text.rstrip("\n") + ",extra\n", "11 cells where the header has 10"),
    (lambda text: text.replace("iteration", "step", 1), "is not a depthscape training log"),
    (lambda text: text.replace("8,", "3,", 1), "iteration '3' does not follow 4"),
    (lambda text: text.replace("4,", "4.5,", 1), "iteration '4.5'"),
])
def test_damaged_log_is_refused_and_left_alone(tmp_path, damage, fragment):
    row = [0, 0.1, 0.1, 2.0, 10.0, 90.0, None, None, None, 1.0]
    path = _log(tmp_path, [[i, *row[1:]] for i in (4, 8)])
    path.write_text(damage(path.read_text()))
    before = path.read_bytes()
    with pytest.raises(DamagedLog, match="--overwrite") as caught:
        truncate_log(path, 8)
    assert fragment in str(caught.value) and str(path) in str(caught.value)
    assert path.read_bytes() == before
    with pytest.raises(DamagedLog, match="move it away"):
        read_log(path)


def test_memory_refusal_names_the_size():
    assert training_bytes("resnet110", 128) > training_bytes("resnet56", 128) > 0
    assert training_bytes("plain56", 128) > 0
    with pytest.raises(UserError, match=r"needs about .* GiB, more than"):
        require_fits(training_bytes("resnet60002", 128), "training resnet60002")
    require_fits(training_bytes("resnet20", 128), "training resnet20")  # fits anywhere


def test_output_check_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target, create=False) == target
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to output directory"):
        ensure_writable_dir(blocker / "sub", create=False)


def test_a_locked_study_folder_is_refused_before_any_work(tmp_path):
    from depthscape.study.runner import StudyConfig, run_study

    with exclusive_lock(tmp_path / ".study.lock", "study"):
        with pytest.raises(LockHeld, match="study folder"):
            run_study(StudyConfig(out_dir=str(tmp_path), dataset="nowhere-to-be-found"))
    assert not (tmp_path / "study.json").exists()


@pytest.fixture
def tiny_checkpoint(tiny_data, cache_dir, tmp_path_factory):
    from depthscape.training.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    return train(TrainConfig(model="resnet8", dataset=str(tiny_data), out_dir=str(out),
                             scale=2 / 64_000, progress=False)).paths.final


def test_a_locked_surface_is_refused(tiny_checkpoint, tmp_path):
    from depthscape.analysis.landscape import LandscapeConfig, compute_landscape

    output = tmp_path / "s.h5"
    with exclusive_lock(output_lock_path(output), "surface"):
        with pytest.raises(LockHeld):
            compute_landscape(tiny_checkpoint, LandscapeConfig(resolution=3), output=output,
                              progress=False)
    assert not output.exists()


def test_a_curvature_map_waits_for_no_one_holding_its_surface(tiny_checkpoint, tmp_path):
    """The curvature map rewrites the surface file: it takes the surface's lock, as landscape does."""
    from depthscape.analysis.landscape import LandscapeConfig, compute_landscape
    from depthscape.analysis.landscape.curvature import CurvatureConfig, compute_curvature

    output = compute_landscape(tiny_checkpoint, LandscapeConfig(resolution=3, subset=4),
                               output=tmp_path / "s.h5", progress=False)
    before = output.read_bytes()
    with exclusive_lock(output_lock_path(output), "surface"):
        with pytest.raises(LockHeld):
            compute_curvature(output, tiny_checkpoint, CurvatureConfig(resolution=2, subset=4,
                                                                       iterations=2),
                              progress=False)
    assert output.read_bytes() == before


def test_one_surface_holds_one_batch_size(tiny_checkpoint, tmp_path):
    """A convolution's last digits depend on the batch's shape on the CPU, so the batch used
    is part of the surface's identity: a resume never mixes two. Batch sizes the CPU caps to
    the same batch give the same surface."""
    from depthscape.analysis.landscape import LandscapeConfig, compute_landscape, read_surface

    def config(batch_size):
        return LandscapeConfig(resolution=3, batch_size=batch_size, workers=1, device="cpu")

    output = tmp_path / "s.h5"
    first = read_surface(compute_landscape(tiny_checkpoint, config(200), output=output,
                                           progress=False))
    assert first["settings"]["batch_size"] == 128  # the CPU's cap
    again = read_surface(compute_landscape(tiny_checkpoint, config(1000), output=output,
                                           progress=False))
    assert torch.equal(torch.from_numpy(first["loss"]), torch.from_numpy(again["loss"]))
    with pytest.raises(UserError, match="batch_size is 128 there, 5 here"):
        compute_landscape(tiny_checkpoint, config(5), output=output, progress=False)
    other = compute_landscape(tiny_checkpoint, config(5), progress=False)  # its own file
    assert other != output and read_surface(other)["settings"]["batch_size"] == 5
    # per-sample losses summed in float64: only the network's arithmetic differs, ~1e-6
    assert torch.allclose(torch.from_numpy(read_surface(other)["loss"]),
                          torch.from_numpy(first["loss"]), rtol=1e-5, atol=0)
