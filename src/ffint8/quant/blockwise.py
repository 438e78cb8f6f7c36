"""Block-wise 8-bit storage of float32 vectors: float8 (e4m3) codes with one float32 scale per
block, the format of the 8-bit optimiser state (ffint8.train.adam8).

Each block of `block` values is multiplied by 448 / its absolute maximum (e4m3's largest finite
value; the reciprocal of the block's scale, formed once), so its largest value is stored to
within float32's rounding and the others to 3 mantissa bits: a relative error of at most 2^-4
with round-to-nearest, down to 2^-6 of the block's maximum (e4m3's
smallest normal); below that e4m3's subnormals keep fewer bits, and below 2^-9 values round to 0.

Stochastic rounding: a float32 x, read as its int32 bit pattern, gets a uniform integer in
[0, 2^20) added and its low 20 bits cleared. That rounds |x| up to the next value with 3
mantissa bits with probability equal to the dropped fraction (a carry into the exponent gives
the next binade's first value), so E[rounded] = x. Optimiser moments need this: with
round-to-nearest, v <- 0.999 v + 0.001 g^2 lands back on the same e4m3 value and never decays.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SR_BITS = 20  # float32's 23 mantissa bits minus e4m3's 3
TINY = torch.finfo(torch.float32).tiny  # 2^-126


def block_scales(x: torch.Tensor, block: int) -> torch.Tensor:
    """(n,) float32, n a multiple of block -> (n / block,) scales absmax / 448, at least
    float32's smallest normal (so that 1 / scale is finite: a block of values that small, or of
    zeros, stores zeros)."""
    if x.dim() != 1 or x.numel() % block:
        raise ValueError(f"block-wise storage takes a flat vector whose length is a multiple of "
                         f"{block}, got shape {tuple(x.shape)}")
    scale = x.reshape(-1, block).abs().amax(1) / FP8_MAX
    return torch.where(scale >= TINY, scale, TINY)  # NaN (a NaN or Inf in the block) too


def round_mantissa_stochastic(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """float32 x rounded to 3 mantissa bits, up or down with probability by the dropped
    fraction. noise: int32 uniform in [0, 2^20), x's shape."""
    mask = -(1 << SR_BITS)  # ...1111 0000 0000 0000 0000 0000 (int32)
    return ((x.view(torch.int32) + noise) & mask).view(torch.float32)


def quantize_blocks(x: torch.Tensor, block: int,
                    noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) float32 -> ((n,) e4m3 codes, (n / block,) float32 scales). noise: stochastic
    rounding (int32 in [0, 2^20), shape (n,)); None rounds to nearest."""
    scale = block_scales(x, block)
    # times 1 / scale, as the C kernel (csrc/fastquant.c) computes it: one reciprocal a block
    y = (x.reshape(-1, block) * scale.reciprocal()[:, None]).reshape(-1).clamp_(-FP8_MAX, FP8_MAX)
    if noise is not None:
        # |y| <= 448 = 1.75 * 2^8 has 3 mantissa bits, so rounding up cannot pass it
        y = round_mantissa_stochastic(y, noise)
    return y.to(FP8), scale


# The 256 e4m3 values, indexed by their bit patterns: decoding through this table is about 3x
# faster on the CPU than PyTorch's float8 -> float32 conversion.
E4M3_VALUES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()


def dequantize_blocks(codes: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """quantize_blocks' inverse: (n,) e4m3 codes and (n / block,) scales -> (n,) float32."""
    table = E4M3_VALUES if codes.device.type == "cpu" else E4M3_VALUES.to(codes.device)
    values = table.index_select(0, codes.view(torch.uint8).int())
    return (values.view(-1, block) * scale[:, None]).view(-1)


def stochastic_noise(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) int32 uniform in [0, 2^20): the noise quantize_blocks rounds with."""
    return torch.randint(0, 1 << SR_BITS, (n,), dtype=torch.int32, generator=generator)
