"""Faster Hessian-vector products, same numbers: the layers' forward passes that
:class:`~depthscape.analysis.hessian.HessianOperator` builds its gradient graph with.

A product ``H v`` is the backward pass of ``g . v`` through the graph of the gradient ``g``
(reverse over reverse). PyTorch's own second derivatives of two layers cost more than the
arithmetic asks (ResNet-20, 128 images, one CPU thread: docs/spectrum.md):

* **convolution**: ``_convolution_double_backward`` forms the weight's part as a
  convolution of the batch with itself (batch and channels swapped, copies first), about
  twice the time of the weight-gradient kernel it stands for. :class:`_Conv` is a
  convolution whose backward is :class:`_ConvBackward`, whose own backward is the four
  ordinary kernels (two forward convolutions, one input gradient, one weight gradient).
* **BatchNorm in eval mode** is an affine map per channel, but its second derivative goes
  through ``native_batch_norm_backward``'s training-mode formula (17 % of a product).
  :func:`_folded_batch_norm` writes it as ``(x - mean) * (weight / sqrt(var + eps)) + bias``.

Both give the products of the ordinary graph to float32 rounding (the tests: 1e-5
relative). :func:`fast_layers` swaps them in for the modules where they apply and puts the
modules' own forward passes back after; every other module (a subclass with its own
forward, a padding mode other than zeros, BatchNorm in training mode or without running
statistics) keeps its own, so any model works and gets the faster layers where it has them.
"""

from __future__ import annotations

import contextlib
import types

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

_aten = torch.ops.aten


class _ConvBackward(torch.autograd.Function):
    """``(grad_out, x, w) -> (grad_x, grad_w)`` of a bias-free convolution, differentiable
    once more by the ordinary kernels (products need no third derivative)."""

    @staticmethod
    def forward(ctx, grad_out, x, w, stride, padding, dilation, groups, need_x):
        ctx.save_for_backward(grad_out, x, w)
        ctx.conf = (stride, padding, dilation, groups)
        grad_x, grad_w, _ = _aten.convolution_backward(
            grad_out, x, w, None, stride, padding, dilation, False, [0, 0], groups,
            [need_x, True, False])
        return grad_x, grad_w

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_x, gg_w):
        grad_out, x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_grad_out, need_x, need_w = ctx.needs_input_grad[:3]
        conf = (stride, padding, dilation, False, [0, 0], groups)
        d_grad_out = d_x = d_w = None
        if need_grad_out:  # grad_x = conv_t(grad_out, w) and grad_w = wgrad(x, grad_out)
            d_grad_out = _aten.convolution(x, gg_w, None, *conf)
            if gg_x is not None:
                d_grad_out = d_grad_out + _aten.convolution(gg_x, w, None, *conf)
        if need_x:  # grad_w's dependence on x
            d_x = _aten.convolution_backward(grad_out, x, gg_w, None, *conf,
                                             [True, False, False])[0]
        if need_w and gg_x is not None:  # grad_x's dependence on w
            d_w = _aten.convolution_backward(grad_out, gg_x, w, None, *conf,
                                             [False, True, False])[1]
        return d_grad_out, d_x, d_w, None, None, None, None, None


class _Conv(torch.autograd.Function):
    """A bias-free convolution whose backward is :class:`_ConvBackward`."""

    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation, groups):
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, groups)
        return _aten.convolution(x, w, None, stride, padding, dilation, False, [0, 0], groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        grad_x, grad_w = _ConvBackward.apply(grad_out, x, w, *ctx.conf, need_x)
        return (grad_x if need_x else None), grad_w, None, None, None, None


def _fast_conv(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    out = _Conv.apply(x, self.weight, list(self.stride), list(self.padding),
                      list(self.dilation), self.groups)
    return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def _folded_batch_norm(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    self._check_input_dim(x)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = torch.rsqrt(self.running_var + self.eps)
    if self.weight is not None:
        scale = self.weight * scale
    out = (x - self.running_mean.view(shape)) * scale.view(shape)
    return out if self.bias is None else out + self.bias.view(shape)


def _replacement(module: nn.Module):
    """The faster forward for ``module``, or None where it keeps its own."""
    if "forward" in vars(module):  # already patched by someone: leave it alone
        return None
    if (isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)):
        return _fast_conv
    if (isinstance(module, _BatchNorm) and type(module).forward is _BatchNorm.forward
            and not module.training and module.running_mean is not None
            and module.running_var is not None):
        return _folded_batch_norm
    return None


def fast_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that :func:`fast_layers` gives a faster forward."""
    return [m for m in model.modules() if _replacement(m) is not None]


@contextlib.contextmanager
def fast_layers(model: nn.Module, enabled: bool = True):
    """Inside: ``model``'s plain ``Conv2d`` and eval-mode BatchNorm layers run the forward
    passes above (only the graph built inside uses them); after: their own again."""
    patched = []
    try:
        if enabled:
            for module in model.modules():
                forward = _replacement(module)
                if forward is not None:
                    module.forward = types.MethodType(forward, module)
                    patched.append(module)
        yield patched
    finally:
        for module in patched:
            del module.forward
