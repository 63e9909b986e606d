"""The Python API (``import depthscape as ds``) on the user's own models and data.

Each value is checked against something computed here without depthscape's engine (a
plain loop that moves the weights by hand, the exact Hessian) or against the CLI's path.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _landscape_tools import (  # noqa: F401
    PREPROCESS,
    calibrated_model,
    one_thread,
    tiny_dataset,
    write_checkpoint,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import depthscape as ds
from depthscape.core.errors import UserError

# ----------------------------------------------------------------------------- user models


class ConvBN(nn.Module):
    """A convolution with BatchNorm right after it (foldable), dropout, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.head(self.drop(x.flatten(1)))


class ReluThenBN(nn.Module):
    """BatchNorm after a ReLU, not after the convolution: not foldable, evaluated as is."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.bn(F.relu(self.conv(x))).mean((2, 3)))


class NoNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).mean((2, 3)))


class DictNet(nn.Module):
    """Returns a dict, as many detection/segmentation models do."""

    def __init__(self):
        super().__init__()
        self.body = NoNorm()

    def forward(self, x):
        return {"logits": self.body(x), "aux": x.mean()}


MODELS = {"conv_bn": (ConvBN, 1), "relu_then_bn": (ReluThenBN, 0), "no_norm": (NoNorm, 0)}


def tensors(n: int = 40, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 3, 8, 8, generator=generator) + y.view(-1, 1, 1, 1).float() * 0.5
    return x, y


def build(cls, seed: int = 0) -> nn.Module:
    """``cls`` with seeded weights and BatchNorm statistics measured on the data."""
    torch.manual_seed(seed)
    model = cls()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(tensors()[0])
    return model.eval()


def by_hand(model: nn.Module, directions, x, y, xs, ys, loss=F.cross_entropy, accuracy=True):
    """The surface by a plain loop: move the weights, evaluate the model in eval mode."""
    losses = np.zeros((len(ys), len(xs)))
    accs = np.zeros((len(ys), len(xs)))
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            moved = copy.deepcopy(model).eval()
            with torch.no_grad():
                for name, tensor in moved.state_dict().items():
                    if name in directions[0]:
                        tensor.add_(directions[0][name] * a + directions[1][name] * b)
                out = moved(x)
                losses[j, i] = float(loss(out, y))
                if accuracy:
                    accs[j, i] = float((out.argmax(1) == y).double().mean() * 100)
    return losses, accs


# ----------------------------------------------------------------------------- surfaces


@pytest.mark.parametrize("name", sorted(MODELS))
def test_surface_equals_a_plain_loop(name):
    cls, folds = MODELS[name]
    model = build(cls)
    before = copy.deepcopy(model.state_dict())
    x, y = tensors()
    surface = ds.loss_surface(model, (x, y), resolution=5, span=(-0.8, 0.8), progress=False)
    assert surface.loss.shape == surface.accuracy.shape == (5, 5)
    assert surface.settings["batchnorms_folded"] == folds
    directions = ds.random_directions(model, 2, seed=0)
    for mine, theirs in zip(surface.directions, directions):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    losses, accs = by_hand(model, directions, x, y, surface.x, surface.y)
    np.testing.assert_allclose(surface.loss, losses, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(surface.accuracy, accs, atol=1e-9)
    assert surface.loss[2, 2] < surface.loss[0, 0]  # not flat: the weights really moved
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_given_directions_and_one_dimension():
    model = build(NoNorm)
    x, y = tensors()
    d = ds.random_directions(model, 2, seed=3, norm="layer")
    surface = ds.loss_surface(model, (x, y), directions=d, resolution=3, progress=False)
    assert surface.settings["direction"] == "given"
    losses, _ = by_hand(model, d, x, y, surface.x, surface.y)
    np.testing.assert_allclose(surface.loss, losses, rtol=1e-6, atol=1e-6)
    curve = ds.loss_surface(model, (x, y), dims=1, resolution=5, span=(-2, 2), progress=False)
    assert curve.y is None and curve.loss.shape == (5,)
    zero = {k: torch.zeros_like(v) for k, v in curve.directions[0].items()}
    losses, _ = by_hand(model, [curve.directions[0], zero], x, y, curve.x, [0.0])
    np.testing.assert_allclose(curve.loss, losses[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="directions given"):
        ds.loss_surface(model, (x, y), directions=d[:1], progress=False)


def test_dataloader_and_dataset_give_the_same_surface():
    model = build(ConvBN)
    x, y = tensors(50)
    ref = ds.loss_surface(model, (x, y), resolution=3, progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=False)
    via_loader = ds.loss_surface(model, loader, resolution=3, progress=False)
    via_dataset = ds.loss_surface(model, TensorDataset(x, y), resolution=3, progress=False)
    for other in (via_loader, via_dataset):
        np.testing.assert_array_equal(other.loss, ref.loss)
        np.testing.assert_array_equal(other.accuracy, ref.accuracy)
        assert other.settings["data_sha256"] == ref.settings["data_sha256"]
    with pytest.raises(UserError, match="data must be"):
        ds.loss_surface(model, x, progress=False)


def regression():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(60, 5)
    t = x[:, :2] * 2 + 0.1 * torch.randn(60, 2)
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval(), x, t


def test_regression_with_mse_has_no_accuracy():
    model, x, t = regression()
    surface = ds.loss_surface(model, (x, t), resolution=5, loss=nn.MSELoss(), progress=False)
    assert surface.accuracy is None
    assert surface.settings["batchnorms_folded"] == 1  # BatchNorm1d after a Linear
    assert surface.settings["loss"] == "MSELoss()"
    losses, _ = by_hand(model, surface.directions, x, t, surface.x, surface.y,
                        loss=F.mse_loss, accuracy=False)
    np.testing.assert_allclose(surface.loss, losses, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert surface.loss[2, 2] == pytest.approx(float(F.mse_loss(model(x), t)), rel=1e-6)


def test_dict_outputs_through_an_adapter():
    model = build(DictNet)
    x, y = tensors()
    with pytest.raises(UserError, match="select_output"):
        ds.loss_surface(model, (x, y), resolution=3, progress=False)
    wrapped = ds.select_output(model, "logits")
    surface = ds.loss_surface(wrapped, (x, y), resolution=3, progress=False)
    assert all(k.startswith("model.") for k in surface.directions[0])
    plain = ds.loss_surface(model.body, (x, y), resolution=3, progress=False)
    np.testing.assert_allclose(surface.loss, plain.loss, rtol=1e-12)
    by_index = ds.select_output(model, lambda out: out["logits"])
    np.testing.assert_array_equal(
        ds.loss_surface(by_index, (x, y), resolution=3, progress=False).loss, surface.loss)


def test_interpolate_between_two_models():
    a, b = build(ConvBN, seed=0), build(ConvBN, seed=1)
    x, y = tensors()
    line = ds.interpolate(a, b, (x, y), resolution=5, span=(0, 1), progress=False)
    assert line.dims == 1 and line.settings["direction"] == "interpolation"
    for end, model in ((0, a), (-1, b)):
        with torch.no_grad():
            assert line.loss[end] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)
    with pytest.raises(UserError, match="same architecture"):
        ds.interpolate(a, build(NoNorm), (x, y), progress=False)


# ----------------------------------------------------------------------------- files


def test_save_load_and_depthscape_plot(tmp_path):
    from depthscape.cli import main

    x, y = tensors()
    surface = ds.loss_surface(build(ConvBN), (x, y), resolution=5, progress=False)
    path = surface.save(tmp_path / "mine.h5")
    loaded = ds.Surface.load(path)
    np.testing.assert_array_equal(loaded.loss, surface.loss)
    np.testing.assert_array_equal(loaded.accuracy, surface.accuracy)
    np.testing.assert_array_equal(loaded.x, surface.x)
    np.testing.assert_array_equal(loaded.y, surface.y)
    assert loaded.settings == surface.settings
    for mine, theirs in zip(loaded.directions, surface.directions):
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    with h5py.File(path) as f:  # the CLI's (and the original tool's) layout
        assert {"xcoordinates", "ycoordinates", "test_loss", "test_acc", "xdirection"} <= set(f)
    assert main(["plot", str(path), "--plots-dir", str(tmp_path / "plots"),
                 "--kinds", "contour", "heatmap", "--formats", "png"]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "mine_loss_contour.png", "mine_loss_heatmap.png"]
    fig = loaded.plot("contourf")
    assert fig.axes and fig.axes[0].get_xlabel().startswith("alpha")
    with pytest.raises(UserError, match="does not fit"):
        loaded.plot("curve")

    model, xr, t = regression()  # a curve without accuracy: saved, loaded, drawn
    curve = ds.loss_surface(model, (xr, t), dims=1, resolution=5, loss=nn.MSELoss(),
                            progress=False, output=tmp_path / "reg.h5")
    assert ds.Surface.load(tmp_path / "reg.h5").accuracy is None
    assert main(["plot", str(curve.path), "--plots-dir", str(tmp_path / "p1"),
                 "--formats", "png"]) == 0
    assert (tmp_path / "p1" / "reg_loss_curve.png").exists()
    assert len(curve.plot().axes) == 1  # no accuracy axis


class CountingLoss:
    """Cross-entropy that counts its calls and can stop the run like a Ctrl-C."""

    def __init__(self, stop_after: int | None = None):
        self.calls = 0
        self.stop_after = stop_after

    def __call__(self, outputs, targets):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt
        return F.cross_entropy(outputs, targets)


def test_output_resumes_an_interrupted_call(tmp_path):
    model = build(ConvBN)
    x, y = tensors()
    whole = ds.loss_surface(model, (x, y), resolution=4, loss=CountingLoss(), progress=False)
    out = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        ds.loss_surface(model, (x, y), resolution=4, loss=CountingLoss(stop_after=6),
                        output=out, progress=False)
    partial = ds.Surface.load(out)
    assert int(np.isfinite(partial.loss).sum()) == 6  # saved on the way out
    counting = CountingLoss()
    resumed = ds.loss_surface(model, (x, y), resolution=4, loss=counting, output=out,
                              progress=False)
    assert counting.calls == 16 - 6  # only the missing points (one batch each)
    np.testing.assert_array_equal(resumed.loss, whole.loss)
    again = CountingLoss()
    ds.loss_surface(model, (x, y), resolution=4, loss=again, output=out, progress=False)
    assert again.calls == 0  # finished: returned at once
    with pytest.raises(UserError, match="other settings"):
        ds.loss_surface(model, (x, y), resolution=4, loss=CountingLoss(), seed=1, output=out,
                        progress=False)


def test_the_api_and_the_cli_give_the_same_surface(tmp_path):
    from depthscape.analysis.landscape import LandscapeConfig, compute_landscape, read_surface

    data = tiny_dataset()
    trained = calibrated_model("resnet8", dataset=data, steps=3)
    checkpoint = write_checkpoint(tmp_path / "models" / "resnet-8_tiny.pth", trained)
    cli = read_surface(compute_landscape(checkpoint, LandscapeConfig(resolution=3),
                                         output=tmp_path / "cli.h5", dataset=data,
                                         progress=False))
    run = ds.load_run(checkpoint)
    assert run.model_name == "resnet8"
    inputs = PREPROCESS.normalize(data.test.images)
    api = ds.loss_surface(run.model, (inputs, data.test.labels), resolution=3, progress=False)
    np.testing.assert_array_equal(api.loss, cli["loss"])
    np.testing.assert_array_equal(api.accuracy, cli["acc"])


# ----------------------------------------------------------------------------- Hessians


def tiny_classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(30, 3, dtype=torch.float64)
    return model, x, torch.arange(30) % 3


def exact_hessian(model, x, y, loss):
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def f(theta):
        params = {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return loss(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_hessian_extremes_and_trace_match_the_exact_hessian(kind):
    model, x, y = tiny_classifier()
    loss = None
    exact_loss = F.cross_entropy
    if kind == "mse":
        y = torch.randn(30, 3, dtype=torch.float64)
        loss = exact_loss = nn.MSELoss()
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, x, y, exact_loss))
    count = sum(p.numel() for p in model.parameters())
    ends = ds.hessian_extremes(model, (x, y), loss=loss, iters=count, tol=1e-10, batch_size=7)
    assert ends.largest == pytest.approx(float(eigenvalues[-1]), rel=1e-6, abs=1e-9)
    assert ends.smallest == pytest.approx(float(eigenvalues[0]), rel=1e-6, abs=1e-9)
    estimate = ds.hessian_trace(model, (x, y), loss=loss, samples=400, tol=0.0)
    assert estimate.samples == 400
    assert abs(estimate.trace - float(eigenvalues.sum())) <= 5 * estimate.stderr
    assert model.training  # the caller's model is not switched to eval mode


# ----------------------------------------------------------------------------- package


def test_the_package_exports_the_api_without_loading_torch_for_the_cli():
    assert set(ds.__all__) <= set(dir(ds))
    for name in ds.__all__:
        value = getattr(ds, name)
        assert value.__doc__ and "Example" in value.__doc__ or isinstance(value, type)
    code = "import sys, depthscape, depthscape.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(AttributeError):
        ds.no_such_name  # noqa: B018


# ----------------------------------------------------------------------------- --model-from

FACTORIES = '''
import torch
from torch import nn


def small(num_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def raises():
    raise RuntimeError("no GPU here\\nsecond line")


def not_a_module():
    return 42


def flat_input():
    return nn.Linear(10, 3)
'''


def _cli_surface(main, tmp_path, name, *extra):
    out = tmp_path / f"{name}.h5"
    code = main(["landscape", *extra, "--resolution", "3", "--output", str(out), "--no-plots",
                 "--no-progress", "--out", str(tmp_path)])
    return code, out


def test_torchvision_resnet18_through_the_cli_and_the_api(tmp_path, tiny_data):
    torchvision = pytest.importorskip("torchvision")
    from depthscape.cli import main
    from depthscape.core.data import Preprocess, load_dataset

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()  # random init, no download
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    code, out = _cli_surface(main, tmp_path, "cli", "--model-from", "torchvision:resnet18",
                             "--model-kwargs", '{"num_classes": 10}', "--weights",
                             str(tmp_path / "weights.pth"), "--dataset", str(tiny_data),
                             "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    cli = ds.Surface.load(out)
    assert cli.settings["model"] == "torchvision:resnet18"
    assert cli.settings["batchnorms_folded"] == 20  # every BatchNorm of resnet18 follows a conv
    test = load_dataset(str(tiny_data), cache_dir=tmp_path / "cache").test
    inputs = Preprocess(scale=1.0, mean=(0.0,)).normalize(test.images)  # the CLI's [0, 1]
    api = ds.loss_surface(model, (inputs, test.labels), resolution=3, progress=False)
    np.testing.assert_array_equal(api.loss, cli.loss)
    np.testing.assert_array_equal(api.accuracy, cli.accuracy)
    assert api.settings["weights_sha256"] == cli.settings["weights_sha256"]
    assert np.ptp(api.loss) > 0


def test_model_from_a_file_and_a_module_and_its_one_line_failures(tmp_path, tiny_data, capsys,
                                                                  monkeypatch):
    from depthscape.cli import main

    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path / "zoo"))
    data = ["--dataset", str(tiny_data), "--cache-dir", str(tmp_path / "cache")]
    code, by_file = _cli_surface(main, tmp_path, "file", "--model-from",
                                 f"{tmp_path / 'zoo' / 'factories.py'}:small", *data)
    assert code == 0
    code, by_module = _cli_surface(main, tmp_path, "module", "--model-from", "factories:small",
                                   *data)
    assert code == 0
    np.testing.assert_array_equal(ds.Surface.load(by_file).loss, ds.Surface.load(by_module).loss)
    capsys.readouterr()
    for spec, message in (("factories:raises", "the factory raised RuntimeError: no GPU here"),
                          ("factories:not_a_module", "returned a int, not a torch.nn.Module"),
                          ("factories:flat_input", "the model cannot read this data"),
                          ("factories:missing", "has no callable 'missing'"),
                          ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
                          ("torchvision:resnet_nope", "torchvision has no model")):
        code, _ = _cli_surface(main, tmp_path, "bad", "--model-from", spec, *data)
        err = capsys.readouterr().err.strip()
        assert code != 0 and message in err, (spec, err)
        assert len(err.splitlines()) == 1, (spec, err)
    code, _ = _cli_surface(main, tmp_path, "bad", "--model-from", "factories:small",
                           "--weights", str(tmp_path / "nothing.pth"), *data)
    assert code != 0 and "no such file" in capsys.readouterr().err
