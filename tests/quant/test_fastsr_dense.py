"""The fused pieces of the FF-INT8 dense step (fastsr.normalize_quantize, dense_epilogue,
ff_unit_grad, input_grad; csrc/fastquant.c) against the PyTorch operations they replace: the
same values wherever a value is computed elementwise, row and column sums to the last places."""

import math

import pytest
import torch

from ffint8.nn import functional as FF
from ffint8.quant import fastsr

pytestmark = pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")

SHAPES = [(64, 784), (7, 1000), (5, 37), (1, 1)]  # columns that are not whole 16-lane vectors


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("l2", [False, True])
def test_normalize_quantize_is_normalize_then_stochastic_rounding(shape, l2):
    h = torch.randn(shape, generator=gen(1)) * 3
    h[0] = 0.0  # a zero row: r = 0, its a = 0
    r, q, scale = fastsr.normalize_quantize(h, l2, FF.EPS, seed=11)
    a_ref, r_ref = FF.normalize(h, "l2" if l2 else "rms")
    assert r.shape == r_ref.shape
    torch.testing.assert_close(r, r_ref, rtol=2e-6, atol=0)
    # given its own norms, exactly the per-tensor quantiser's rounding of h / (r + eps)
    q_ref, scale_ref = fastsr.quantize_per_tensor(h / (r + FF.EPS), 11)
    assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)
    if shape[0] > 1:
        assert q[0].abs().sum() == 0 and q.abs().max() == 127
        # unbiased: the rounding error averages out
        err = (q.float() * scale - a_ref)[1:]
        assert err.abs().max() <= scale * (1 + 1e-5)
        if err.numel() > 10_000:
            assert abs(err.mean().item()) < 0.01 * scale.item()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_normalize_quantize_reports_a_non_finite_input(bad):
    h = torch.randn(4, 20, generator=gen(2))
    h[3, 5] = bad
    r, q, scale = fastsr.normalize_quantize(h, False, FF.EPS, seed=1)
    assert math.isnan(scale.item()) and q.abs().sum() == 0


def test_normalize_quantize_of_zeros_has_scale_one():
    r, q, scale = fastsr.normalize_quantize(torch.zeros(3, 8), False, FF.EPS, seed=1)
    assert scale.item() == 1.0 and q.abs().sum() == 0 and r.abs().sum() == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_epilogue_is_scale_bias_relu(shape):
    g = gen(3)
    acc = torch.randint(-60_000, 60_000, shape, dtype=torch.int32, generator=g)
    a_scale, w_scale = torch.tensor(0.0123), torch.tensor(3.1e-4)
    bias = torch.randn(shape[1], generator=g)
    y, sumsq, colsum = fastsr.dense_epilogue(acc, a_scale, w_scale, bias)
    ref = acc.float().mul_(a_scale * w_scale).add_(bias).relu_()
    assert torch.equal(y, ref)
    assert y.numel() < 10 or ((y == 0).any() and (y > 0).any())
    torch.testing.assert_close(sumsq, ref.square().sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(colsum, ref.sum(0), rtol=1e-5, atol=1e-5)


def test_dense_epilogue_keeps_nan_for_the_divergence_check():
    acc = torch.ones(3, 4, dtype=torch.int32)
    bias = torch.tensor([0.0, float("nan"), -5.0, 1.0])
    y, sumsq, _ = fastsr.dense_epilogue(acc, torch.tensor(1.0), torch.tensor(1.0), bias)
    assert y[:, 1].isnan().all() and sumsq.isnan().all()
    assert torch.equal(y[:, 2], torch.zeros(3)) and torch.equal(y[:, 3], torch.full((3,), 2.0))


def test_dense_epilogue_refuses_what_it_cannot_take():
    bias, s = torch.zeros(4), torch.tensor(1.0)
    assert fastsr.dense_epilogue(torch.ones(3, 4, dtype=torch.int64), s, s, bias) is None
    assert fastsr.dense_epilogue(torch.ones(3, 4, dtype=torch.int32), torch.ones(1, 4), s,
                                 bias) is None  # per-column weight scales: not this kernel's
    assert fastsr.dense_epilogue(torch.ones(3, 5, dtype=torch.int32), s, s, bias) is None


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("peer", [False, True])
@pytest.mark.parametrize("sig", [False, True])
@pytest.mark.parametrize("down", [False, True])
def test_ff_unit_grad_is_the_pytorch_formula(shape, peer, sig, down):
    g = gen(4)
    y = torch.randn(shape, generator=g).relu_()
    crow = torch.randn(shape[0], generator=g)
    pcol = torch.randn(shape[1], generator=g) if peer else None
    s = torch.randn(shape, generator=g) if sig else None
    lam = 0.3
    gz, amax, d, amax_d, bias = fastsr.ff_unit_grad(y, crow, pcol, s, lam, down)
    mask = y > 0
    own = crow.unsqueeze(1) * y
    if peer:
        own = own + pcol.expand_as(y) * mask
    ref, ref_down = own, own
    if sig:
        ref = own + lam * (s * mask)
        ref_down = s * mask + own
    assert torch.equal(gz, ref)
    assert amax == gz.abs().max().item()
    torch.testing.assert_close(bias, ref.sum(0), rtol=1e-5, atol=1e-5)
    if down:
        assert torch.equal(d, ref_down) and amax_d == d.abs().max().item()
    else:
        assert d is None


def test_ff_unit_grad_refuses_mismatched_shapes():
    y = torch.rand(4, 6)
    assert fastsr.ff_unit_grad(y, torch.ones(3), None, None, 0.1, False) is None
    assert fastsr.ff_unit_grad(y, torch.ones(4), torch.ones(5), None, 0.1, False) is None
    assert fastsr.ff_unit_grad(y, torch.ones(4), None, torch.ones(4, 5), 0.1, False) is None
    assert fastsr.ff_unit_grad(y.double(), torch.ones(4), None, None, 0.1, False) is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["rms", "l2"])
def test_input_grad_is_normalize_backward_of_the_scaled_accumulator(shape, kind):
    g = gen(5)
    h = torch.randn(shape, generator=g) * 2
    h[0] = 0.0  # r = 0: the clamp
    _, r = FF.normalize(h, kind)
    acc = torch.randint(-3000, 3000, shape, dtype=torch.int32, generator=g)
    s_scale, w_scale = torch.tensor(2.1e-3), torch.tensor(4.4e-4)
    m = shape[1] if kind == "rms" else 1
    out = fastsr.input_grad(acc, s_scale, w_scale, h, r, m, FF.EPS)
    ref = FF.normalize_backward(acc.float().mul_(s_scale * w_scale), h, r, kind)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    # the zero row has no second term: g / eps exactly
    assert torch.equal(out[0], ref[0])
