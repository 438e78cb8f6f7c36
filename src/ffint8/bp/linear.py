"""The int8 linear layer of the backprop baselines: forward and both backward GEMMs in int8.

    forward:  y   = x_q @ W_q^T + b             (B, D) @ (D, N) -> (B, N)
    backward: g_x = g_q @ W_q                   (B, N) @ (N, D) -> (B, D)
              g_W = g_q^T @ x_q                 (N, B) @ (B, D) -> (N, D)
              g_b = sum over B of the float g   (N,)

Every product is int8 x int8 with exact int32 accumulation (ffint8.quant.int8_mm_scaled), scaled
back to float32. x_q and W_q are per tensor: W rounds to nearest, x as BPConfig.act_rounding says
(stochastic by default, unbiased, as FF-INT8 rounds its activations). g_q comes from the layer's
GradQuantizer (ffint8.bp.grad), which is where the baselines differ. The same Int8Layer computes a
convolution too (Int8Layer.conv2d, ffint8.bp.conv), its quantiser seeing g as (B * H * W, C_out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffint8.bp.clip import gram_cosine_distance
from ffint8.bp.conv import Int8ConvFunction
from ffint8.bp.grad import GradQuantizer
from ffint8.nn.conv import conv_kernel, quantize_activation
from ffint8.quant import QTensor, int8_mm_scaled, quantize
from ffint8.quant.conv import ConvKernel, ConvSpec
from ffint8.quant.quantize import dequantize
from ffint8.train.ff import SeedStream


@dataclass
class Int8Layer:
    """One quantised layer's settings and state. Calling it is a linear layer's LinearOp;
    conv2d(x, conv) is a convolution's op (Arith's interface, so ConvNet's blocks take it)."""

    grad: GradQuantizer
    seeds: SeedStream  # shared by all layers of a trainer: one deterministic stream
    kernel: str = "auto"  # an FFConfig.int8_kernel name (GEMM); convolutions use conv_kernel
    act_rounding: str = "stochastic"

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return Int8LinearFunction.apply(x, weight, bias, self)

    def conv2d(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """conv's convolution of x (B, C, H, W) with int8 forward and backward (Int8ConvFunction)."""
        spec = ConvSpec(conv.stride, conv.padding, conv.groups)
        return Int8ConvFunction.apply(x, conv.weight, conv.bias, spec, self)

    @property
    def conv_kernel(self) -> ConvKernel:
        """The int8 convolution kernel that computes as `kernel` does."""
        return conv_kernel(self.kernel)

    def quantize_input(self, x: torch.Tensor) -> QTensor:
        """The layer input in int8, one scale per tensor: stochastic rounding keyed by the next
        seed of the stream, or to nearest, as act_rounding says."""
        seed = self.seeds.next() if self.act_rounding == "stochastic" else None
        return quantize_activation(x.detach().float(), seed)


class Int8LinearFunction(torch.autograd.Function):
    """y = x W^T + b with int8 GEMMs forward and backward; see the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                layer: Int8Layer) -> torch.Tensor:
        x_q = layer.quantize_input(x)
        w_q = quantize(weight.detach(), "nearest")
        y = int8_mm_scaled(x_q.q, x_q.scale, w_q.q.t(), w_q.scale, layer.kernel)  # (B, N) float32
        ctx.save_for_backward(x_q.q, x_q.scale, w_q.q, w_q.scale)
        ctx.layer = layer
        return y.add_(bias)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x_q, x_scale, w_q, w_scale = ctx.saved_tensors
        layer: Int8Layer = ctx.layer
        g = g.contiguous()  # (B, N) float

        gram: list[torch.Tensor] = []  # made on a clip search's first call only

        def weight_distance(g_ref: torch.Tensor, g_hat: torch.Tensor) -> float:
            # cos distance of g_ref^T x and g_hat^T x, x the dequantised input, via x x^T.
            if not gram:
                x = dequantize(x_q, x_scale).double()  # (B, D)
                gram.append(x @ x.t())  # (B, B)
            return gram_cosine_distance(gram[0], g_ref, g_hat)

        ops = layer.grad(g, weight_distance, layer.seeds)
        g_x = None
        if ctx.needs_input_grad[0]:
            gx = ops.for_input
            g_x = int8_mm_scaled(gx.q, gx.scale, w_q, w_scale, layer.kernel)  # (B, D)
        gw = ops.for_weight
        gw_scale = gw.scale.reshape(-1, 1) if gw.scale.dim() else gw.scale  # (N, 1) per channel
        g_w = int8_mm_scaled(gw.q.t(), gw_scale, x_q, x_scale, layer.kernel)  # (N, D)
        g_b = g.sum(0)  # (N,)
        return g_x, g_w, g_b, None


def int8_linear_inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          kernel: str = "auto") -> torch.Tensor:
    """The int8 forward at inference, round to nearest: W per tensor, x one scale per row (so a
    sample's logits do not depend on the other samples of its batch). (B, D) -> (B, N)."""
    x_q = quantize(x, "nearest", channel_dim=0)  # scale (B, 1)
    w_q = quantize(weight.detach(), "nearest")
    return int8_mm_scaled(x_q.q, x_q.scale, w_q.q.t(), w_q.scale, kernel).add_(bias.detach())
