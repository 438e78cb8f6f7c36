"""Symmetric int8 quantisation: round-to-nearest or stochastic rounding, per tensor or per channel.

A float tensor x is represented as q * scale with q int8 in [-127, 127] and scale = absmax / 127
(no zero point). Stochastic rounding rounds x / scale down or up with probability equal to the
fractional part, so E[q * scale] = x exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ffint8.quant import fastsr

QMAX = 127
TINY = torch.finfo(torch.float32).tiny  # smallest normal float32: the least scale used
Rounding = Literal["nearest", "stochastic"]


@dataclass(frozen=True)
class QTensor:
    """An int8 tensor and the float32 scale that maps it back: x ~= q * scale.

    scale is a 0-d tensor (per tensor) or has q's rank with size 1 on every dim but the channel
    dim (per channel), so that q * scale broadcasts.
    """

    q: torch.Tensor
    scale: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale)


def absmax_scale(x: torch.Tensor, channel_dim: int | None = None) -> torch.Tensor:
    """scale = max|x| / 127, per tensor (0-d) or per channel (keepdim); 1.0 where x is all zero."""
    if channel_dim is None:
        amax = x.abs().amax()
    else:
        dims = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
        amax = x.abs().amax(dim=dims, keepdim=True)
    amax = amax.float()
    # An all-zero tensor (a dead ReLU layer, a zero gradient) quantises to zeros with any scale;
    # NaN stays NaN (divergence is reported, not hidden); the floor keeps 1 / scale finite.
    scale = (amax / QMAX).clamp_min(TINY)
    return torch.where(amax == 0, torch.ones_like(amax), scale)


def round_nearest(x_scaled: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even): error at most half a step."""
    return torch.round(x_scaled).clamp_(-QMAX, QMAX).to(torch.int8)


def round_stochastic(x_scaled: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """floor(v + u), u ~ U[0, 1): rounds up with probability frac(v); unbiased; reference path."""
    u = torch.rand(x_scaled.shape, generator=generator, device=x_scaled.device, dtype=x_scaled.dtype)
    return torch.floor(x_scaled + u).clamp_(-QMAX, QMAX).to(torch.int8)


def quantize(
    x: torch.Tensor,
    rounding: Rounding = "nearest",
    channel_dim: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> QTensor:
    """Quantise a float tensor symmetrically to int8.

    rounding: "nearest" (error at most half a step) or "stochastic" (unbiased).
    channel_dim: None for one scale per tensor, else one scale per index along that dim.
    For stochastic rounding, give either `seed` (a 64-bit integer; uses the fused counter-based
    kernel when it is available for x's device, else torch.rand seeded from it) or `generator`
    (always the plain torch.rand path). Per-tensor round-to-nearest uses the fused kernel too;
    its ties round up rather than to even (both within half a step). Round-to-nearest with one
    scale per row of a 2-D tensor (channel_dim 0, as inference quantises activations) uses a
    fused kernel that gives the plain path's values, ties to even; a row holding a NaN or Inf
    gets a NaN scale.
    """
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', not {rounding!r}")
    x = x.float()
    fused_ok = channel_dim is None and generator is None
    if fused_ok and (rounding == "nearest" or seed is not None):
        fused = fastsr.quantize_per_tensor(x.contiguous(), seed if rounding == "stochastic" else None)
        if fused is not None:
            return QTensor(*fused)
    if rounding == "nearest" and x.dim() == 2 and channel_dim in (0, -2):  # one scale per row
        fused = fastsr.quantize_rows_nearest(x.contiguous())
        if fused is not None:
            return QTensor(*fused)
    if rounding == "stochastic" and generator is None and seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
    scale = absmax_scale(x, channel_dim)
    scaled = x / scale
    if rounding == "nearest":
        q = round_nearest(scaled)
    else:
        q = round_stochastic(scaled, generator)
    return QTensor(q, scale)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q (int8 or int32) times its scale, as float32."""
    return q.float() * scale
