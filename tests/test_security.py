"""Issue 19: names depthscape writes, with links (and other files) planted at them.

Group 1: every file is created without following a link (core/atomic.py): a symbolic link
planted at the name of a lock, the data cache, a temporary, a log, a checkpoint, a surface,
a plot, a table or the report never gets its target changed. Group 2: the stale-temporary
sweep removes only depthscape's own temporaries of dead writers, in the folders it writes.
Also: group 3 (OS errors, one line), 4 (a damaged surface file, one line), 5 (non-finite
weights), 6 (data-loading edge cases) and 7 (resume with lost log rows or changed data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from depthscape.core.atomic import (
    TEMP_MARKER,
    atomic_open,
    atomic_path,
    atomic_write_text,
    remove_stale_temporaries_in,
    save_figure,
)
from depthscape.core.csvlog import LOG_COLUMNS, append_log, init_log_file
from depthscape.core.errors import UserError
from depthscape.core.locking import claim_folder, claim_output, claim_run, exclusive_lock
from depthscape.core.runs import run_paths

VICTIM_TEXT = "the victim's own content\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's, elsewhere, that a planted link points at."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT)
    return path


def plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- locks: a link at a lock's name is refused with one line naming it ------------------------

def _lock_claims(tmp_path):
    paths = run_paths(tmp_path / "run", "resnet8", 0, "data")
    surface = tmp_path / "landscapes" / "resnet8.h5"
    folder = tmp_path / "plots"
    return {
        "plain": (tmp_path / ".x.lock", lambda: exclusive_lock(tmp_path / ".x.lock", "thing")),
        "run": (paths.log.with_name(f".{paths.run_name}.lock"), lambda: claim_run(paths)),
        "surface": (surface.with_name(f".{surface.name}.lock"),
                    lambda: claim_output(surface, "surface")),
        "folder": (folder / ".depthscape.lock", lambda: claim_folder(folder, "plots folder")),
    }


@pytest.mark.parametrize("kind", ["plain", "run", "surface", "folder"])
def test_a_link_at_a_locks_name_is_refused_and_its_target_unchanged(kind, tmp_path, victim):
    lock, claim = _lock_claims(tmp_path)[kind]
    plant(lock, victim)
    with pytest.raises(UserError) as caught:
        with claim():
            pass
    message = str(caught.value)
    assert "\n" not in message and str(lock) in message and "symbolic link" in message
    assert victim.read_text() == VICTIM_TEXT
    assert lock.is_symlink()  # left where it is, for the user to see


def test_a_dangling_link_at_a_locks_name_creates_nothing(tmp_path):
    target = tmp_path / "elsewhere" / "created-by-the-link"
    lock = plant(tmp_path / ".x.lock", target)
    with pytest.raises(UserError, match="symbolic link"):
        with exclusive_lock(lock, "thing"):
            pass
    assert not target.exists() and not target.parent.exists()


def test_a_hard_link_or_fifo_at_a_locks_name_is_refused(tmp_path, victim):
    hard = tmp_path / ".hard.lock"
    os.link(victim, hard)
    with pytest.raises(UserError, match="hard links"):
        with exclusive_lock(hard, "thing"):
            pass
    assert victim.read_text() == VICTIM_TEXT
    fifo = tmp_path / ".fifo.lock"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a plain file"):  # and does not hang
        with exclusive_lock(fifo, "thing"):
            pass


# --- atomic writes: a link at the target's name is replaced, its target unchanged --------------

def _write_checkpoint(path):
    from depthscape.core.checkpoint import save_checkpoint

    save_checkpoint(path, {"state_dict": {}})


def _write_surface(path):
    import torch

    from depthscape.analysis.landscape.storage import SurfaceState, write_surface

    write_surface(path, SurfaceState(split="train", xcoordinates=np.linspace(-1, 1, 3),
                                     ycoordinates=None, loss=np.zeros(3), acc=np.zeros(3),
                                     done=np.ones(3, bool), directions=[{"w": torch.zeros(2)}],
                                     identity={"k": 1}))


def _write_figure(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        save_figure(fig, path.with_suffix(""), [path.suffix[1:]])
    finally:
        plt.close(fig)


def _write_density_plot(path):
    import torch

    from depthscape.analysis.spectrum import spectral_density
    from depthscape.analysis.spectrum_plots import plot_densities

    spectrum = torch.linspace(0, 5, 12).double()
    density = spectral_density(lambda v: [spectrum * v[0]], [torch.zeros(12, dtype=torch.float64)],
                               runs=1, steps=4, points=20)
    plot_densities([("a", density)], path)


def _write_flatness_plot(path):
    from depthscape.analysis.landscape.flatness import plot_flatness, slice_coordinates, summarize

    coordinates = slice_coordinates(1.0, 5, 0.5)
    plot_flatness(summarize(coordinates, [[1 + c * a * a for a in coordinates] for c in (1, 2)],
                            0.5, {"span": 1.0}), path)


def _write_table(path):
    from depthscape.analysis.tables import Table, write_table

    write_table(Table("t", ["a"], [["1"]], ["a"], [[1]]), path.parent, path.stem)


WRITERS = {
    "log.csv": lambda p: init_log_file(p, LOG_COLUMNS),
    "model.pth": _write_checkpoint,
    "surface.h5": _write_surface,
    "plot.png": _write_figure,
    "plot.pdf": _write_figure,
    "density.png": _write_density_plot,  # issue 34: these two were written through the link
    "flatness.png": _write_flatness_plot,
    "table.md": _write_table,
    "report.html": lambda p: atomic_write_text(p, "<html></html>"),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_link_at_an_outputs_name_is_replaced_never_written_through(name, tmp_path, victim):
    target = plant(tmp_path / "out" / name, victim)
    WRITERS[name](target)
    assert victim.read_text() == VICTIM_TEXT
    assert not target.is_symlink() and target.is_file() and target.stat().st_size > 0


def test_a_link_at_a_temporarys_name_is_never_written_through(tmp_path, victim, monkeypatch):
    """mkstemp's O_EXCL: a link where the temporary would go is skipped, not followed."""
    import tempfile

    target = tmp_path / "out" / "log.csv"
    planted = plant(target.with_name(f".{target.name}.{TEMP_MARKER}{os.getpid()}.AAAAAAAA.tmp"),
                    victim)
    names = iter(["AAAAAAAA", "BBBBBBBB"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    init_log_file(target, LOG_COLUMNS)
    assert victim.read_text() == VICTIM_TEXT and planted.is_symlink()
    assert target.read_text().startswith("iteration,")


def test_a_temporary_swapped_for_a_link_while_written_is_not_installed(tmp_path, victim):
    target = tmp_path / "surface.h5"
    target.write_text("previous surface")
    with pytest.raises(UserError, match="replaced by another process"):
        with atomic_path(target) as tmp:
            tmp.unlink()
            tmp.symlink_to(victim)
    assert target.read_text() == "previous surface" and victim.read_text() == VICTIM_TEXT


def test_appending_to_a_log_never_follows_a_link(tmp_path, victim):
    log = tmp_path / "logs" / "run_log.csv"
    init_log_file(log, LOG_COLUMNS)
    log.unlink()
    plant(log, victim)
    with pytest.raises(UserError) as caught:
        append_log(log, range(len(LOG_COLUMNS)))
    assert str(log) in str(caught.value) and "symbolic link" in str(caught.value)
    assert victim.read_text() == VICTIM_TEXT


def test_atomic_open_gives_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "f.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


# --- the decoded-data cache ---------------------------------------------------------------------

def _cache_file(data: Path, cache: Path) -> Path:
    from depthscape.core.data import cache_file_for

    return cache_file_for(data.resolve(), cache)


def test_a_link_at_the_caches_name_is_refused(tiny_data, tmp_path, victim):
    from depthscape.core.data import load_image_folder

    cache = tmp_path / "cache"
    link = plant(_cache_file(tiny_data, cache), victim)
    with pytest.raises(UserError) as caught:
        load_image_folder(tiny_data, cache)
    assert str(link) in str(caught.value) and "symbolic link" in str(caught.value)
    assert "\n" not in str(caught.value) and victim.read_text() == VICTIM_TEXT


def test_links_at_the_caches_old_temporary_names_are_not_followed(tiny_data, tmp_path, victim):
    """Before, the temporary was ``imagefolder-<key>.tmp<PID>.npz``: predictable."""
    from depthscape.core.data import load_image_folder

    cache = tmp_path / "cache"
    cache_file = _cache_file(tiny_data, cache)
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        plant(cache_file.with_suffix(f".tmp{pid}.npz"), victim)
    dead = dead_pid()
    stale = cache_file.with_name(f".{cache_file.name}.{TEMP_MARKER}{dead}.k2j3h4ab.tmp")
    stale.write_bytes(b"a killed decode's half")
    dataset = load_image_folder(tiny_data, cache)
    assert victim.read_text() == VICTIM_TEXT
    assert cache_file.is_file() and not cache_file.is_symlink() and not stale.exists()
    with np.load(cache_file) as archive:
        assert archive["train_x"].shape == tuple(dataset.train.images.shape)


# --- a real training run with links planted at every name it writes ----------------------------

def test_training_with_links_planted_at_its_files_leaves_their_targets_alone(
        tiny_data, cache_dir, tmp_path, victim):
    from depthscape.training.loop import TrainConfig, train
    from depthscape.training.snapshots import snapshot_path

    out = tmp_path / "out"
    paths = run_paths(out, "resnet8", 0, tiny_data.name)
    for name in (paths.log, paths.config, snapshot_path(paths.final)):
        plant(name, victim)
    # at the checkpoints' names dangling links (a link to a file would be an existing run)
    created = victim.with_name("made-through-a-link")
    for name in (paths.final, paths.resume):
        plant(name, created)
    train(TrainConfig(model="resnet8", dataset=str(tiny_data), out_dir=str(out),
                      scale=4 / 64_000, log_every=1, eval_every=100, checkpoint_every=2,
                      snapshot_every=2, progress=False))
    assert victim.read_text() == VICTIM_TEXT and not created.exists()
    for name in (paths.log, paths.config, paths.final, snapshot_path(paths.final)):
        assert name.is_file() and not name.is_symlink(), name
    assert json.loads(paths.config.read_text())["model"] == "resnet8"


# --- group 2: only depthscape's own stale temporaries are removed ------------------------------

def test_the_folder_sweep_keeps_a_users_temporaries_and_removes_only_its_own(tmp_path):
    folder = tmp_path / "tables"
    (folder / "metrics").mkdir(parents=True)
    (folder / "deeper").mkdir()
    dead = dead_pid()
    users = [folder / ".notes.tmp", folder / "deeper" / ".notes.tmp",
             folder / "metrics" / ".x.json.abc.tmp",  # no marker
             folder / f".t1.md.{TEMP_MARKER}{os.getppid()}.live1234.tmp"]  # writer alive
    for path in users:
        path.write_text("the user's")
    own = [folder / f".t1.md.{TEMP_MARKER}{dead}.k2j3h4ab.tmp",
           folder / "metrics" / f".r.json.{TEMP_MARKER}{dead}.a8s7d6cd.tmp"]
    below = folder / "deeper" / f".r.json.{TEMP_MARKER}{dead}.zzzzzzzz.tmp"  # not a folder it writes
    for path in [*own, below]:
        path.write_text("half")
    with claim_folder(folder, "tables folder", subfolders=("metrics",)):
        pass
    assert all(p.read_text() == "the user's" for p in users)
    assert not any(p.exists() for p in own) and below.exists()


@pytest.mark.parametrize("sub", ["plots/trajectories", "plots/curvature", "plots/landscapes", "."])
def test_a_rerun_study_removes_the_temporaries_a_killed_one_left(sub, tmp_path):
    from depthscape.study.runner import StudyConfig, run_study

    out = tmp_path / "study"
    (out / sub).mkdir(parents=True, exist_ok=True)
    dead = dead_pid()
    own = out / sub / f".run_traj.png.{TEMP_MARKER}{dead}.k2j3h4ab.tmp"
    own.write_bytes(b"half a png")
    users = out / sub / ".notes.tmp"
    users.write_text("the user's")
    with pytest.raises(UserError, match="--seeds"):  # refused after the sweep, before any work
        run_study(StudyConfig(budget="smoke", out_dir=str(out), seeds=0))
    assert not own.exists() and users.read_text() == "the user's"


def test_a_planted_link_named_like_a_temporary_is_removed_not_followed(tmp_path, victim):
    link = plant(tmp_path / f".x.png.{TEMP_MARKER}{dead_pid()}.k2j3h4ab.tmp", victim)
    assert remove_stale_temporaries_in([tmp_path]) == [link]
    assert not link.is_symlink() and victim.read_text() == VICTIM_TEXT


# --- group 5: a checkpoint with a non-finite weight is refused wherever it is loaded ------------

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A tiny ResNet-8 run stopped at iteration 9: rows at 4 and 8, checkpoint at 9."""
    from conftest import write_image_folder

    from depthscape.training.loop import TrainConfig

    root = tmp_path_factory.mktemp("stopped")
    data = write_image_folder(root / "data")

    def config(out, **overrides):
        settings = dict(model="resnet8", dataset=str(data), out_dir=str(out), scale=12 / 64_000,
                        log_every=4, eval_every=6, checkpoint_every=5, progress=False,
                        cache_dir=str(root / "cache"))
        settings.update(overrides)
        return TrainConfig(**settings)

    from depthscape.training.loop import train

    paths = train(config(root / "template", stop_after=9)).paths
    return root, config, paths


def _copy_run(stopped_run, target: Path):
    import shutil

    root, config, paths = stopped_run
    shutil.copytree(root / "template", target)
    return config, run_paths(target, "resnet8", 0, paths.run_name.split("_", 1)[1])


def _poison(path: Path, key: str, value: float) -> str:
    import torch

    data = torch.load(path, weights_only=True)
    weights = data[key]
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 4)
    weights[name][0, 0, 0, 0] = value
    torch.save(data, path)
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_final_checkpoint_with_a_non_finite_weight_is_refused_naming_it(
        value, stopped_run, tmp_path):
    from depthscape.core.checkpoint import save_checkpoint
    from depthscape.core.trained import load_trained_run

    _root, _config, paths = stopped_run
    import torch

    resume = torch.load(paths.resume, weights_only=True)
    final = tmp_path / "final.pth"
    save_checkpoint(final, {"model": "resnet8", "model_kwargs": resume["model_kwargs"],
                            "config": resume["config"], "state_dict": resume["model_state"]})
    load_trained_run(final, dataset=str(_root / "data"))  # finite: loads
    name = _poison(final, "state_dict", value)
    with pytest.raises(UserError) as caught:
        load_trained_run(final, dataset=str(_root / "data"))
    message = str(caught.value)
    assert "\n" not in message and f"tensor {name!r}" in message and "non-finite" in message
    result = subprocess.run([sys.executable, "-m", "depthscape", "eval", str(final)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("depthscape: error: ") and f"tensor {name!r}" in lines[0]


def test_a_bare_state_dict_with_a_nan_is_refused(stopped_run, tmp_path):
    import torch

    from depthscape.core.checkpoint import load_checkpoint

    state = torch.load(stopped_run[2].resume, weights_only=True)["model_state"]
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    load_checkpoint(bare)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 1)
    state[key][0] = float("nan")
    torch.save(state, bare)
    with pytest.raises(UserError, match=f"tensor {key!r} has 1 NaN"):
        load_checkpoint(bare)


def test_resuming_from_a_checkpoint_with_a_nan_weight_is_refused(stopped_run, tmp_path):
    from depthscape.training.loop import train

    config, paths = _copy_run(stopped_run, tmp_path / "run")
    log = paths.log.read_bytes()
    name = _poison(paths.resume, "model_state", float("nan"))
    with pytest.raises(UserError, match=f"non-finite weights: tensor {name!r}"):
        train(config(tmp_path / "run", resume=True))
    assert paths.log.read_bytes() == log


# --- group 7: a log that lost rows the checkpoint recorded is refused on resume ------------------

def _drop(lines: list[str], which: str) -> list[str]:
    header, rows = lines[0], lines[1:]
    return {"first": [header, *rows[1:]], "last": [header, *rows[:-1]],
            "all": [header]}[which]


@pytest.mark.parametrize("which", ["first", "last", "all", "file"])
def test_resume_refuses_a_log_that_lost_rows(which, stopped_run, tmp_path):
    from depthscape.training.loop import train

    config, paths = _copy_run(stopped_run, tmp_path / "run")
    lines = paths.log.read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["4", "8"]
    if which == "file":
        paths.log.unlink()
    else:
        paths.log.write_text("\n".join(_drop(lines, which)) + "\n")
    before = paths.log.read_bytes() if paths.log.exists() else None
    with pytest.raises(UserError) as caught:
        train(config(tmp_path / "run", resume=True))
    message = str(caught.value)
    assert "\n" not in message and str(paths.log) in message
    assert ("missing" if which == "file" else "row(s) up to iteration 9") in message
    assert (paths.log.read_bytes() if paths.log.exists() else None) == before
    assert paths.resume.exists()


def test_an_old_checkpoint_without_the_row_count_still_resumes(stopped_run, tmp_path):
    import torch

    from depthscape.core.csvlog import read_log
    from depthscape.training.loop import train

    config, paths = _copy_run(stopped_run, tmp_path / "run")
    data = torch.load(paths.resume, weights_only=True)
    assert data.pop("log_rows") == 2
    torch.save(data, paths.resume)
    result = train(config(tmp_path / "run", resume=True))
    assert result.finished and [r["iteration"] for r in read_log(paths.log)] == [4, 8, 12]


def test_a_resumed_run_counts_the_rows_before_the_resume(stopped_run, tmp_path):
    import torch

    from depthscape.training.loop import train

    config, paths = _copy_run(stopped_run, tmp_path / "run")
    train(config(tmp_path / "run", resume=True, stop_after=11))
    assert torch.load(paths.resume, weights_only=True)["log_rows"] == 2  # rows 4 and 8
    result = train(config(tmp_path / "run", resume=True))
    assert result.finished


# --- group 3: an operating-system error is one line naming the file, before any work if it can be

def _final_checkpoint(stopped_run, target: Path) -> Path:
    import torch

    from depthscape.core.checkpoint import save_checkpoint

    resume = torch.load(stopped_run[2].resume, weights_only=True)
    save_checkpoint(target, {"model": "resnet8", "model_kwargs": resume["model_kwargs"],
                             "config": resume["config"], "state_dict": resume["model_state"]})
    return target


def _one_line(result, code: int, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code and len(lines) == 1, result.stderr
    assert lines[0].startswith("depthscape: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_a_landscape_output_name_too_long_is_refused_before_any_work(stopped_run, tmp_path):
    checkpoint = _final_checkpoint(stopped_run, tmp_path / "final.pth")
    output = tmp_path / "landscapes" / ("s" * 240 + ".h5")
    result = subprocess.run(
        [sys.executable, "-m", "depthscape", "landscape", str(checkpoint), "--output", str(output),
         "--resolution", "3", "--dataset", str(stopped_run[0] / "data")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    _one_line(result, 2, "File name too long", "s" * 40)
    assert not list(tmp_path.rglob("*.h5"))
    assert "computing" not in result.stdout + result.stderr


def test_a_plot_name_too_long_is_refused_before_any_work(tmp_path):
    import argparse

    from depthscape.cli.plot import check_plot_names

    args = argparse.Namespace(quantity="loss", log=True, kinds=None, formats=["png", "pdf"])
    check_plot_names(tmp_path / ("s" * 180 + ".h5"), tmp_path, args)  # room left: fine
    with pytest.raises(UserError, match="File name too long"):
        check_plot_names(tmp_path / ("s" * 220 + ".h5"), tmp_path, args)


def test_a_trajectory_plot_name_too_long_is_refused_before_any_work(tmp_path):
    """`trajectory --output`'s picture names, <stem>_path.<png|pdf> (its arguments have no
    --quantity: checking them once ended in an AttributeError)."""
    import argparse

    from depthscape.cli.plot import check_plot_names

    args = argparse.Namespace(linear=False, no_plots=False, plots_dir=None)
    check_plot_names(tmp_path / ("s" * 200 + ".h5"), tmp_path, args)  # room left: fine
    with pytest.raises(UserError, match="File name too long"):
        check_plot_names(tmp_path / ("s" * 230 + ".h5"), tmp_path, args)


def test_run_names_too_long_are_refused_by_the_claim(tmp_path):
    paths = run_paths(tmp_path, "resnet8", 0, "d" * 245)
    with pytest.raises(UserError, match="File name too long"):
        with claim_run(paths):
            pass
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = sys.argv[1:]
exec(sys.argv[1])
"""


def _limited(limit: int, code: str, *argv: str):
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), code, *argv],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_a_checkpoint_the_disk_cannot_hold_is_one_line_and_the_old_one_kept(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"the previous checkpoint")
    code = ("import torch, sys\nfrom depthscape.core.checkpoint import save_checkpoint\n"
            "from depthscape.core.errors import UserError\n"
            "try:\n    save_checkpoint(sys.argv[2], {'state_dict': {'w': torch.zeros(100000)}})\n"
            "except UserError as e:\n    print(e)\n")
    result = _limited(20_000, code, str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cannot write {target}: File too large"
    assert target.read_bytes() == b"the previous checkpoint"
    assert not [p for p in tmp_path.iterdir() if p != target]  # no temporary left


def test_train_on_a_full_disk_is_one_line(stopped_run, tmp_path):
    data = stopped_run[0] / "data"
    code = ("import sys\nfrom depthscape.cli import main\nsys.exit(main(sys.argv[2:]))\n")
    result = _limited(50_000, code, "train", "resnet", "8", "--dataset", str(data),
                      "--out", str(tmp_path / "out"), "--scale", str(4 / 64_000),
                      "--checkpoint-every", "2", "--no-progress", "--cache-dir",
                      str(tmp_path / "cache"))
    _one_line(result, 2, "cannot write ", ".pth: File too large")


def test_an_os_error_no_command_named_is_still_one_line(monkeypatch, capsys):
    import errno

    import depthscape.cli.eval as eval_command
    from depthscape.cli import main

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/some/where/file.bin")

    monkeypatch.setattr(eval_command, "run", full)
    assert main(["eval", "x.pth"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["depthscape: error: /some/where/file.bin: No space left on device"]


# --- group 9 ------------------------------------------------------------------------------------

def test_a_missing_home_folder_is_never_created(tiny_data, tmp_path, monkeypatch):
    from depthscape.core.data import load_dataset

    home = tmp_path / "nonexistent" / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DEPTHSCAPE_DATA", raising=False)
    dataset = load_dataset(str(tiny_data))  # decodes, caches nowhere
    assert len(dataset.train.labels) == 72 and not home.parent.exists()
    with pytest.raises(UserError, match="home folder .* does not exist"):
        load_dataset("mnist")
    assert not home.parent.exists()


# --- group 4: a surface file is checked for agreeing with itself on every read ----------------

def _surface_2d(path: Path, done_points: int = 4) -> Path:
    """A partial 3x3 surface written the way the landscape writes one (two directions)."""
    import torch

    from depthscape.analysis.landscape.storage import new_state, write_surface

    directions = [{"conv.weight": torch.ones(2, 3), "fc.weight": torch.ones(4)} for _ in range(2)]
    state = new_state("test", np.linspace(-1, 1, 3), np.linspace(-1, 1, 3), directions,
                      {"dims": 2, "resolution": 3, "seed": 0}, {"workers": 1})
    state.done.ravel()[:done_points] = True
    state.loss.ravel()[:done_points] = 1.0
    state.acc.ravel()[:done_points] = 50.0
    return write_surface(path, state)


def _replace(f, name: str, values) -> None:
    del f[name]
    f[name] = values


def _no_ydirection(f):
    del f["ydirection"]


def _settings_list(f):
    f.attrs["settings"] = json.dumps([json.loads(f.attrs["settings"])])


def _identity_list(f):
    settings = json.loads(f.attrs["settings"])
    settings["identity"] = list(settings["identity"].items())
    f.attrs["settings"] = json.dumps(settings)


def _split_number(f):
    settings = json.loads(f.attrs["settings"])
    settings["split"] = 3
    f.attrs["settings"] = json.dumps(settings)


def _other_y_tensors(f):
    _replace(f, "ydirection/1", np.ones(5, dtype=np.float32))


def _names_short(f):
    f["xdirection"].attrs["names"] = json.dumps(["conv.weight"])


def _dims_1(f):
    settings = json.loads(f.attrs["settings"])
    settings["identity"]["dims"] = 1
    f.attrs["settings"] = json.dumps(settings)


DAMAGED_SURFACES = {
    "no ydirection": (_no_ydirection, "holds 1 direction(s) (xdirection) for a 2-D surface"),
    "done of another shape": (lambda f: _replace(f, "done", np.ones((2, 3), np.uint8)),
                              "done has shape (2, 3), the grid is (3, 3)"),
    "loss of another shape": (lambda f: _replace(f, "test_loss", np.ones(9)),
                              "test_loss has shape (9,), the grid is (3, 3)"),
    "settings a list": (_settings_list, "its settings are a list, not a mapping"),
    "identity a list": (_identity_list, "its settings' 'identity' is a list, not a mapping"),
    "split a number": (_split_number, "its settings' split is 3, not one of train, test"),
    "x of length 1": (lambda f: _replace(f, "xcoordinates", np.zeros(1)),
                      "xcoordinates has shape (1,), not a line of at least 2 points"),
    "y of length 1": (lambda f: _replace(f, "ycoordinates", np.zeros(1)),
                      "ycoordinates has shape (1,), not a line of at least 2 points"),
    "y a grid": (lambda f: _replace(f, "ycoordinates", np.zeros((3, 3))),
                 "ycoordinates has shape (3, 3)"),
    "resolution": (lambda f: (_replace(f, "xcoordinates", np.zeros(4)),
                              _replace(f, "test_loss", np.zeros((3, 4)))),
                   "its coordinates have 4 and 3 points, its settings say resolution=3"),
    "dims": (_dims_1, "its settings say dims=1 but it holds 2 coordinate axes"),
    "other y tensors": (_other_y_tensors, "its xdirection and ydirection hold different tensors"),
    "names short": (_names_short, "xdirection names 1 tensor(s) but holds 2"),
    "no x": (lambda f: f.__delitem__("xcoordinates"), "it has no 'xcoordinates' dataset"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_SURFACES))
def test_a_damaged_surface_is_one_line_naming_the_file_and_the_fault(case, tmp_path):
    import h5py

    from depthscape.analysis.landscape.storage import read_state

    path = _surface_2d(tmp_path / "surface.h5")
    read_state(path)  # the intact file reads
    damage, message = DAMAGED_SURFACES[case]
    with h5py.File(path, "a") as f:
        damage(f)
    for with_directions in (True, False):  # plot and api read without the directions
        with pytest.raises(UserError) as error:
            read_state(path, with_directions=with_directions)
        text = str(error.value)
        assert str(path) in text and message in text and "\n" not in text, text


def test_a_1d_surface_with_a_second_direction_is_refused(tmp_path):
    import h5py

    from depthscape.analysis.landscape.storage import read_state

    path = tmp_path / "line.h5"
    _write_surface(path)
    assert read_state(path).dims == 1
    with h5py.File(path, "a") as f:
        f.copy("xdirection", "ydirection")
    with pytest.raises(UserError, match="holds 2 direction.*for a 1-D surface"):
        read_state(path)


def test_a_partial_surface_without_its_ydirection_is_not_resumed(stopped_run, tmp_path):
    """The issue's case, through the command: no resume along x only, no "complete" surface."""
    import h5py

    from depthscape.analysis.landscape.storage import read_state

    checkpoint = _final_checkpoint(stopped_run, tmp_path / "final.pth")
    output = tmp_path / "surface.h5"
    argv = [sys.executable, "-m", "depthscape", "landscape", str(checkpoint), "--output",
            str(output), "--resolution", "3", "--dataset", str(stopped_run[0] / "data"),
            "--subset", "8", "--no-progress"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    with h5py.File(output, "a") as f:
        f["done"][4:] = 0  # a partial surface ...
        del f["ydirection"]  # ... that lost a direction
    before = output.read_bytes()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    _one_line(result, 2, str(output), "holds 1 direction(s) (xdirection) for a 2-D surface")
    assert output.read_bytes() == before
    plotted = subprocess.run([sys.executable, "-m", "depthscape", "plot", str(output), "--plots-dir",
                              str(tmp_path / "plots")], capture_output=True, text=True,
                             timeout=300, env=env)
    _one_line(plotted, 2, str(output), "for a 2-D surface")
    with pytest.raises(UserError):
        read_state(output)


# --- group 6: data-loading edge cases, each one line naming what is wrong --------------------

def _tar(folder: Path, archive: Path) -> Path:
    import tarfile

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def _png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (Pillow writes 16-bit grey but not 16-bit RGB)."""
    import struct
    import zlib

    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_a_test_class_the_train_split_lacks_is_refused_naming_it(form, tmp_path, cache_dir):
    from conftest import write_image_folder

    from depthscape.core.data import load_image_folder

    data = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=2)
    (tmp_path / "data" / "test" / "zebra").mkdir()
    (data / "test" / "cat" / "0000.png").rename(data / "test" / "zebra" / "0000.png")
    source = data if form == "folder" else _tar(data, tmp_path / "data.tar.gz")
    with pytest.raises(UserError, match="the test/ split of .* has class 'zebra' that train/ has "
                                        "no images of") as error:
        load_image_folder(source, cache_dir)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_an_empty_class_folder_is_left_out_with_a_notice(form, tmp_path, cache_dir, capsys):
    from conftest import write_image_folder

    from depthscape.core.data import load_image_folder

    data = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=2)
    (data / "train" / "bird").mkdir()
    (data / "test" / "bird").mkdir()
    source = data if form == "folder" else _tar(data, tmp_path / "data.tar.gz")
    dataset = load_image_folder(source, cache_dir)
    assert dataset.classes == ["cat", "dog", "ship"] and dataset.num_classes == 3
    err = capsys.readouterr().err
    assert "notice" in err and "'bird'" in err and "training on 3 classes" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_a_single_class_dataset_is_refused(form, tmp_path, cache_dir):
    from conftest import write_image_folder

    from depthscape.core.data import load_image_folder

    data = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=2,
                              classes=("cat",))
    source = data if form == "folder" else _tar(data, tmp_path / "data.tar.gz")
    with pytest.raises(UserError, match=r"has 1 class with training images \('cat'\); a "
                                        "classifier needs at least 2"):
        load_image_folder(source, cache_dir)


def test_16_bit_pngs_are_scaled_to_8_bits_not_clipped(tmp_path, cache_dir):
    from PIL import Image

    from depthscape.core.data import load_image_folder

    grey = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024 + 7  # 7 .. 64519
    colour = np.stack([grey, 65535 - grey, np.full_like(grey, 30000)], axis=-1)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "grey" / split / name).mkdir(parents=True)
            Image.fromarray(grey).save(tmp_path / "grey" / split / name / "0.png")
            (tmp_path / "colour" / split / name).mkdir(parents=True)
            _png16(tmp_path / "colour" / split / name / "0.png", colour)
    assert Image.open(tmp_path / "grey" / "train" / "a" / "0.png").mode.startswith("I")
    images = load_image_folder(tmp_path / "grey", cache_dir).train.images
    assert images.shape == (2, 1, 8, 8)
    assert images[0, 0].numpy().tolist() == (grey >> 8).astype(np.uint8).tolist()
    assert (images == 255).float().mean() < 0.05  # was 99 % white through convert("RGB")
    images = load_image_folder(tmp_path / "colour", cache_dir).train.images
    assert images[0].numpy().tolist() == (colour >> 8).astype(np.uint8).transpose(2, 0, 1).tolist()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the CLI holds it back
def test_a_huge_image_is_refused_from_its_header_before_decoding(tmp_path, cache_dir, monkeypatch):
    from conftest import write_image_folder
    from PIL import Image, ImageFile

    from depthscape.core import data as data_module

    data = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=2)
    Image.new("L", (10_000, 10_000)).save(data / "train" / "dog" / "huge.png")
    loads = []  # the sizes of the images whose pixels were decoded
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (loads.append(self.size),
                                                                   real_load(self))[1])
    with pytest.raises(UserError, match=r"huge.png is 10000x10000 pixels, larger than the 4096"):
        data_module.load_image_folder(data, cache_dir)
    assert (10_000, 10_000) not in loads and (32, 32) in loads


def test_a_shape_error_names_the_file_with_the_odd_shape(tmp_path, cache_dir):
    from conftest import write_image_folder
    from PIL import Image

    from depthscape.core.data import load_image_folder

    data = write_image_folder(tmp_path / "data", train_per_class=3, test_per_class=2)
    Image.new("RGB", (40, 40)).save(data / "train" / "dog" / "0001.png")
    for source in (data, _tar(data, tmp_path / "data.tar.gz")):
        with pytest.raises(UserError) as error:
            load_image_folder(source, cache_dir)
        text = str(error.value)
        assert "train/dog/0001.png is 40x40 with 3 channels, 8 other(s) are 32x32" in text, text


def test_a_data_edge_case_is_one_line_from_the_command(tmp_path):
    from conftest import write_image_folder

    data = write_image_folder(tmp_path / "data", train_per_class=2, test_per_class=2)
    (data / "test" / "zebra").mkdir()
    (data / "test" / "cat" / "0000.png").rename(data / "test" / "zebra" / "0000.png")
    result = subprocess.run(
        [sys.executable, "-m", "depthscape", "train", "resnet", "8", "--dataset", str(data),
         "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    _one_line(result, 2, "has class 'zebra' that train/ has no images of")


# --- group 7, second bullet: the data's content is the cache's key and the run's identity ------

def test_an_image_overwritten_in_place_is_decoded_again(tiny_data, tmp_path):
    from PIL import Image

    from depthscape.core.data import load_image_folder

    cache = tmp_path / "cache"
    first = load_image_folder(tiny_data, cache)
    top = tiny_data.stat()
    image = tiny_data / "train" / "cat" / "0000.png"
    Image.new("RGB", (32, 32), (7, 8, 9)).save(image)  # same name, other pixels
    os.utime(tiny_data, ns=(top.st_atime_ns, top.st_mtime_ns))  # the top folder looks the same
    second = load_image_folder(tiny_data, cache)
    assert second.train.images[0, :, 0, 0].tolist() == [7, 8, 9]
    assert second.content_sha256() != first.content_sha256()
    assert load_image_folder(tiny_data, cache).content_sha256() == second.content_sha256()
    assert len(list(cache.glob("imagefolder-*.npz"))) == 2


def test_a_resume_whose_data_changed_is_refused(stopped_run, tmp_path):
    from PIL import Image

    from depthscape.training.loop import train

    config, paths = _copy_run(stopped_run, tmp_path / "run")
    image = stopped_run[0] / "data" / "train" / "cat" / "0000.png"
    original = image.read_bytes()
    try:
        Image.new("RGB", (32, 32), (7, 8, 9)).save(image)
        with pytest.raises(UserError, match="dataset content: its images or labels changed"):
            train(config(tmp_path / "run", resume=True))
    finally:
        image.write_bytes(original)
    assert paths.resume.exists() and not paths.final.exists()
    assert train(config(tmp_path / "run", resume=True)).finished  # the same data again: resumes


def test_a_checkpoint_from_before_the_content_hash_still_resumes(stopped_run, tmp_path):
    import torch

    from depthscape.training.loop import train

    config, paths = _copy_run(stopped_run, tmp_path / "run")
    data = torch.load(paths.resume, weights_only=True)
    assert len(data["config"]["dataset"].pop("content_sha256")) == 64
    torch.save(data, paths.resume)
    assert train(config(tmp_path / "run", resume=True)).finished
