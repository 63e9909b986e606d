"""``ds.train`` and ``ds.trajectory``: the same runs and paths as the CLI's, bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from torch import nn

import depthscape as ds
from depthscape.cli import main
from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.csvlog import read_log
from depthscape.core.errors import UserError

#: ResNet-8 with the ResNet-20 recipe shrunk to 12 iterations, snapshots every 4.
SHORT = {"scale": 12 / 64_000, "log_every": 4, "eval_every": 6, "checkpoint_every": 5,
         "snapshot_every": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("apidata"), train_per_class=16,
                              test_per_class=6, size=16)


@pytest.fixture(scope="module")
def cli_run(data, tmp_path_factory) -> Path:
    """ResNet-8 trained by ``depthscape train`` (the reference for the API's run)."""
    out = tmp_path_factory.mktemp("cli")
    options = [x for key, value in SHORT.items() for x in (f"--{key.replace('_', '-')}", str(value))]
    assert main(["train", "resnet", "8", "--dataset", str(data), "--cache-dir",
                 str(out / "cache"), "--out", str(out), "--no-progress", *options]) == 0
    return out


def same_run(a: Path, b: Path) -> None:
    """The same weights bit for bit, the same log rows (but the times) and settings."""
    final_a, final_b = (next((root / "models").glob("*[!s].pth")) for root in (a, b))
    state_a, state_b = load_checkpoint(final_a), load_checkpoint(final_b)
    assert state_a["state_dict"].keys() == state_b["state_dict"].keys()
    for key in state_a["state_dict"]:
        assert torch.equal(state_a["state_dict"][key], state_b["state_dict"][key]), key
    for settings in (state_a["config"], state_b["config"]):
        for key in ("out_dir", "cache_dir"):
            settings["train"].pop(key)
    assert state_a["config"] == state_b["config"]

    def rows(root):
        log = next((root / "logs").glob("*_log.csv"))
        return [{k: v for k, v in r.items() if k != "elapsed_s" and not
                 (isinstance(v, float) and math.isnan(v))} for r in read_log(log)]

    assert rows(a) == rows(b) and len(rows(a)) == 3


def test_ds_train_is_depthscape_train_bit_for_bit(data, cli_run, tmp_path):
    result = ds.train("resnet", 8, dataset=str(data), cache_dir=str(tmp_path / "cache"),
                      out=tmp_path, progress=False, **SHORT)
    assert result.finished and result.iteration == 12 and result.paths.final.is_file()
    same_run(cli_run, tmp_path)
    with pytest.raises(UserError, match="goes with a model from outside"):
        ds.train("resnet8", model_kwargs={"num_classes": 3}, out=tmp_path)


FACTORY = '''
from torch import nn


def tiny(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def test_ds_train_of_a_plugin_is_the_cli_s_run(data, tmp_path):
    (tmp_path / "nets.py").write_text(FACTORY)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('name = "tiny"\nlr = 0.05\nmomentum = 0.9\nbatch_size = 16\n'
                      'iterations = 6\nlog_every = 2\n[preprocess]\naugment = true\n')
    spec = f"{tmp_path / 'nets.py'}:tiny"
    assert main(["train", "--model-from", spec, "--recipe", str(recipe), "--dataset", str(data),
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    result = ds.train(spec, recipe=recipe, dataset=str(data), cache_dir=str(tmp_path / "cache"),
                      out=tmp_path / "api", progress=False)
    assert result.paths.final.name == f"tiny_{data.name}.pth"
    same_run(tmp_path / "cli", tmp_path / "api")
    with pytest.raises(UserError, match="needs a recipe"):
        ds.train(spec, out=tmp_path / "api")


def test_ds_trajectory_of_a_run_equals_depthscape_trajectory(cli_run, data, tmp_path):
    checkpoint = cli_run / "models" / f"resnet-8_{data.name}.pth"
    out = tmp_path / "cli.h5"
    assert main(["trajectory", str(checkpoint), "--resolution", "3", "--output", str(out),
                 "--no-plots", "--no-progress"]) == 0
    cli = ds.Surface.load(out)
    run = ds.load_run(checkpoint)
    inputs = run.preprocess.normalize(run.test.images)
    snapshots = checkpoint.with_name(checkpoint.stem + ".snapshots.h5")
    api = ds.trajectory(snapshots, run.model, (inputs, run.test.labels), resolution=3,
                        progress=False)
    assert isinstance(cli, ds.TrajectorySurface) and isinstance(api, ds.TrajectorySurface)
    np.testing.assert_array_equal(api.loss, cli.loss)
    np.testing.assert_array_equal(api.accuracy, cli.accuracy)
    np.testing.assert_array_equal(api.points, cli.points)
    np.testing.assert_array_equal(api.steps, [0, 4, 8, 12])
    assert np.all(np.isfinite(api.loss)) and np.ptp(api.loss) > 0

    # the same path given as state dicts (the snapshot file's rows) is the same trajectory
    from depthscape.training.snapshots import read_snapshot_info, read_snapshot_rows

    info = read_snapshot_info(snapshots)
    rows = read_snapshot_rows(snapshots, range(len(info["steps"])),
                              torch.empty(len(info["steps"]), info["width"]))
    states = []
    for row in rows:
        state, offset = {}, 0
        for name, shape in zip(info["names"], info["shapes"]):
            size = int(np.prod(shape))
            state[name] = row[offset:offset + size].reshape(shape)
            offset += size
        states.append(state)
    listed = ds.trajectory(states, run.model, (inputs, run.test.labels), resolution=3,
                           progress=False)
    np.testing.assert_array_equal(listed.loss, api.loss)
    np.testing.assert_array_equal(listed.points, api.points)
    without_end = ds.trajectory(states[:-1], run.model, (inputs, run.test.labels), resolution=3,
                                progress=False)  # the model's own weights end the path
    np.testing.assert_array_equal(without_end.loss, api.loss)
    fig = api.plot()
    assert fig.axes and "PC" in fig.axes[0].get_xlabel()


def test_ds_trajectory_of_a_users_loop_with_mse(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(40, 5), torch.randn(40, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshots = []
    for step in range(12):
        if step % 3 == 0:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    path = ds.trajectory(snapshots, model, (x, y), loss=nn.MSELoss(), resolution=5,
                         output=tmp_path / "mse.h5", progress=False)
    assert path.accuracy is None and path.points.shape == (5, 2) and path.loss.shape == (5, 5)
    assert np.all(path.points[-1] == 0) and list(path.steps) == [0, 1, 2, 3, 4]
    assert path.explained_variance_ratio[0] > 0.5
    # each point is its snapshot's offset from the end along the two orthonormal directions
    d1, d2 = path.directions
    flat = [torch.cat([d[n].reshape(-1) for n in d1]) for d in (d1, d2)]
    assert abs(float(flat[0] @ flat[1])) < 1e-6 and abs(float(flat[0].norm()) - 1) < 1e-6
    end = torch.cat([model.state_dict()[n].reshape(-1) for n in d1])
    for point, snapshot in zip(path.points, snapshots):
        offset = torch.cat([snapshot[n].reshape(-1) for n in d1]) - end
        np.testing.assert_allclose(point, [float(offset @ f) for f in flat], atol=1e-5)
    again = ds.trajectory(snapshots, model, (x, y), loss=nn.MSELoss(), resolution=5,
                          output=tmp_path / "mse.h5", progress=False)  # a finished file
    np.testing.assert_array_equal(again.loss, path.loss)
    with pytest.raises(UserError, match="at least 3 snapshots"):
        ds.trajectory(snapshots[:1], model, (x, y), loss=nn.MSELoss(), progress=False)
    with pytest.raises(UserError, match="not a state dict of this model"):
        ds.trajectory([{"w": torch.zeros(1)}] * 3, model, (x, y), progress=False)
