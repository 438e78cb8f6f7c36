"""The int8 linear Function: exact int8 GEMMs forward and backward, and closeness to float."""

import pytest
import torch

from ffint8.bp import clip as C
from ffint8.bp.config import BPConfig
from ffint8.bp.grad import make_grad_quantizer
from ffint8.bp.linear import Int8Layer, int8_linear_inference
from ffint8.quant import quantize
from ffint8.train.ff import SeedStream

B, D, N = 16, 24, 12

def tensors(seed=0, heavy=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=gen).relu()
    w = torch.randn(N, D, generator=gen) * 0.2
    b = torch.randn(N, generator=gen) * 0.1
    g = torch.randn(B, N, generator=gen) * 1e-2
    if heavy:  # a long-tailed upstream gradient, so GDAI8 goes per channel
        g = g / torch.rand(B, N, generator=gen).clamp_min(1e-3)
    return x, w, b, g


def int64_product(a_q, a_scale, b_q, b_scale):
    """Exact integer product, then the same float scaling as int8_mm_scaled."""
    return (a_q.long() @ b_q.long()).float().mul_(a_scale * b_scale)


@pytest.mark.parametrize("kernel", ["float-exact", "int_mm", "reference"])
@pytest.mark.parametrize("algo, heavy", [("bp-int8", False), ("bp-ui8", False),
                                         ("bp-gdai8", False), ("bp-gdai8", True)])
def test_gemms_are_exact_against_an_int64_reference(kernel, algo, heavy, recorder):
    x, w, b, g = tensors(1, heavy)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    rec = recorder(make_grad_quantizer(algo, BPConfig(search_period=1)))
    layer = Int8Layer(rec, SeedStream(42), kernel)
    y = layer(x, w, b)
    y.backward(g)
    # The forward operands, rebuilt from the same seed stream: x stochastic, W nearest.
    x_q = quantize(x.detach(), "stochastic", seed=SeedStream(42).next())
    w_q = quantize(w.detach(), "nearest")
    y_ref = int64_product(x_q.q, x_q.scale, w_q.q.t(), w_q.scale) + b.detach()
    assert torch.equal(y.detach(), y_ref)
    gx, gw = rec.ops.for_input, rec.ops.for_weight
    assert torch.equal(x.grad, int64_product(gx.q, gx.scale, w_q.q, w_q.scale))  # (B, D)
    gw_scale = gw.scale.reshape(-1, 1) if gw.scale.dim() else gw.scale
    assert torch.equal(w.grad, int64_product(gw.q.t(), gw_scale, x_q.q, x_q.scale))  # (N, D)
    assert torch.equal(b.grad, g.sum(0))  # float: the bias gradient is not quantised
    if algo == "bp-gdai8":
        assert (gw.scale.dim() == 2) is heavy  # per output channel for the long-tailed g


@pytest.mark.parametrize("algo", ["bp-int8", "bp-ui8", "bp-gdai8"])
def test_gradients_are_close_to_float64_autograd(algo):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 200, generator=gen).relu()
    w = torch.randn(100, 200, generator=gen) * 0.07
    b = torch.zeros(100)
    g = torch.randn(64, 100, generator=gen) * 1e-2
    ref = [t.double().requires_grad_(True) for t in (x, w, b)]
    torch.nn.functional.linear(*ref).backward(g.double())
    got = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = Int8Layer(make_grad_quantizer(algo, BPConfig()), SeedStream(0))(*got)
    y.backward(g)
    # 8-bit operands: about 1 % relative error each; the cosine distance is its square / 2.
    assert C.cosine_distance(y.detach(), torch.nn.functional.linear(x, w, b)) < 1e-3
    for r, t in zip(ref, got):
        assert C.cosine_distance(r.grad, t.grad) < 1e-3


def test_no_input_gradient_when_the_input_needs_none(recorder):
    x, w, b, g = tensors()
    w.requires_grad_(True)
    rec = recorder(make_grad_quantizer("bp-int8", BPConfig()))
    Int8Layer(rec, SeedStream(0))(x, w, b).backward(g)
    assert x.grad is None and w.grad is not None and b.grad is None


def test_inference_rounds_to_nearest_per_row_so_rows_do_not_interact():
    x, w, b, _ = tensors(2)
    full = int8_linear_inference(x, w, b)
    alone = torch.cat([int8_linear_inference(x[i : i + 1], w, b) for i in range(B)])
    assert torch.equal(full, alone)
    x_q = quantize(x, "nearest", channel_dim=0)
    w_q = quantize(w, "nearest")
    assert torch.equal(full, int64_product(x_q.q, x_q.scale, w_q.q.t(), w_q.scale) + b)
    assert C.cosine_distance(full, torch.nn.functional.linear(x, w, b)) < 1e-3
