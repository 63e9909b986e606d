"""Issue 34, items 2-5: the new inputs' tracebacks and wrong results, each now one line.

Plug-ins with NaN/Inf weights, buffers or outputs, an uncopyable module, a factory or a
forward pass that raises or calls ``sys.exit``; recipes that are not UTF-8, overflow or
ask for an impossible batch; ``--model-kwargs`` too large to read; sharpness sizes that
cannot fit; damaged recorded preprocessing; a FIFO or a device given as a file; a run
measured from another working folder; matplotlib's cache folder; a full disk during
``flatness``. Each case: one line ``depthscape: error: ...``, a non-zero exit, nothing
written (tiny data, seconds each).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _study_tools import write_fake_run

import depthscape as ds
from depthscape.cli import main
from depthscape.core.checkpoint import load_checkpoint, save_checkpoint
from depthscape.core.errors import UserError
from depthscape.core.plugins import parse_model_kwargs
from depthscape.core.recipe_file import read_recipe_file

FACTORIES = '''
import sys
import threading

import torch
from torch import nn


def small(num_classes=3, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def nan_weight():
    model = small()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


def minus_inf_bias():
    model = small()
    with torch.no_grad():
        model[5].bias[0] = float("-inf")
    return model


def nan_running_var():
    model = small()
    model[1].running_var[0] = float("nan")
    return model


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small()

    def forward(self, x):
        return self.net(x)


class NanOutput(Wrapped):
    def forward(self, x):
        return self.net(x) * float("nan")


class Locked(Wrapped):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


class Broken(Wrapped):
    def forward(self, x):
        raise ValueError("my forward is broken")


class Frozen(Wrapped):
    def __init__(self):
        super().__init__()
        for p in self.parameters():
            p.requires_grad_(False)


class BadLoad(Wrapped):
    def load_state_dict(self, state, strict=True):
        raise KeyError("my loader refuses")


def nan_output():
    return NanOutput()


def locked():
    return Locked()


def broken():
    return Broken()


def frozen():
    return Frozen()


def bad_load():
    return BadLoad()


def raises():
    raise RuntimeError("no GPU here")


def exits():
    sys.exit(3)
'''


@pytest.fixture
def zoo(tmp_path) -> str:
    (tmp_path / "zoo3.py").write_text(FACTORIES)
    return str(tmp_path / "zoo3.py")


def cli(capsys, *argv) -> tuple[int, list[str]]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    _, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.strip()]


def one_line(capsys, fragment: str, *argv, code: int = 2) -> str:
    got, err = cli(capsys, *argv)
    assert (got, len(err)) == (code, 1), err
    assert err[0].startswith("depthscape: error: ") and fragment in err[0], err[0]
    return err[0]


def plugin_argv(command: str, spec: str, data, out: Path, *extra) -> list:
    """``command --model-from spec`` on ``data`` with tiny settings, writing under ``out``."""
    common = ["--model-from", spec, "--dataset", data, *extra]
    if command == "eval":
        return ["eval", *common]
    if command == "landscape":
        return ["landscape", *common, "--out", out, "--resolution", 3, "--dims", 1,
                "--no-plots", "--no-progress"]
    return ["sharpness", *common, "--out", out, "--subset", 8, "--power-iters", 3,
            "--trace-samples", 2, "--no-progress"]


def nothing_in(folder: Path) -> None:
    assert not folder.exists() or not any(folder.rglob("*")), sorted(folder.rglob("*"))


# ----------------------------------------------------------------- non-finite plug-ins


@pytest.mark.parametrize("command", ["eval", "landscape", "sharpness"])
@pytest.mark.parametrize("factory, fragment", [
    ("nan_weight", "holds non-finite weights: tensor '0.weight' has 1 NaN"),
    ("minus_inf_bias", "holds non-finite weights: tensor '5.bias' has 1 NaN"),
    ("nan_running_var", "tensor '1.running_var' has 1 NaN"),
    ("nan_output", "the model's output on"),
])
def test_a_non_finite_plugin_is_refused_by_every_command(zoo, tiny_data, cache_dir, tmp_path,
                                                         capsys, one_thread, command, factory,
                                                         fragment):
    out = tmp_path / "out"
    line = one_line(capsys, fragment, *plugin_argv(command, f"{zoo}:{factory}", tiny_data, out))
    if factory == "nan_output":
        assert "is not finite" in line
    nothing_in(out)


def test_train_refuses_weights_whose_buffers_hold_a_nan(zoo, tiny_data, cache_dir, tmp_path,
                                                        capsys, one_thread):
    sys.path.insert(0, str(Path(zoo).parent))
    try:
        import zoo3
    finally:
        sys.path.pop(0)
    weights = tmp_path / "w.pth"
    torch.save(zoo3.nan_running_var().state_dict(), weights)
    (tmp_path / "r.toml").write_text("lr = 0.05\nbatch_size = 16\niterations = 2\n")
    out = tmp_path / "out"
    one_line(capsys, f"--weights {weights} holds non-finite weights: tensor '1.running_var'",
             "train", "--model-from", f"{zoo}:small", "--weights", weights, "--recipe",
             tmp_path / "r.toml", "--dataset", tiny_data, "--out", out, "--no-progress")
    nothing_in(out)


def test_the_api_refuses_a_nan_weight_and_a_nan_tolerance():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    data = (torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(UserError, match="tol must be a finite number in"):
        ds.hessian_extremes(model, data, tol=math.nan)
    with pytest.raises(UserError, match="tol must be a finite number in"):
        ds.hessian_trace(model, data, tol=math.inf)
    with torch.no_grad():
        model[0].weight[1, 2] = math.nan
    with pytest.raises(UserError, match="the model holds non-finite weights: tensor '0.weight'"):
        ds.hessian_extremes(model, data, iters=3)
    with pytest.raises(UserError, match="non-finite weights"):
        ds.loss_surface(model, data, resolution=3)


# ----------------------------------------------------------- the user's code, named


@pytest.mark.parametrize("factory, fragment", [
    ("raises", "the factory raised RuntimeError: no GPU here"),
    ("exits", "the factory raised SystemExit (sys.exit(3)"),
    ("broken", "its forward pass raised ValueError: my forward is broken"),
    ("locked", "cannot be copied for the measurement (Locked holds something copy.deepcopy "
               "refuses: cannot pickle '_thread.lock' object)"),
])
def test_what_the_plugin_raised_is_named(zoo, tiny_data, cache_dir, tmp_path, capsys,
                                         one_thread, factory, fragment):
    out = tmp_path / "out"
    one_line(capsys, fragment, *plugin_argv("landscape", f"{zoo}:{factory}", tiny_data, out))
    nothing_in(out)


def test_weights_whose_loading_raises_are_named(zoo, tiny_data, cache_dir, tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save({"net.0.weight": torch.zeros(4, 3, 3, 3)}, weights)
    one_line(capsys, f"--weights {weights}: loading the weights raised KeyError: "
                     "'my loader refuses'",
             "eval", "--model-from", f"{zoo}:bad_load", "--weights", weights, "--dataset",
             tiny_data)


def test_sys_exit_in_a_plugin_module_is_one_line(tmp_path, tiny_data, cache_dir, capsys):
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\ndef f():\n    pass\n")
    one_line(capsys, f"{tmp_path / 'quits.py'} failed to load: SystemExit (sys.exit(0)",
             "eval", "--model-from", f"{tmp_path / 'quits.py'}:f", "--dataset", tiny_data)


def test_a_plugin_without_trainable_parameters_in_sharpness(zoo, tiny_data, cache_dir,
                                                            tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    one_line(capsys, "the model has no trainable parameters",
             *plugin_argv("sharpness", f"{zoo}:frozen", tiny_data, out))
    nothing_in(out)


# ------------------------------------------------------------------- oversized inputs


@pytest.mark.parametrize("text, fragment", [
    ('{"width": ' + "1" * 5000 + "}", "holds a number it cannot read: Exceeds the limit"),
    ('{"a": ' + "[" * 20_000 + "]" * 20_000 + "}", "nested too deeply"),
    ('{"a": "' + "x" * 200_000 + '"}', "more than the 100000"),
])
def test_model_kwargs_too_large_to_read(text, fragment):
    with pytest.raises(UserError, match=fragment) as caught:
        parse_model_kwargs(text)
    assert "set_int_max_str_digits" not in str(caught.value)


@pytest.mark.parametrize("text, fragment", [
    ("lr = 1e400\niterations = 5", "lr must be a finite number, got inf (it overflows"),
    ("lr = 0.1\nweight_decay = 1e400\niterations = 5", "weight_decay must be a finite number"),
    ("lr = 0.1\nbatch_size = 1000000000000\niterations = 5", "batch_size must be at most 1048576"),
])
def test_recipe_values_that_cannot_run(tmp_path, text, fragment):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        read_recipe_file(path)


def test_a_recipe_that_is_not_utf8(tmp_path):
    path = tmp_path / "r.toml"
    path.write_bytes(b'lr = 0.1\nname = "\xff\xfe"\niterations = 5\n')
    with pytest.raises(UserError, match=r"is not UTF-8 text \(byte 17\)"):
        read_recipe_file(path)


@pytest.mark.parametrize("extra, fragment", [
    (["--top-k", 10, "--power-iters", 5], "--top-k 10 needs at least as many Lanczos steps"),
    (["--top-k", 200, "--power-iters", 300], "--top-k 200 is more than the model's 135 trainable"),
    (["--power-iters", 1000], "a Lanczos basis of 1000 steps (--power-iters) x 135 parameters "
                              "x 4 bytes needs about"),
])
def test_sharpness_sizes_that_cannot_fit_are_refused_before_the_data(
        zoo, tmp_path, capsys, monkeypatch, extra, fragment):
    import depthscape.core.limits as limits

    monkeypatch.setattr(limits, "available_memory", lambda device=None: 100_000)
    out = tmp_path / "out"
    # the data does not exist: the refusal comes before it is looked for
    one_line(capsys, fragment, "sharpness", "--model-from", f"{zoo}:small", "--dataset",
             tmp_path / "no-data", "--out", out, *extra)
    nothing_in(out)


def test_a_density_width_below_the_grid_is_refused(capsys, tmp_path):
    one_line(capsys, "argument --density-width: must be in [0.001, 1], got 1e-300",
             "sharpness", "--density", "--density-width", "1e-300", "--run-dir", tmp_path)


# ------------------------------------------------------ recorded settings and files


def _edited_checkpoint(tmp_path: Path, preprocess) -> Path:
    final = write_fake_run(tmp_path / "runs", "resnet8").final
    data = load_checkpoint(final)
    for tag in ("format", "version"):
        data.pop(tag)
    if preprocess == "drop scale":
        data["config"]["preprocess"].pop("scale")
    else:
        data["config"]["preprocess"] = preprocess
    path = tmp_path / "edited.pth"
    save_checkpoint(path, data)
    return path


@pytest.mark.parametrize("preprocess, fragment", [
    ("abc", "(a str, not a table of scale and mean)"),
    ([255.0, 125.0], "(a list, not a table of scale and mean)"),
    ({"scale": math.nan, "mean": [0.0, 0.0, 0.0]}, "(scale nan, not a finite positive number)"),
    ({"scale": 255.0, "mean": [math.inf, 0.0, 0.0]}, "(mean [inf, 0.0, 0.0], not a list of"),
    ("drop scale", "(scale 'missing', not a finite positive number)"),
])
def test_a_damaged_recorded_preprocessing_is_one_line(tmp_path, tiny_data, cache_dir, capsys,
                                                      preprocess, fragment):
    path = _edited_checkpoint(tmp_path, preprocess)
    one_line(capsys, f"{path} records a preprocessing this version cannot use {fragment}",
             "eval", path, "--dataset", tiny_data)


def _alarm(seconds: int = 30):
    """A hang (reading a FIFO that no one writes) fails the test instead of the suite."""
    def hung(*_):
        raise AssertionError("hung reading a file that is not a regular file")
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("role", ["recipe", "weights", "checkpoint"])
def test_a_fifo_or_a_device_is_refused(zoo, tmp_path, tiny_data, capsys, special, role):
    if special == "fifo":
        special = tmp_path / "fifo"
        os.mkfifo(special)
    argv = {"recipe": ["train", "--model-from", f"{zoo}:small", "--recipe", special,
                       "--dataset", tiny_data, "--out", tmp_path / "out"],
            "weights": ["eval", "--model-from", f"{zoo}:small", "--weights", special,
                        "--dataset", tiny_data],
            "checkpoint": ["eval", special]}[role]
    what = {"recipe": "recipe", "weights": "--weights", "checkpoint": "checkpoint"}[role]
    _alarm()
    try:
        one_line(capsys, f"{what} {special} is not a regular file (a FIFO, a device or a "
                         "socket)", *argv)
    finally:
        signal.alarm(0)
    nothing_in(tmp_path / "out")


def test_a_run_is_measured_from_another_working_folder(tmp_path, tiny_data, cache_dir, capsys,
                                                       monkeypatch, one_thread):
    """The run records its dataset as typed, relative to where it was trained."""
    work = tmp_path / "work"
    shutil.copytree(tiny_data, work / "data")
    monkeypatch.chdir(work)
    final = write_fake_run(Path("runs"), "resnet8", dataset="data").final
    assert load_checkpoint(final)["config"]["train"]["dataset"] == "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, err = cli(capsys, "eval", work / final)
    assert (code, err) == (0, [])
    monkeypatch.chdir(tmp_path)  # also from a folder above the run's
    assert cli(capsys, "eval", Path("work") / final) == (0, [])


@pytest.mark.parametrize("preset", [None, "mine"])
def test_matplotlib_keeps_its_cache_in_depthscape_s_folder(tmp_path, preset):
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    env.update(HOME=str(tmp_path / "home"), DEPTHSCAPE_DATA=str(tmp_path / "cache"))
    if preset:
        env["MPLCONFIGDIR"] = str(tmp_path / preset)
    code = ("import os, depthscape\n"
            "assert os.environ.get('MPLCONFIGDIR') == %r  # a library import leaves it alone\n"
            "from depthscape.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "import matplotlib\n"
            "print(os.environ['MPLCONFIGDIR']); print(matplotlib.get_configdir())"
            ) % (str(tmp_path / preset) if preset else None,)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    want = str(tmp_path / preset) if preset else str(tmp_path / "cache" / "matplotlib")
    assert result.stdout.split()[-2:] == [want, want], result.stderr
    assert not (tmp_path / "home").exists()


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from depthscape.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_during_flatness_names_the_file(tmp_path, tiny_data):
    runs = tmp_path / "runs"
    write_fake_run(runs, "resnet8")
    out = tmp_path / "flat"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "MPLCONFIGDIR": str(tmp_path / "mpl"), "DEPTHSCAPE_DATA": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", LIMITED, "2000", "flatness", "--run-dir", runs, "--out", out,
         "--dataset", tiny_data, "--subset", "8", "--directions", "2", "--points", "3",
         "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("depthscape:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"depthscape: error: cannot write {out}/resnet8_") and \
        errors[0].endswith(": File too large"), errors[0]
