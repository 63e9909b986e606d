"""Issue 34: a symbolic link planted at every name each command writes; no target changes.

For each command (and the Python API's writers): run it once into a clean folder and take
every file it created there (the command's own output, not a hand-kept list of names);
then, in a second fresh folder, plant at each of those names a link to a file of the user's
elsewhere and run the same command again. Each link must be replaced by a new file (never
written through) or refused in one line naming it. A refused link (an output already there
that is not the command's: an earlier run's checkpoint, a surface it cannot read) is
planted again dangling, at a name elsewhere that does not exist, and the command run again,
until it finishes, so every name is tried both ways where the first is refused. The files
the links point at must be byte for byte as they were, nothing may appear beside them, and
the command's inputs are left as they were (so the clean folder held all it wrote).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from _threads import torch_threads
from conftest import write_image_folder

from depthscape.cli import main

DATASET = "tiny"


def _files(folder: Path) -> list[Path]:
    """Every file (or link) below ``folder``, relative to it."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink())


def _digests(folder: Path) -> dict[Path, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in _files(folder)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny data, its decoded cache, one finished ResNet-8 run with weight snapshots and a
    loss surface of it: what the commands read."""
    root = tmp_path_factory.mktemp("sweep-inputs")
    data = write_image_folder(root / DATASET, train_per_class=8, test_per_class=4, size=16)
    runs = root / "runs"
    with torch_threads(1):
        assert main(["train", "resnet8", "--out", str(runs), "--dataset", str(data),
                     "--cache-dir", str(root / "cache"), "--scale", str(6 / 64_000),
                     "--snapshot-every", "2", "--log-every", "1", "--no-progress"]) == 0
        final = runs / "models" / "resnet-8_tiny.pth"
        surface = root / "surface.h5"
        assert main(["landscape", str(final), "--dataset", str(data), "--cache-dir",
                     str(root / "cache"), "--resolution", "3", "--subset", "8", "--output",
                     str(surface), "--no-plots", "--no-progress"]) == 0
    return {"root": root, "data": data, "runs": runs, "final": final, "surface": surface}


def _data(inputs) -> list[str]:
    return ["--dataset", str(inputs["data"]), "--cache-dir", str(inputs["root"] / "cache")]


def _train(inputs, out, *extra):
    return ["train", "resnet8", "--out", str(out), *_data(inputs), "--scale", str(4 / 64_000),
            "--snapshot-every", "2", "--log-every", "1", "--checkpoint-every", "2",
            "--no-progress", *extra]


def _landscape(inputs, out):
    return ["landscape", str(inputs["final"]), *_data(inputs), "--resolution", "3",
            "--subset", "8", "--output", str(out / "surface.h5"), "--plots-dir", str(out),
            "--kinds", "contour", "contourf", "heatmap", "surface3d", "html", "vtp",
            "--formats", "png", "pdf", "svg", "--curvature", "--curvature-resolution", "2",
            "--curvature-subset", "8", "--curvature-iters", "2", "--no-progress"]


def _trajectory(inputs, out):
    return ["trajectory", str(inputs["final"]), *_data(inputs), "--resolution", "3",
            "--subset", "8", "--output", str(out / "path.h5"), "--plots-dir", str(out),
            "--no-progress"]


def _sharpness(inputs, out):
    return ["sharpness", "--run-dir", str(inputs["runs"]), "--out", str(out), *_data(inputs),
            "--subset", "8", "--power-iters", "3", "--trace-samples", "2", "--top-k", "2",
            "--draws", "2", "--density", "--density-runs", "1", "--density-steps", "4",
            "--no-progress"]


def _flatness(inputs, out):
    return ["flatness", "--run-dir", str(inputs["runs"]), "--out", str(out), *_data(inputs),
            "--directions", "2", "--points", "3", "--radius", "0.5", "--subset", "8",
            "--no-progress"]


def _curves(inputs, out):
    return ["curves", "--run-dir", str(inputs["runs"]), "--out", str(out), "--dataset", DATASET,
            "--format", "png", "pdf", "svg"]


def _plot(inputs, out):
    return ["plot", str(inputs["surface"]), "--plots-dir", str(out), "--kinds", "contour",
            "contourf", "heatmap", "surface3d", "html", "vtp", "--formats", "png", "pdf", "svg"]


def _tables(inputs, out):
    return ["tables", "--run-dir", str(inputs["runs"]), "--out", str(out), *_data(inputs),
            "--no-progress"]


def _study(inputs, out):
    return ["study", "--budget", "smoke", "--models", "resnet8", "plain8", "--out", str(out),
            *_data(inputs), "--no-progress"]


def _api(inputs, out):
    """The Python API's writers: a run, a surface, a line and a trajectory with ``output``,
    a surface saved again under a name of the caller's; 0 once all are written."""
    import torch

    import depthscape as ds

    final = out / "models" / "resnet-8_tiny.pth"
    if final.is_symlink() or not final.exists():  # run again after a refusal: trained once
        ds.train("resnet8", dataset=str(inputs["data"]), cache_dir=str(inputs["root"] / "cache"),
                 out=out, scale=4 / 64_000, snapshot_every=2, log_every=1, progress=False)
    torch.manual_seed(0)  # the same models on every call: a rerun continues the same files
    model = torch.nn.Sequential(torch.nn.Linear(6, 3))
    other = torch.nn.Sequential(torch.nn.Linear(6, 3))
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator))
    surface = ds.loss_surface(model, data, resolution=3, output=out / "surface.h5",
                              progress=False)
    surface.save(out / "saved.h5")
    ds.interpolate(model, other, data, resolution=3, output=out / "line.h5", progress=False)
    steps = [{k: v + 0.1 * i for k, v in model.state_dict().items()} for i in range(3)]
    ds.trajectory([*steps, other.state_dict()], other, data, resolution=3,
                  output=out / "path.h5", progress=False)
    return 0


