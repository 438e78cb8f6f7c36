"""The int8 linear layer of the backprop baselines: forward and both backward GEMMs in int8.

    forward:  y   = x_q @ W_q^T + b             (B, D) @ (D, N) -> (B, N)
    backward: g_x = g_q @ W_q                   (B, N) @ (N, D) -> (B, D)
              g_W = g_q^T @ x_q                 (N, B) @ (B, D) -> (N, D)
              g_b = sum over B of the float g   (N,)

Every product is int8 x int8 with exact int32 accumulation (ffint8.quant.int8_mm_scaled), scaled
back to float32. x_q and W_q are per tensor: W rounds to nearest, x as BPConfig.act_rounding says
(stochastic by default, unbiased, as FF-INT8 rounds its activations). g_q comes from the layer's
GradQuantizer (ffint8.bp.grad), which is where the baselines differ. A conv op would sit beside
this one with the same Int8Layer and GradQuantizer, passing g as (B * H * W, C_out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ffint8.bp.clip import gram_cosine_distance
from ffint8.bp.grad import GradQuantizer
from ffint8.quant import int8_mm_scaled, quantize
from ffint8.quant.quantize import dequantize
from ffint8.train.ff import SeedStream


@dataclass
class Int8Layer:
    """One quantised linear layer's settings and state; calling it is the layer's LinearOp."""

    grad: GradQuantizer
    seeds: SeedStream  # shared by all layers of a trainer: one deterministic stream
    kernel: str = "auto"
    act_rounding: str = "stochastic"

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return Int8LinearFunction.apply(x, weight, bias, self)


class Int8LinearFunction(torch.autograd.Function):
    """y = x W^T + b with int8 GEMMs forward and backward; see the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                layer: Int8Layer) -> torch.Tensor:
        stochastic = layer.act_rounding == "stochastic"
        x_q = quantize(x, layer.act_rounding, seed=layer.seeds.next() if stochastic else None)
        w_q = quantize(weight, "nearest")
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
