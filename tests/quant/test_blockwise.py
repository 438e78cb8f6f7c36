"""Block-wise float8 storage: exact block maxima, bounded relative error, unbiased stochastic
rounding, zero blocks, shape errors."""

import pytest
import torch

from ffint8.quant.blockwise import (
    FP8_MAX,
    dequantize_blocks,
    quantize_blocks,
    round_mantissa_stochastic,
    stochastic_noise,
)


def roundtrip(x, block=16, noise=None):
    q, s = quantize_blocks(x, block, noise)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (x.numel() // block,)
    return dequantize_blocks(q, s, block)


def test_block_maxima_are_exact_and_others_within_2_to_minus_4():
    g = torch.Generator().manual_seed(0)
    # magnitudes within 2^6 of each block's maximum: e4m3 normals, 3 mantissa bits
    x = torch.randn(64, generator=g).sign() * 2 ** (torch.rand(64, generator=g) * 6 - 3)
    y = roundtrip(x)
    amax = x.reshape(-1, 16).abs().amax(1)
    assert torch.allclose(y.reshape(-1, 16).abs().amax(1), amax, rtol=1e-6, atol=0)
    assert ((y - x).abs() <= 2**-4 * x.abs() * (1 + 1e-6)).all()
    assert ((y - x).abs() > 0).any()  # it does round


def test_zero_block_and_tiny_values():
    x = torch.zeros(32)
    x[16] = 1.0
    x[17] = 1e-6  # below 2^-9 of its block's maximum: rounds to 0
    y = roundtrip(x)
    assert torch.equal(y[:16], torch.zeros(16))
    assert y[16] == 1.0 and y[17] == 0.0


def test_block_of_subnormal_values_stores_zeros_not_nan():
    # absmax / 448 underflows to 0 here; 0 / 0 would store NaN (a momentum decaying for
    # hundreds of steps ends in such a block)
    x = torch.zeros(32)
    x[:8] = 1e-43  # the rest of the block stays 0: 0 / 0
    x[16] = 1.0
    for noise in (None, torch.zeros(32, dtype=torch.int32)):
        y = roundtrip(x, noise=noise)
        assert torch.isfinite(y).all() and torch.equal(y[:16], torch.zeros(16))


def test_stochastic_rounding_is_unbiased():
    g = torch.Generator().manual_seed(1)
    x = torch.tensor([FP8_MAX / 2, 1.1, -1.1, 0.3, -3.7, 100.3, 0.0, 250.0])  # e4m3-normal range
    n = 20000
    rounded = torch.stack([round_mantissa_stochastic(x, stochastic_noise(len(x), g))
                           for _ in range(n)])
    spacing = 2.0 ** (torch.floor(torch.log2(x.abs().clamp_min(1e-30))) - 3)
    # the mean of n draws, each within one spacing: standard error <= spacing / (2 sqrt(n))
    assert ((rounded.mean(0) - x).abs() <= 4 * spacing / (2 * n**0.5)).all()
    # every draw is one of the two neighbours with 3 mantissa bits
    lo = (x.abs() / spacing).floor() * spacing * x.sign()
    hi = lo + spacing * x.sign()
    assert ((rounded == lo) | (rounded == hi)).all()


def test_stochastic_rounding_never_passes_the_fp8_maximum():
    x = torch.full((256,), FP8_MAX)
    x[1:] = torch.linspace(400, FP8_MAX, 255)
    q, s = quantize_blocks(x, 256, stochastic_noise(256, torch.Generator().manual_seed(2)))
    assert torch.isfinite(q.float()).all() and q.float().abs().max() == FP8_MAX


def test_rejects_lengths_that_are_not_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_blocks(torch.ones(20), 16)
    with pytest.raises(ValueError, match="flat vector"):
        quantize_blocks(torch.ones(4, 16), 16)
