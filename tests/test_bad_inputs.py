"""Every command's bad inputs: one line ``depthscape: error: ...`` on stderr, a non-zero exit.

One table (command, arguments, exit code, fragment of the line); each case is a process
of its own, forked four at a time from one that has imported torch once
(``tests/forkrun.py``; python with torch takes seconds to start), and each test reads its
own case's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder

#: Placeholders in the table's argv, filled in by the ``world`` fixture.
#:   {data}: a good tiny ImageFolder   {ckpt}: a trained ResNet-8 checkpoint
#:   {blocked}: a path below a regular file (no folder can be made there)
#:   {missing}: a path that does not exist   {corrupt}: ImageFolder with one damaged image
#:   {truncated}: a .tar.gz cut in half     {fake}: a text file named .tar.gz
#:   {evil}: a checkpoint holding a pickled function call   {junk}: bytes, not a checkpoint
#:   {nan}: the trained checkpoint with one NaN weight
#:   {logs_bad_cell} / {logs_bad_count} / {logs_bad_order}: run folders with a damaged log
CASES = [
    # --- train ------------------------------------------------------------------------------
    ("train", ["resnet", "abc"], 2, "depth 'abc' of resnet is not a number"),
    ("train", ["resnet", "-4"], 2, "got -4"),
    ("train", ["resnet", "21"], 2, "6n+2"),
    ("train", ["resnet", "8", "--resume", "--overwrite"], 2,
     "argument --overwrite: not allowed with argument --resume"),
    ("train", ["vgg", "16"], 2, "unknown model"),
    ("train", ["resnet", "60002", "--out", "{missing}"], 2, "needs about"),
    ("train", ["resnet", "8", "--scale", "inf"], 2, "argument --scale: must be a finite number"),
    ("train", ["resnet", "8", "--scale", "nan"], 2, "argument --scale: must be a finite number"),
    ("train", ["resnet", "8", "--scale", "1e999"], 2, "argument --scale: must be a finite number"),
    ("train", ["resnet", "8", "--scale", "0"], 2, "argument --scale: must be in (0"),
    ("train", ["resnet", "8", "--seed", "-1"], 2, "argument --seed: must be between 0 and"),
    ("train", ["resnet", "8", "--seed", "99999999999999999999999"], 2, "argument --seed: must be between"),
    ("train", ["resnet", "8", "--train-subset", "0"], 2, "argument --train-subset: must be between 1"),
    ("train", ["resnet", "8", "--checkpoint-every", "1e3"], 2, "must be a whole number, got '1e3'"),
    ("train", ["resnet", "8", "--log-every", "nan"], 2, "argument --log-every: must be a whole number"),
    ("train", ["resnet", "8", "--dataset", "{data}", "--out", "{blocked}"], 2,
     "cannot write to output directory"),
    ("train", ["resnet", "8", "--data-dir", "{missing}", "--out", "{out}"], 2,
     "data directory {missing} does not exist"),
    ("train", ["resnet", "8", "--dataset", "{corrupt}", "--out", "{out}"], 2,
     "cannot decode the image {corrupt}/train/dog/0003.png"),
    ("train", ["resnet", "8", "--dataset", "{truncated}", "--out", "{out}"], 2,
     "is damaged or truncated: reading it failed after member"),
    ("train", ["resnet", "8", "--dataset", "{fake}", "--out", "{out}"], 2,
     "cannot read {fake} as a tar archive"),
    ("train", ["resnet", "8", "--dataset", "{data}", "--out", "{logs_bad_cell}", "--resume",
               "--log-every", "1", "--scale", "0.0000625", "--eval-every", "100"], 2,
     "train_loss is 'abc', not a number"),
    ("train", ["resnet", "8", "--dataset", "{data}", "--out", "{logs_bad_count}", "--resume",
               "--log-every", "1", "--scale", "0.0000625", "--eval-every", "100"], 2,
     "cells where the header has 10"),
    ("train", ["resnet", "8", "--dataset", "{data}", "--out", "{logs_bad_order}", "--resume",
               "--log-every", "1", "--scale", "0.0000625", "--eval-every", "100"], 2,
     "iteration '1' does not follow 2"),
    # --- eval -------------------------------------------------------------------------------
    ("eval", ["{missing}"], 2, "checkpoint not found"),
    ("eval", ["{ckpt}", "--batch-size", "0"], 2, "argument --batch-size: must be between 1"),
    ("eval", ["{ckpt}", "--batch-size", "inf"], 2, "argument --batch-size: must be a whole number"),
    ("eval", ["{ckpt}", "--subset", "-5"], 2, "argument --subset: must be between 1"),
    ("eval", ["{junk}"], 2, "is not a readable checkpoint"),
    ("eval", ["{evil}"], 2, "not loaded, for safety (weights_only=True): Trying to load unsupported GLOBAL"),
    ("eval", ["{ckpt}", "--split", "val"], 2, "argument --split: invalid choice"),
    ("eval", ["{nan}"], 2, "holds non-finite weights: tensor 'conv1.weight' has 1 NaN"),
    # --- curves -----------------------------------------------------------------------------
    ("curves", ["--ema", "1"], 2, "argument --ema: must be in [0, 1)"),
    ("curves", ["--ema", "nan"], 2, "argument --ema: must be a finite number"),
    ("curves", ["--seed", "abc"], 2, "argument --seed: must be a whole number"),
    ("curves", ["--run-dir", "{logs_bad_cell}", "--out", "{blocked}"], 2,
     "cannot write to output directory"),
    ("curves", ["resnet8", "--run-dir", "{logs_bad_cell}", "--out", "{out}"], 2,
     "is damaged (row on line 3: train_loss is 'abc'"),
    ("curves", ["--run-dir", "{missing}"], 2, "no training logs found"),
    # --- landscape --------------------------------------------------------------------------
    ("landscape", ["{ckpt}", "--curvature", "--curvature-iters", "1"], 2,
     "argument --curvature-iters: must be between 2"),
    ("landscape", ["{ckpt}", "--curvature", "--curvature-parallel", "ranks"], 2,
     "argument --curvature-parallel: invalid choice: 'ranks'"),
    ("landscape", ["{ckpt}", "--curvature", "--dims", "1", "--no-plots"], 2, "--curvature needs a 2-D surface"),
    # --- trajectory -------------------------------------------------------------------------
    ("trajectory", ["{ckpt}", "--resolution", "1"], 2, "argument --resolution: must be between 2"),
    ("trajectory", ["{ckpt}", "--margin", "-0.5"], 2, "argument --margin: must be in [0"),
    ("trajectory", ["{ckpt}", "--margin", "nan"], 2, "argument --margin: must be a finite number"),
    ("trajectory", ["{ckpt}", "--no-plots"], 2, "has no weight snapshots"),
    ("trajectory", ["{ckpt}", "--plots-dir", "{blocked}"], 2, "cannot write to output directory"),
    ("trajectory", ["{missing}"], 2, "not found"),
    ("trajectory", ["resnet", "abc"], 2, "depth 'abc' of resnet is not a number"),
    ("landscape", ["{ckpt}", "--resolution", "1"], 2, "argument --resolution: must be between 2"),
    ("landscape", ["{ckpt}", "--resolution", "100000", "--no-plots"], 2,
     "a grid of 100000^2 = 10000000000 points needs about"),
    ("landscape", ["{ckpt}", "--xrange", "1", "nan"], 2, "argument --xrange: must be a finite number"),
    ("landscape", ["{ckpt}", "--xrange", "1", "-1"], 2, "xrange must be two finite numbers MIN < MAX"),
    ("landscape", ["{ckpt}", "--workers", "0"], 2, "argument --workers: must be between 1"),
    ("landscape", ["{ckpt}", "--batch-size", "-1"], 2, "argument --batch-size: must be between 1"),
    ("landscape", ["{ckpt}", "--seed", "1.5"], 2, "argument --seed: must be a whole number"),
    ("landscape", ["{ckpt}", "--output", "{blocked}/s.h5"], 2, "cannot write to output directory"),
    ("landscape", ["{ckpt}", "--plots-dir", "{blocked}"], 2, "cannot write to output directory"),
    ("landscape", ["resnet", "abc"], 2, "depth 'abc' of resnet is not a number"),
    ("landscape", ["{missing}"], 2, "not found"),
    # --- issue 19: non-finite weights, names too long, options that were silently ignored --
    ("landscape", ["{nan}", "--no-plots"], 2, "holds non-finite weights: tensor 'conv1.weight'"),
    ("landscape", ["{ckpt}", "--output", "{out}/" + "s" * 240 + ".h5"], 2, "File name too long"),
    ("landscape", ["{ckpt}", "--output", "{out}/" + "s" * 215 + ".h5"], 2,
     "less 27 for depthscape's temporary file"),  # the surface fits, its plot names do not
    ("landscape", ["{ckpt}", "--dims", "1", "--yrange", "0", "1", "--no-plots"], 2,
     "--yrange applies to a 2-D surface only: drop it, or drop --dims 1"),
    ("landscape", ["{ckpt}", "--target", "{ckpt}", "--dims", "2", "--no-plots"], 2,
     "--target draws a 1-D line to that checkpoint: drop --dims 2"),
    ("landscape", ["{ckpt}", "--target", "{ckpt}", "--no-plots", "--out", "{cwd}/same"], 2,
     "the target's weights equal the checkpoint's: the line between them is a single point"),
    ("landscape", ["{ckpt}", "--zmin", "5", "--zmax", "1"], 2, "--zmin 5 must be below --zmax 1"),
    ("landscape", ["{ckpt}", "--dims", "1", "--kinds", "contour"], 2,
     "plot kind 'contour' does not fit a 1-D surface"),
    ("plot", ["{missing}", "--zmin", "5", "--zmax", "5"], 2, "--zmin 5 must be below --zmax 5"),
    # --- plot -------------------------------------------------------------------------------
    ("plot", ["{missing}", "--levels", "1"], 2, "argument --levels: must be between 2"),
    ("plot", ["{missing}", "--smooth", "-1"], 2, "argument --smooth: must be in [0"),
    ("plot", ["{missing}", "--zmax", "inf"], 2, "argument --zmax: must be a finite number"),
    ("plot", ["{missing}", "--plots-dir", "{blocked}"], 2, "cannot write to output directory"),
    ("plot", ["{missing}", "--plots-dir", "{out}"], 2, "surface file not found"),
    # --- tables -----------------------------------------------------------------------------
    ("tables", ["--batch-size", "0"], 2, "argument --batch-size: must be between 1"),
    ("tables", ["--train-limit", "nan"], 2, "argument --train-limit: must be a whole number"),
    ("tables", ["--run-dir", "{out}", "--out", "{blocked}"], 2, "cannot write to output directory"),
    ("tables", ["--test-limit", "-1"], 2, "argument --test-limit: must be between 1"),
    # --- sharpness --------------------------------------------------------------------------
    ("sharpness", ["--power-tol", "0"], 2, "argument --power-tol: must be in (0"),
    ("sharpness", ["--trace-tol", "inf"], 2, "argument --trace-tol: must be a finite number"),
    ("sharpness", ["--trace-samples", "0"], 2, "argument --trace-samples: must be between 1"),
    ("sharpness", ["--seed", "-1"], 2, "argument --seed: must be between 0"),
    ("sharpness", ["--subset", "0"], 2, "argument --subset: must be between 1"),
    ("sharpness", ["--run-dir", "{out}", "--out", "{blocked}"], 2, "cannot write to output directory"),
    ("sharpness", ["--draws", "0"], 2, "argument --draws: must be between 1"),
    ("sharpness", ["--density-width", "0"], 2, "argument --density-width: must be in [0.001"),
    # --- flatness ---------------------------------------------------------------------------
    ("flatness", ["--directions", "1"], 2, "argument --directions: must be between 2"),
    ("flatness", ["--radius", "2"], 2, "--radius 2 lies outside --span 1"),
    ("flatness", ["--run-dir", "{out}", "--out", "{blocked}"], 2, "cannot write to output directory"),
    # --- study ------------------------------------------------------------------------------
    ("study", ["--seeds", "0"], 2, "argument --seeds: must be between 1 and 1000"),
    ("study", ["--seeds", "1e9"], 2, "argument --seeds: must be a whole number"),
    ("study", ["--budget", "huge"], 2, "argument --budget: invalid choice"),
    ("study", ["--out", "{blocked}"], 2, "cannot write to output directory"),
    ("study", ["--models", "vgg16", "--out", "{out}/study"], 2, "unknown model 'vgg16'"),
    # --- no command -------------------------------------------------------------------------
    ("", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
]


def _damaged_run(template: Path, target: Path, edit) -> Path:
    """A copy of the stopped run ``template`` whose log ``edit`` (lines -> lines) damaged."""
    import shutil

    shutil.copytree(template, target)
    log = next((target / "logs").glob("*_log.csv"))
    log.write_text("\n".join(edit(log.read_text().splitlines())) + "\n")
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """The files the table's placeholders name."""
    from depthscape.training.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("bad_inputs")
    cache = root / "cache"
    os.environ.setdefault("DEPTHSCAPE_DATA", str(cache))  # the in-process training below
    data = write_image_folder(root / "data")
    corrupt = write_image_folder(root / "corrupt")
    (corrupt / "train" / "dog" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    archive = root / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data, arcname="data")
    truncated = root / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    fake = root / "fake.tar.gz"
    fake.write_text("this is not an archive\n" * 5)
    (root / "cwd").mkdir()  # where commands with default output folders run
    blocker = root / "a-file"
    blocker.write_text("not a folder")
    junk = root / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 50)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = root / "evil.pth"
    torch.save({"state_dict": Evil()}, evil)

    trained = train(TrainConfig(model="resnet8", dataset=str(data), out_dir=str(root / "trained"),
                                scale=2 / 64_000, progress=False, cache_dir=str(cache)))
    stopped = root / "stopped"
    train(TrainConfig(model="resnet8", dataset=str(data), out_dir=str(stopped), scale=4 / 64_000,
                      log_every=1, eval_every=100, stop_after=2, progress=False,
                      cache_dir=str(cache)))

    nan = root / "nan.pth"
    poisoned = torch.load(trained.paths.final, weights_only=True)
    poisoned["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(poisoned, nan)

    def bad_cell(lines):
        cells = lines[2].split(",")
        cells[3] = "abc"
        return [*lines[:2], ",".join(cells), *lines[3:]]

    return {
        "data": str(data), "ckpt": str(trained.paths.final), "blocked": str(blocker / "sub"),
        "missing": str(root / "missing" / "nothing"), "corrupt": str(corrupt),
        "truncated": str(truncated), "fake": str(fake), "evil": str(evil), "junk": str(junk),
        "nan": str(nan),
        "out": str(root / "out"), "cache": str(cache), "cwd": str(root / "cwd"),
        "logs_bad_cell": str(_damaged_run(stopped, root / "bad_cell", bad_cell)),
        "logs_bad_count": str(_damaged_run(stopped, root / "bad_count",
                                           lambda lines: [*lines[:2], lines[2] + ",1,2"])),
        "logs_bad_order": str(_damaged_run(stopped, root / "bad_order",
                                           lambda lines: [lines[0], lines[2], lines[1]])),
    }


def _fill(text: str, world: dict[str, str]) -> str:
    return text.format(**world)


FORKRUN = Path(__file__).with_name("forkrun.py")
_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1] / "src"),
                                                   os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def results(world) -> dict[int, subprocess.CompletedProcess]:
    """Every case run once, each as ``python -m depthscape COMMAND ARGS`` in its own process.

    The processes are forked from one that has imported torch and the CLI already
    (``tests/forkrun.py``), four at a time: each is still a process of its own (its exit
    code, its file descriptors 1 and 2, its working directory), without the seconds of
    start-up a hundred fresh interpreters would spend importing torch.
    """
    env = {**_ENV, "DEPTHSCAPE_DATA": world["cache"]}
    logs = {key: (Path(world[key]) / "logs").glob("*_log.csv")
            for key in world if key.startswith("logs_")}
    before = {p: p.read_bytes() for paths in logs.values() for p in paths}
    commands = [([command] if command else []) + [_fill(a, world) for a in argv]
                for command, argv, _code, _fragment in CASES]
    request = json.dumps({"cwd": world["cwd"], "jobs": 4, "commands": commands})
    server = subprocess.run([sys.executable, str(FORKRUN)],
                            input=request, capture_output=True, text=True, env=env,
                            timeout=1200)
    assert server.returncode == 0, server.stderr
    done = {index: subprocess.CompletedProcess(commands[index], code, out, err)
            for index, (code, out, err) in enumerate(json.loads(server.stdout))}
    # refusing a damaged log must leave it as it was (no row dropped or repaired)
    for path, content in before.items():
        assert path.read_bytes() == content, path
    return done


