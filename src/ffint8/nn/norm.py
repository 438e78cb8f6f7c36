"""Batch norm in training mode and the activation after it, as one autograd Function on the CPU.

A convolutional unit spends much of its step outside the convolutions: in a MobileNet-v2 step on
this project's Xeon, BatchNorm2d's backward and forward and ReLU6's took about 38% of the time,
all float32 passes over the feature maps (session 16's profile). fastsr's C kernel does norm and
activation in two passes forward (the channel's mean, then its variance and the output) and two
backward (the channel's two gradient sums, then dL/dx), and keeps only the norm's input for the
backward: the activation's mask is formed again from it. The same arithmetic as
F.batch_norm + the activation up to float32 rounding (tests/nn/test_norm.py), and the running
statistics move as nn.BatchNorm2d moves them.

batch_norm_act returns None where the kernel does not apply (no C kernel, a GPU tensor, another
layout or activation, eval mode, a norm without affine parameters) or where the environment
sets FFINT8_NO_FUSED_NORM=1 (to compare a run with PyTorch's modules); the caller then runs the
module and the activation as before.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ffint8.quant import fastsr


class BatchNormAct(torch.autograd.Function):
    """(x (N, C, H, W), weight, bias, eps, act) -> (y, mean, var): y = act(batch norm of x), the
    batch's per-channel mean and biased variance (not differentiable), for the running
    statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                act: str | None):
        out = fastsr.bn_act_forward(x, weight, bias, eps, act)
        if out is None:
            raise ValueError("BatchNormAct: operands the C kernel does not take (see "
                             "batch_norm_act's checks)")
        y, mean, var, invstd = out
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.act = act
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor, _g_mean, _g_var):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        dx, dw, db = fastsr.bn_act_backward(g, x, weight, bias, mean, invstd, ctx.act,
                                            ctx.needs_input_grad[0])
        return (dx, dw if ctx.needs_input_grad[1] else None,
                db if ctx.needs_input_grad[2] else None, None, None)


def fuses(norm: nn.Module, act: str | None) -> bool:
    """Whether this norm and activation train by the fused kernel (given a map it takes: see
    batch_norm_act): a BatchNorm2d with affine parameters, an activation the kernel has, the
    C kernel built and not switched off. The analytic footprint (ffint8.measure.convshapes)
    asks this too."""
    return (os.environ.get("FFINT8_NO_FUSED_NORM") != "1"
            and type(norm) is nn.BatchNorm2d and norm.affine
            and act in fastsr.BN_ACTIVATIONS and fastsr.available())


def _fits(x: torch.Tensor, norm: nn.Module, act: str | None) -> bool:
    return (norm.training and fuses(norm, act) and fastsr.bn_layout(x) is not None
            and x.shape[0] * x.shape[2] * x.shape[3] > 1)


def batch_norm_act(x: torch.Tensor, norm: nn.Module, act: str | None) -> torch.Tensor | None:
    """act(norm(x)) for a BatchNorm2d in training mode by the fused kernel, its running
    statistics moved on as the module's own forward moves them; None where the kernel does not
    apply (above). x's batch must hold more than one value per channel, as BatchNorm2d asks."""
    if not _fits(x, norm, act):
        return None
    y, mean, var = BatchNormAct.apply(x, norm.weight, norm.bias, norm.eps, act)
    if norm.track_running_stats:
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            f = (1.0 / float(norm.num_batches_tracked) if norm.momentum is None
                 else norm.momentum)
            count = x.shape[0] * x.shape[2] * x.shape[3]
            norm.running_mean.mul_(1 - f).add_(mean, alpha=f)
            norm.running_var.mul_(1 - f).add_(var, alpha=f * count / (count - 1))  # unbiased
    return y
