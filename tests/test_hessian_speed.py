"""The faster Hessian-vector products (analysis/hessian_products.py) against the ordinary
double backward: equal to 1e-5 relative on a ResNet, a BatchNorm network in eval mode, a
custom loss, one chunk and several, channels-last; modules they cannot serve keep their own
forward pass; the products counter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthscape.analysis.hessian import HessianOperator, hessian_trace
from depthscape.analysis.hessian_products import (
    _fast_conv,
    _folded_batch_norm,
    fast_layers,
    fast_modules,
)
from depthscape.core.models import get_model
from depthscape.core.runtime import precision_named


def relative(a, b) -> float:
    flat_a = torch.cat([t.reshape(-1) for t in a]).double()
    flat_b = torch.cat([t.reshape(-1) for t in b]).double()
    return float((flat_a - flat_b).norm() / flat_b.norm())


def products(model, inputs, labels, fast, batch_size=500, loss_fn=None, seed=0):
    operator = HessianOperator(model, inputs, labels, batch_size=batch_size, loss_fn=loss_fn,
                               fast=fast)
    generator = torch.Generator().manual_seed(seed)
    vectors = [[torch.randn(p.shape, generator=generator) for p in operator.params]
               for _ in range(2)]
    return [operator(v) for v in vectors], operator  # two: the cached graph is reused


def stir_batch_norm(model):
    """Running statistics and affine weights away from their defaults (else BN is ~ x)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=generator)
                    m.bias.uniform_(-0.2, 0.2, generator=generator)
    return model


@pytest.fixture(scope="module")
def resnet8():
    torch.manual_seed(0)
    model = stir_batch_norm(get_model("resnet8", num_classes=3)).eval()
    inputs = torch.randn(6, 3, 32, 32)
    labels = torch.randint(0, 3, (6,))
    return model, inputs, labels


class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2, dilation=1)
        self.bn1d = nn.BatchNorm1d(4, affine=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.tanh(self.bn(self.conv(x)))
        x = torch.tanh(self.conv2(x)).mean((2, 3))
        return self.fc(self.bn1d(x))


def tiny():
    torch.manual_seed(0)
    model = TinyBN()
    return stir_batch_norm(model).eval(), torch.randn(10, 2, 8, 8), torch.randint(0, 3, (10,))


@pytest.mark.parametrize("batch_size", [500, 4])  # one cached chunk; three chunks summed
def test_resnet8_products_equal_the_double_backward(resnet8, batch_size, one_thread):
    model, inputs, labels = resnet8
    assert len(fast_modules(model)) == 7 + 7  # every convolution and BatchNorm
    fast, operator = products(model, inputs, labels, True, batch_size)
    plain, _ = products(model, inputs, labels, False, batch_size)
    assert operator.fast and operator.products == 2
    for a, b in zip(fast, plain):
        assert relative(a, b) < 1e-5
        assert [t.shape for t in a] == [p.shape for p in operator.params]
    assert all("forward" not in vars(m) for m in model.modules())  # put back


def test_a_tiny_batch_norm_model_and_a_custom_loss(one_thread):
    model, inputs, labels = tiny()
    kinds = {type(m) for m in fast_modules(model)}
    assert kinds == {nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d}

    def loss_fn(logits, y):  # summed, as the operator wants: squared error on one-hots
        return ((logits.softmax(1) - F.one_hot(y, 3)) ** 2).sum() + 0.1 * (logits ** 4).sum()

    for loss in (None, loss_fn):
        for batch_size in (500, 3):
            fast, _ = products(model, inputs, labels, True, batch_size, loss)
            plain, _ = products(model, inputs, labels, False, batch_size, loss)
            for a, b in zip(fast, plain):
                assert relative(a, b) < 1e-5
    assert not model.training


def test_channels_last_products_equal_the_double_backward(resnet8, one_thread):
    model, inputs, labels = resnet8
    plain, _ = products(model, inputs, labels, False)
    layout = get_model("resnet8", num_classes=3).eval()
    layout.load_state_dict(model.state_dict())
    layout.to(memory_format=torch.channels_last)
    fast, _ = products(layout, inputs.contiguous(memory_format=torch.channels_last), labels,
                       True)
    for a, b in zip(fast, plain):
        assert relative(a, b) < 1e-5


class OwnConv(nn.Conv2d):
    def forward(self, x):  # its own forward: the operator must call it
        return super().forward(x) * 2


def test_modules_it_cannot_serve_keep_their_own_forward(one_thread):
    torch.manual_seed(0)
    model = nn.Sequential(OwnConv(2, 3, 3, padding=1),
                          nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(3, 3, 3, padding="same"), nn.BatchNorm2d(3),
                          nn.BatchNorm2d(3, track_running_stats=False), nn.Tanh(),
                          nn.Flatten(), nn.Linear(3 * 16, 3)).eval()
    assert fast_modules(model) == [model[3]]  # the plain eval BN only
    inputs, labels = torch.randn(5, 2, 4, 4), torch.randint(0, 3, (5,))
    fast, _ = products(model, inputs, labels, True)
    plain, _ = products(model, inputs, labels, False)
    assert all(relative(a, b) < 1e-5 for a, b in zip(fast, plain))
    model.train()
    assert fast_modules(model) == []  # BN in training mode keeps its own


def test_the_layers_are_swapped_inside_only_and_back_after_an_error(resnet8):
    model, inputs, _ = resnet8
    conv, bn = model.conv1, model.bn1
    servable = fast_modules(model)
    with fast_layers(model) as patched:
        assert conv.forward.__func__ is _fast_conv and bn.forward.__func__ is _folded_batch_norm
        assert patched == servable and fast_modules(model) == []  # not patched twice
    assert "forward" not in vars(conv) and "forward" not in vars(bn)
    with pytest.raises(RuntimeError), fast_layers(model):
        raise RuntimeError("a failing forward")
    assert "forward" not in vars(conv)
    with fast_layers(model, enabled=False) as patched:
        assert patched == [] and "forward" not in vars(conv)


def test_the_fallback_operator_and_bf16_build_the_plain_graph(resnet8, monkeypatch):
    model, inputs, labels = resnet8
    calls = []
    monkeypatch.setattr("depthscape.analysis.hessian_products._fast_conv",
                        lambda self, x: calls.append(1) or nn.Conv2d.forward(self, x))
    HessianOperator(model, inputs, labels, fast=False)([torch.ones_like(p)
                                                       for p in model.parameters()])
    assert calls == []
    HessianOperator(model, inputs, labels)([torch.ones_like(p) for p in model.parameters()])
    assert len(calls) == 7  # once per convolution: the graph is built once
    bf16 = HessianOperator(model, inputs, labels, precision=precision_named("bf16", "cpu"))
    assert not bf16.fast


def test_hutchinson_gives_the_same_estimate(resnet8, one_thread):
    model, inputs, labels = resnet8
    estimates = [hessian_trace(HessianOperator(model, inputs, labels, fast=fast),
                               [p for p in model.parameters()], samples=4, min_samples=4)
                 for fast in (True, False)]
    assert estimates[0][2] == estimates[1][2] == 4
    assert estimates[0][0] == pytest.approx(estimates[1][0], rel=1e-5)
