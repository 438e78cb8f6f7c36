"""The int8 convolution of the backprop baselines: forward and both backward convolutions in int8.

    forward:  z   = x_q conv W_q + b                         (B, C, H, W) -> (B, O, Ho, Wo)
    backward: g_x = input-gradient conv of g_q and W_q       -> (B, C, H, W)
              g_W = weight-gradient conv of x_q and g_q      -> (O, C/G, kh, kw)
              g_b = sum over B, Ho, Wo of the float g        (O,)

The conv form of ffint8.bp.linear, with the same Int8Layer: x_q per tensor, rounded as
BPConfig.act_rounding says (seeds from the trainer's stream), W_q per tensor to nearest, and g_q
from the layer's GradQuantizer, which sees g as (B * Ho * Wo, O): one row per output position, one
column per output channel, so a per-channel g_W operand (bp-gdai8) has one scale per output
channel as for a dense layer. Every convolution is int8 x int8 with exact integer accumulation
(ffint8.quant.conv), scaled back to float32. Unlike FF's Int8Conv2d (ffint8.nn.conv), W is always
per tensor here, so the g_x product reuses the forward's W_q.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ffint8.bp.clip import cosine_distance
from ffint8.quant import quantize
from ffint8.quant.conv import (
    ConvSpec,
    int8_conv2d_input_scaled,
    int8_conv2d_scaled,
    int8_conv2d_weight_scaled,
)
from ffint8.quant.quantize import dequantize

if TYPE_CHECKING:
    from ffint8.bp.linear import Int8Layer


def map_to_rows(g: torch.Tensor) -> torch.Tensor:
    """(B, O, Ho, Wo) -> (B * Ho * Wo, O): the layout the gradient quantisers take."""
    return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])


def rows_to_map(rows: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """(B * Ho * Wo, O) -> (B, O, Ho, Wo), a channels_last view when rows is contiguous."""
    n, o, ho, wo = shape
    return rows.reshape(n, ho, wo, o).permute(0, 3, 1, 2)


class ConvWeightDistance:
    """bp-gdai8's criterion for a conv layer (a ffint8.bp.grad.WeightDistance): the cosine distance
    between the weight gradients of two output gradients g_ref and g_hat, (B * Ho * Wo, O) each,
    computed in float64 against the dequantised layer input (torch.nn.grad.conv2d_weight).

    A clip search compares many g_hat against one g_ref: the float64 input and the last g_ref's
    weight gradient are kept between calls, and nothing is computed unless the search runs.
    """

    def __init__(self, x_q: torch.Tensor, x_scale: torch.Tensor, w_shape: tuple[int, ...],
                 spec: ConvSpec, g_shape: tuple[int, int, int, int]) -> None:
        self.x_q, self.x_scale = x_q, x_scale
        self.w_shape, self.spec, self.g_shape = w_shape, spec, g_shape
        self._x: torch.Tensor | None = None
        self._ref: tuple[torch.Tensor, torch.Tensor] | None = None  # (g_ref, its weight gradient)

    def weight_grad(self, g: torch.Tensor) -> torch.Tensor:
        """(B * Ho * Wo, O) output gradient -> float64 w_shape weight gradient."""
        if self._x is None:
            self._x = dequantize(self.x_q, self.x_scale).double()  # (B, C, H, W)
        g = rows_to_map(g.double(), self.g_shape)
        return torch.nn.grad.conv2d_weight(self._x, self.w_shape, g, self.spec.stride,
                                           self.spec.padding, 1, self.spec.groups)

    def __call__(self, g_ref: torch.Tensor, g_hat: torch.Tensor) -> float:
        if self._ref is None or self._ref[0] is not g_ref:
            self._ref = (g_ref, self.weight_grad(g_ref))
        return cosine_distance(self._ref[1], self.weight_grad(g_hat))


class Int8ConvFunction(torch.autograd.Function):
    """z = conv2d(x, W) + b with int8 convolutions forward and backward; see the module
    docstring. x (B, C, H, W), weight (O, C/G, kh, kw), bias (O,) or None -> z float32."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                spec: ConvSpec, layer: Int8Layer) -> torch.Tensor:
        x_q = layer.quantize_input(x)
        w_q = quantize(weight.detach(), "nearest")
        kernel = layer.conv_kernel
        z = int8_conv2d_scaled(x_q.q, x_q.scale, w_q.q, w_q.scale, spec, kernel)  # (B, O, Ho, Wo)
        if bias is not None:
            z = z.add_(bias.detach().view(1, -1, 1, 1))
        ctx.save_for_backward(x_q.q, x_q.scale, w_q.q, w_q.scale)
        ctx.spec, ctx.layer = spec, layer
        ctx.x_shape, ctx.w_shape = tuple(x.shape), tuple(weight.shape)
        return z

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x_q, x_scale, w_q, w_scale = ctx.saved_tensors
        layer: Int8Layer = ctx.layer
        spec, kernel, g_shape = ctx.spec, layer.conv_kernel, tuple(g.shape)
        distance = ConvWeightDistance(x_q, x_scale, ctx.w_shape, spec, g_shape)
        ops = layer.grad(map_to_rows(g.float()), distance, layer.seeds)  # (B * Ho * Wo, O)
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0]:
            gx = ops.for_input
            g_x = int8_conv2d_input_scaled(rows_to_map(gx.q, g_shape), gx.scale, w_q, w_scale,
                                           ctx.x_shape, spec, kernel)
        if ctx.needs_input_grad[1]:
            gw = ops.for_weight  # scale 0-d, or (1, O) per output channel
            g_w = int8_conv2d_weight_scaled(x_q, x_scale, rows_to_map(gw.q, g_shape), gw.scale,
                                            ctx.w_shape, spec, kernel)
        if ctx.needs_input_grad[2]:
            g_b = g.sum(dim=(0, 2, 3))
        return g_x, g_w, g_b, None, None
