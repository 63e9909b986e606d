"""Channels-last and bf16 on the CPU (issue 16), and each family's initialisation (issue 20).

No timing here: the speed lives in benchmarks/bench_train.py and bench_landscape.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from _landscape_tools import (  # noqa: F401  (one_thread: the autouse fixture)
    calibrated_model,
    one_thread,
    tiny_dataset,
    write_checkpoint,
)
from conftest import write_image_folder
from torch import nn

from depthscape.analysis.landscape import LandscapeConfig, compute_landscape, read_surface
from depthscape.analysis.sharpness import SharpnessConfig, measure_sharpness
from depthscape.cli import main
from depthscape.core import runtime
from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.errors import UserError
from depthscape.core.models import get_model, model_info
from depthscape.training.fastpath import fast_path_for
from depthscape.training.loop import TrainConfig, train

needs_bf16 = pytest.mark.skipif(not runtime.cpu_bf16_supported(),
                                reason="this CPU has no native bf16")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), train_per_class=32, size=16)


def config(images, out, **extra) -> TrainConfig:
    settings = dict(model="resnet8", dataset=str(images), out_dir=str(out), device="cpu",
                    scale=24 / 64_000, log_every=4, eval_every=8, checkpoint_every=1000,
                    progress=False)
    settings.update(extra)
    return TrainConfig(**settings)


def runtime_of(out) -> dict:
    (path,) = (out / "logs").glob("*_config.json")
    return json.loads(path.read_text())["runtime"]


def weights(out) -> dict:
    (path,) = [p for p in (out / "models").glob("*.pth") if ".resume." not in p.name]
    return load_checkpoint(path)["state_dict"]


# ------------------------------------------------------------------------- the runtime


def test_the_cpu_defaults_to_channels_last_fp32_and_ignores_only_cuda_switches():
    fast, notice = fast_path_for("cpu", channels_last=None, precision=None, cuda_graph=None)
    assert fast.channels_last and fast.arithmetic == "fp32" and notice is None
    fast, notice = fast_path_for("cpu", channels_last=False, precision="tf32", cuda_graph=True)
    assert not fast.channels_last and fast.arithmetic == "fp32"
    assert "--precision tf32" in notice and "--cuda-graph" in notice


def test_bf16_on_a_cpu_without_it_is_a_one_line_refusal(monkeypatch, tmp_path, capsys, images):
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    with pytest.raises(UserError, match="no native bf16"):
        runtime.resolve_precision("bf16", "cpu")
    code = main(["train", "resnet", "8", "--dataset", str(images), "--device", "cpu",
                 "--precision", "bf16", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "no native bf16" in err[0], err
    assert not (tmp_path / "out" / "models").exists() or not any((tmp_path / "out" / "models").iterdir())


# ---------------------------------------------------------------------------- training


def test_channels_last_is_float32_arithmetic_in_another_layout():
    torch.manual_seed(0)
    nchw = get_model("resnet8", num_classes=3)
    nhwc = get_model("resnet8", num_classes=3)
    nhwc.load_state_dict(nchw.state_dict())
    nhwc.to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 16, 16)
    y = torch.randint(0, 3, (16,))
    grads = []
    for model, batch in ((nchw, x), (nhwc, x.contiguous(memory_format=torch.channels_last))):
        loss = nn.functional.cross_entropy(model(batch), y)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
        grads[-1] = (float(loss.detach()), grads[-1])
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6)  # float32 rounding, not bf16's 1e-2
    for a, b in zip(grad_a, grad_b):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_training_records_the_layout_it_used(images, tmp_path, cache_dir):
    nchw = train(config(images, tmp_path / "nchw", channels_last=False))
    nhwc = train(config(images, tmp_path / "nhwc"))  # the CPU default
    assert runtime_of(tmp_path / "nchw")["channels_last"] is False
    assert runtime_of(tmp_path / "nhwc")["channels_last"] is True
    # the same run to rounding (which a few SGD steps at lr 0.1 amplify)
    assert nchw.rows[0]["train_loss"] == pytest.approx(nhwc.rows[0]["train_loss"], rel=1e-2)


@needs_bf16
def test_bf16_on_the_cpu_trains_records_its_runtime_and_resumes_bit_exactly(images, tmp_path,
                                                                              cache_dir):
    whole = train(config(images, tmp_path / "whole", precision="bf16"))
    recorded = runtime_of(tmp_path / "whole")
    assert recorded["precision"] == "bf16" and recorded["channels_last"] is True
    losses = [row["train_loss"] for row in whole.rows]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    stopped = train(config(images, tmp_path / "split", precision="bf16", stop_after=10))
    assert not stopped.finished
    resumed = train(config(images, tmp_path / "split", precision="bf16", resume=True))
    assert resumed.finished
    for key, tensor in weights(tmp_path / "whole").items():
        assert torch.equal(tensor, weights(tmp_path / "split")[key]), key
    train(config(images, tmp_path / "split2", precision="bf16", stop_after=4))
    with pytest.raises(UserError, match="precision"):  # a resume never mixes two precisions
        train(config(images, tmp_path / "split2", precision="fp32", resume=True))


def test_a_run_started_in_nchw_resumes_in_nchw(images, tmp_path, cache_dir):
    whole = tmp_path / "whole"
    train(config(images, whole, channels_last=False))
    split = tmp_path / "split"
    train(config(images, split, channels_last=False, stop_after=10))
    train(config(images, split, resume=True))  # no layout asked for: the run's own
    assert runtime_of(split)["channels_last"] is False
    for key, tensor in weights(whole).items():
        assert torch.equal(tensor, weights(split)[key]), key


# -------------------------------------------------------------------------- landscapes


@needs_bf16
def test_a_bf16_surface_on_the_cpu_has_its_own_identity_and_is_never_mixed(tmp_path):
    data = tiny_dataset()
    model = calibrated_model("resnet8", dataset=data, steps=5)
    checkpoint = write_checkpoint(tmp_path / "run" / "models" / "resnet-8_tiny.pth", model)
    fp32_config = LandscapeConfig(resolution=3, batch_size=20)
    fp32 = compute_landscape(checkpoint, fp32_config, dataset=data, progress=False)
    bf16 = compute_landscape(checkpoint, replace(fp32_config, precision="bf16"), dataset=data,
                             progress=False)
    assert fp32 != bf16  # default names keep them apart
    with h5py.File(bf16, "r") as f:
        assert f.attrs["precision"] == "bf16"
    a, b = read_surface(fp32)["loss"], read_surface(bf16)["loss"]
    assert not np.array_equal(a, b) and np.allclose(a, b, rtol=0.05)  # bf16: close, not equal
    with pytest.raises(UserError, match="precision"):  # an explicit file never mixes the two
        compute_landscape(checkpoint, fp32_config, output=bf16, dataset=data, progress=False)


@needs_bf16
def test_sharpness_in_bf16_is_its_own_result_and_close_to_fp32(tmp_path):
    data = tiny_dataset()
    model = calibrated_model("resnet8", dataset=data, steps=5)
    checkpoint = write_checkpoint(tmp_path / "run" / "models" / "resnet-8_tiny.pth", model)
    base = SharpnessConfig(subset=24, batch_size=24, power_iters=12, trace_samples=5, device="cpu")
    out = tmp_path / "sharp.json"
    fp32 = measure_sharpness(checkpoint, base, dataset=data, output=out)
    bf16 = measure_sharpness(checkpoint, replace(base, precision="bf16"), dataset=data, output=out)
    assert bf16.largest_eigenvalue != fp32.largest_eigenvalue  # measured again, not the cache
    assert bf16.largest_eigenvalue == pytest.approx(fp32.largest_eigenvalue, rel=0.1)


# ---------------------------------------------------------------------- initialisation


def test_each_family_names_its_initialisation():
    assert model_info("cnn").family.init == "pytorch-default"
    assert model_info("resnet20").family.init == "kaiming-normal"
    assert model_info("plain56").family.init == "kaiming-normal"


def _bound_and_std(weight: torch.Tensor) -> tuple[float, float]:
    fan_in = weight[0].numel()
    return 1 / math.sqrt(fan_in), math.sqrt(2 / fan_in)


def test_the_cnn_keeps_pytorchs_default_initialisation():
    torch.manual_seed(0)
    model = get_model("cnn")
    assert sum(p.numel() for p in model.parameters()) == 654_346
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            bound, _ = _bound_and_std(module.weight)  # default: uniform in +-1/sqrt(fan_in)
            assert float(module.weight.detach().abs().max()) <= bound + 1e-7, module
            assert float(module.bias.detach().abs().max()) <= bound + 1e-7, module


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_resnets_and_plainnets_draw_kaiming_normal_weights(name):
    torch.manual_seed(0)
    model = get_model(name)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            bound, std = _bound_and_std(module.weight)
            if module.weight.numel() >= 1000:  # enough samples to tell the two apart
                assert float(module.weight.detach().std()) == pytest.approx(std, rel=0.15), module
                assert float(module.weight.detach().abs().max()) > bound, module  # not the default uniform
