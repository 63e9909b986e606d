"""fp16 for landscapes (issue 15: a precision added through core/runtime.py alone, with one
line in training/fastpath.py so training refuses it): forward-only float16 autocast.

On the CPU this PyTorch's autocast takes float16 (it computes in float16 where oneDNN has
kernels for it, else emulates it): the surface is the fp32 one to float16's rounding, and it
is another surface (its own identity and file name), never mixed with the fp32 one.
"""

from __future__ import annotations

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

from depthscape.analysis.landscape import LandscapeConfig, compute_landscape, read_surface
from depthscape.cli import main
from depthscape.core import runtime
from depthscape.core.errors import UserError
from depthscape.training.fastpath import fast_path_for

needs_fp16 = pytest.mark.skipif(not runtime.cpu_fp16_supported(),
                                reason="this PyTorch's CPU autocast has no float16")

#: float16 keeps 11 significant bits (relative rounding 2^-11 ~ 5e-4 per operation); over a
#: ResNet-8's layers and a 48-image mean the loss moved by at most 0.2 % of itself on a 5x5
#: grid (losses 0.06 to 197) on this machine: 1 % leaves room for other CPUs' kernels.
LOSS_RTOL = 1e-2


def test_fp16_is_one_of_the_precisions_and_resolves_per_device():
    assert "fp16" in runtime.PRECISIONS
    resolved = runtime.resolve_precision("fp16", "cuda")
    assert (resolved.name, resolved.device_type, resolved.notice) == ("fp16", "cuda", None)
    elsewhere = runtime.resolve_precision("fp16", "mps")
    assert elsewhere.name == "fp32" and \
        "--precision fp16 acts only on CUDA and the CPU" in elsewhere.notice


def test_fp16_on_a_cpu_autocast_without_it_is_a_one_line_refusal(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_fp16_supported", lambda: False)
    with pytest.raises(UserError, match="CPU autocast has no float16") as error:
        runtime.resolve_precision("fp16", "cpu")
    assert "\n" not in str(error.value)


def test_training_refuses_fp16_in_one_line(tmp_path, capsys):
    """fp16 gradients need a gradient scaler, which depthscape does not build."""
    for device in ("cpu", "cuda"):
        with pytest.raises(UserError, match="gradient scaler"):
            fast_path_for(device, precision="fp16")
    with pytest.raises(UserError, match="gradient scaler"):
        runtime.resolve_precision("fp16", "cpu", backward=True)
    # and any forward pass that autograd records (Hessians, sharpness) refuses it too
    half = runtime.precision_named("fp16", "cpu")
    with pytest.raises(UserError, match="gradient scaler"):
        half.forward()
    with pytest.raises(UserError, match="gradient scaler"):
        half.check_backward()
    with torch.inference_mode():
        with half.forward():
            assert torch.get_autocast_dtype("cpu") == torch.float16
    images = write_image_folder(tmp_path / "data", train_per_class=4, size=16)
    code = main(["train", "resnet", "8", "--dataset", str(images), "--device", "cpu",
                 "--precision", "fp16", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "gradient scaler" in err[0], err
    assert not (tmp_path / "out" / "models").exists() or not any((tmp_path / "out" / "models").iterdir())


@needs_fp16
def test_an_fp16_surface_is_close_to_the_fp32_one_and_has_its_own_identity(tmp_path):
    dataset = tiny_dataset()
    model = calibrated_model("resnet8", dataset=dataset, steps=5)
    checkpoint = write_checkpoint(tmp_path / "models" / "resnet-8_tiny.pth", model)
    config = LandscapeConfig(resolution=3, batch_size=16, device="cpu", workers=1)
    exact = compute_landscape(checkpoint, config, dataset=dataset, progress=False)
    half = compute_landscape(checkpoint, LandscapeConfig(**{**config.__dict__, "precision": "fp16"}),
                             dataset=dataset, progress=False)
    assert half != exact  # another default file: another surface
    a, b = read_surface(exact), read_surface(half)
    assert a["settings"].get("precision", "fp32") == "fp32"
    assert b["settings"]["precision"] == "fp16"
    assert b["complete"] and np.isfinite(b["loss"]).all()
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=LOSS_RTOL)
    assert not np.array_equal(b["loss"], a["loss"])  # it really ran in float16
    assert np.abs(b["acc"] - a["acc"]).max() <= 100.0 * 3 / 48 + 1e-9  # a few images at most
    # an fp16 run never continues (or overwrites) the fp32 file
    with pytest.raises(UserError, match="other settings"):
        compute_landscape(checkpoint, LandscapeConfig(**{**config.__dict__, "precision": "fp16"}),
                          output=exact, dataset=dataset, progress=False)