def test_a_forked_case_is_the_real_command():
    """The fork server gives what ``python -m depthscape`` gives: exit code, both streams."""
    commands = [["eval", "/nonexistent/x.pth"], ["--version"], ["train", "resnet", "21"]]
    env = _ENV
    server = subprocess.run([sys.executable, str(FORKRUN)],
                            input=json.dumps({"cwd": os.getcwd(), "jobs": 2,
                                              "commands": commands}),
                            capture_output=True, text=True, env=env, timeout=300)
    assert server.returncode == 0, server.stderr
    for args, (code, out, err) in zip(commands, json.loads(server.stdout)):
        real = subprocess.run([sys.executable, "-m", "depthscape", *args], capture_output=True,
                              text=True, env=env, timeout=300)
        assert (code, out, err) == (real.returncode, real.stdout, real.stderr), args


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{c[0] or 'main'}-{'_'.join(c[1])[:40]}" for c in CASES])
def test_bad_input_is_one_line(index, results, world):
    command, argv, code, fragment = CASES[index]
    result = results[index]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("depthscape: error: "), lines[0]
    assert _fill(fragment, world) in lines[0], lines[0]


def test_missing_data_dir_is_not_created(results, world):
    """A --data-dir that does not exist is reported, never created."""
    assert not Path(world["missing"]).exists()
    assert not Path(world["missing"]).parent.exists()


def test_every_command_has_bad_input_cases():
    from depthscape.cli import _command_modules

    covered = {c[0] for c in CASES}
    assert {m.NAME for m in _command_modules()} <= covered
