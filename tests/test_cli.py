"""The command line: the spec's entry points work, and every user error is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from depthscape.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=environment, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_main_py_trains_cnn_and_writes_spec_files(tiny_data, cache_dir, tmp_path):
    result = run([str(REPO / "main.py"), "cnn", "--dataset", str(tiny_data), "--scale", "0.02",
                  "--out", str(tmp_path), "--no-progress"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "logs" / f"cnn_{tiny_data.name}_log.csv").exists()
    assert (tmp_path / "models" / f"cnn_{tiny_data.name}.pth").exists()
    assert "test acc" in result.stdout


@pytest.mark.parametrize("argv,fragment", [
    (["resnet", "21"], "6n+2"),
    (["plainnet", "7"], "6n+2"),
    (["vgg", "16"], "unknown model"),
    (["resnet"], "needs a depth"),
])
def test_bad_model_or_depth(argv, fragment, tmp_path):
    assert_one_line_error(run([str(REPO / "main.py"), *argv], cwd=tmp_path), fragment)


def test_python_dash_m_and_console_script_agree(tmp_path):
    result = run(["-m", "depthscape", "train", "resnet", "22"], cwd=tmp_path)
    assert_one_line_error(result, "depth 22")


def test_wrong_architecture_names_first_mismatching_tensor(trained_resnet8, tmp_path):
    bare = tmp_path / "bare_resnet8.pth"  # no recorded name: only the tensors can disagree
    torch.save(torch.load(trained_resnet8, weights_only=True)["state_dict"], bare)
    result = run(["-m", "depthscape", "eval", str(bare), "--model", "resnet20"], cwd=tmp_path)
    assert_one_line_error(result, "does not match", "layer1.1.conv1.weight")


@pytest.mark.parametrize("command", [
    ["eval", "{ckpt}", "--model", "plainnet8"],
    ["eval", "{ckpt}", "--model", "resnet20"],
    ["landscape", "{ckpt}", "--model", "plain8", "--resolution", "2", "--no-plots"],
])
def test_a_model_name_that_differs_from_the_checkpoints_is_refused(command, trained_resnet8,
                                                                   tmp_path):
    # ResNet-8 and PlainNet-8 have identical tensor shapes: only the recorded name tells
    given = command[command.index("--model") + 1]
    argv = [a.format(ckpt=trained_resnet8) for a in command]
    result = run(["-m", "depthscape", *argv], cwd=tmp_path)
    assert_one_line_error(result, "holds a resnet8", f"not a {given.replace('net', '', 1)}"
                          if given.startswith("plainnet") else f"not a {given}")
    assert not (tmp_path / "landscapes").exists() and not list(tmp_path.rglob("*.h5"))


def test_the_checkpoints_own_model_name_is_accepted_in_any_spelling(trained_resnet8, tmp_path):
    result = run(["-m", "depthscape", "eval", str(trained_resnet8), "--model", "ResNet-8"],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test loss" in result.stdout


def test_cnn_weights_for_a_resnet(trained_resnet8, tmp_path):
    state = {"state_dict": __import__("depthscape.core.models", fromlist=["get_model"])
             .get_model("cnn").state_dict()}
    path = tmp_path / "cnn_state.pth"
    torch.save(state["state_dict"], path)
    result = run(["-m", "depthscape", "eval", str(path), "--model", "plain8"], cwd=tmp_path)
    assert_one_line_error(result, "does not match", "conv1.weight")


def test_eval_of_a_good_checkpoint(trained_resnet8, tmp_path):
    result = run(["-m", "depthscape", "eval", str(trained_resnet8)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test loss" in result.stdout and "(24 images)" in result.stdout


@pytest.mark.parametrize("content,fragment", [
    (b"this is not a checkpoint at all" * 10, "not a readable checkpoint"),
    (None, "not a checkpoint"),  # a valid torch file holding a list
])
def test_corrupt_or_foreign_file(content, fragment, tmp_path):
    path = tmp_path / "file.pth"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    assert_one_line_error(run(["-m", "depthscape", "eval", str(path), "--model", "resnet20"],
                              cwd=tmp_path), fragment)


def test_truncated_checkpoint(trained_resnet8, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(trained_resnet8.read_bytes()[:5000])
    assert_one_line_error(run(["-m", "depthscape", "eval", str(path)], cwd=tmp_path),
                          "not a readable checkpoint")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run(["-m", "depthscape", "eval", str(tmp_path / "nope.pth")],
                              cwd=tmp_path), "not found")


def test_unwritable_output_dir(tiny_data, cache_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run([str(REPO / "main.py"), "resnet", "8", "--dataset", str(tiny_data),
                  "--out", str(blocker / "out")], cwd=tmp_path)
    assert_one_line_error(result, "cannot write to output directory")
    assert blocker.read_text() == "not a directory"


def test_missing_data_and_no_network(cache_dir, monkeypatch, capsys, tmp_path):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    code = cli_main(["train", "resnet", "20", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1
    assert "could not be downloaded" in err and "--data-dir" in err


def test_interrupted_run_resumes_from_the_cli(tiny_data, cache_dir, tmp_path):
    args = ["train", "resnet8", "--dataset", str(tiny_data), "--out", str(tmp_path),
            "--scale", str(6 / 64_000), "--no-progress"]
    assert cli_main([*args, "--stop-after", "3"]) == 0
    assert cli_main(args) == 2  # neither --resume nor --overwrite: refuses, keeps the run
    assert cli_main([*args, "--resume"]) == 0
    assert list((tmp_path / "models").glob("resnet-8_*.pth"))