#: command -> (its arguments with the folder swept, suffixes its output must include: a
#: check that the clean run wrote what the case is meant to sweep)
CASES = {
    "train": (_train, {".csv", ".json", ".pth", ".h5"}),
    "train-stopped": (lambda i, o: _train(i, o, "--stop-after", "2"), {".csv", ".json", ".pth"}),
    "train-overwrite": (lambda i, o: _train(i, o, "--overwrite"), {".csv", ".json", ".pth"}),
    "landscape": (_landscape, {".h5", ".png", ".pdf", ".svg", ".html", ".vtp"}),
    "landscape-overwrite": (lambda i, o: _landscape(i, o) + ["--overwrite"], {".h5", ".png"}),
    "trajectory": (_trajectory, {".h5", ".png", ".pdf"}),
    "sharpness": (_sharpness, {".json", ".csv", ".md", ".png"}),
    "flatness": (_flatness, {".json", ".csv", ".md", ".png"}),
    "curves": (_curves, {".png", ".pdf", ".svg"}),
    "plot": (_plot, {".png", ".pdf", ".svg", ".html", ".vtp"}),
    "tables": (_tables, {".json", ".csv", ".md"}),
    "api": (_api, {".csv", ".json", ".pth", ".h5"}),
    "study": (_study, {".h5", ".html", ".md", ".png", ".pdf", ".pth", ".json", ".csv"}),
}


def _invoke(command, inputs, out, capsys) -> tuple[int, str]:
    """Run one case into ``out``: its exit code and what it wrote to stderr (the API's
    refusal, a UserError, as the CLI words it)."""
    from depthscape.core.errors import UserError

    with torch_threads(1):
        try:
            result = command(inputs, out)
            code = result if isinstance(result, int) else main(result)
        except UserError as error:
            print(f"depthscape: error: {error}", file=sys.stderr)
            code = 2
    return code, capsys.readouterr().err


def _refused_link(err: str, planted: set[Path]) -> Path:
    """The planted link the one-line refusal in ``err`` names (as a link, or as an output
    already there that is not the command's: an earlier run's checkpoint, a surface file
    that cannot be read)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("depthscape: error: "), err
    named = [link for link in planted if f" {link}:" in lines[0] or f" {link} " in lines[0]]
    assert len(named) == 1, lines[0]
    return named[0]


@pytest.mark.parametrize("case", [
    # the study's 8 calls (one refusal each of 7 names, as outputs already there): ~40 s
    pytest.param(case, marks=pytest.mark.slow) if case == "study" else case for case in CASES])
def test_links_at_every_name_a_command_writes_leave_their_targets_alone(
        case, inputs, tmp_path, capsys):
    command, suffixes = CASES[case]
    before = _digests(inputs["root"])
    clean = tmp_path / "clean"
    code, err = _invoke(command, inputs, clean, capsys)
    assert code == 0, err
    names = _files(clean)
    assert suffixes <= {name.suffix for name in names}, names
    assert _digests(inputs["root"]) == before  # every file it wrote is in the folder swept

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    planted = {}
    for index, name in enumerate(names):
        victim = elsewhere / f"victim-{index}{name.suffix}"
        victim.write_bytes(f"the user's own file {index}, not {name}\n".encode())
        link = linked / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(victim)
        planted[link] = victim
    victims = _digests(elsewhere)
    capsys.readouterr()

    # A link refused as an output already there is planted again dangling (to a name
    # elsewhere that does not exist), where the command takes the name as free and writes
    # it; refused again, it is taken away. Either way the command is run again.
    dangling, removed = {}, []
    for _ in range(2 * len(planted) + 1):
        code, err = _invoke(command, inputs, linked, capsys)
        assert _digests(elsewhere) == victims, f"{case}: a file elsewhere changed or appeared"
        if code == 0:
            break
        link = _refused_link(err, set(planted) - set(removed))
        assert link.is_symlink(), err  # refused, and left as it was for the user to see
        link.unlink()  # the test's own link
        if link in dangling:
            removed.append(link)
        else:
            dangling[link] = elsewhere / f"absent-{len(dangling)}{link.suffix}"
            link.symlink_to(dangling[link])
    assert code == 0, f"{case}: still refused after {removed}"
    for link in set(planted) - set(removed):
        assert link.is_file() and not link.is_symlink(), f"{case}: {link} is still a link"
    assert not any(target.exists() for target in dangling.values())
    assert _digests(inputs["root"]) == before
