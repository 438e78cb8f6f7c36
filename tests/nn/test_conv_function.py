"""Int8Conv2d: forward and hand-written backward against float64 autograd on the same int8 operands."""

import pytest
import torch
import torch.nn.functional as F

import ffint8.nn.conv as conv_fn_module
from ffint8.nn.conv import conv2d_int8, grad_seed, input_grads_only, quantize_activation
from ffint8.quant import quantize
from ffint8.quant.conv import onednn_available

KERNELS = ("auto", "float-exact", "im2col",
           pytest.param("onednn", marks=pytest.mark.skipif(not onednn_available(), reason="no oneDNN")))
# (N, C, H, W, O, k, stride, padding, groups)
CASES = [(3, 4, 9, 7, 6, 3, 1, 1, 1), (2, 6, 8, 9, 6, 3, 2, 1, 6), (2, 4, 7, 7, 8, 1, 2, 0, 2),
         (2, 3, 10, 10, 5, 5, 1, 2, 1)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small convolutions


def tensors(case, seed, channels_last=False, relu=False):
    n, c, h, w, o, k, s, p, g = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    x = x.relu() if relu else x
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c // g, k, k, generator=gen) / (c // g * k * k) ** 0.5
    bias = torch.randn(o, generator=gen)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    grad = torch.randn(n, o, ho, wo, generator=gen)
    return x, weight, bias, grad, dict(stride=s, padding=p, groups=g)


def run_int8(x, weight, bias, grad, conv, **kw):
    x, weight, bias = (t.detach().requires_grad_() for t in (x, weight, bias))
    z = conv2d_int8(x, weight, bias, **conv, **kw)
    z.backward(grad)
    return z.detach(), x.grad, weight.grad, bias.grad


@pytest.mark.parametrize("weight_channel", [False, True], ids=["w-tensor", "w-channel"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_matches_float64_autograd_on_same_operands(case, kernel, weight_channel):
    seed = 1234 + len(kernel)
    x, weight, bias, grad, conv = tensors(case, 7, channels_last=case[-1] == 1, relu=case[0] == 3)
    z, gx, gw, gb = run_int8(x, weight, bias, grad, conv, seed=seed, weight_channel=weight_channel,
                             kernel=kernel)
    # The operands Int8Conv2d must have used, rebuilt here and dequantised exactly to float64.
    x_q = quantize_activation(x, seed)
    w_q = quantize(weight, "nearest", channel_dim=0 if weight_channel else None)
    w_t = quantize(weight, "nearest")  # per tensor: the input-gradient product's weight
    g_q = quantize_activation(grad, grad_seed(seed))
    xd = (x_q.q.double() * x_q.scale.double()).requires_grad_()
    wd = (w_q.q.double() * w_q.scale.double()).requires_grad_()
    wtd = w_t.q.double() * w_t.scale.double()
    gd = g_q.q.double() * g_q.scale.double()
    z_ref = F.conv2d(xd, wd, bias.double(), **conv)
    (gw_ref,) = torch.autograd.grad(z_ref, wd, gd)
    (gx_ref,) = torch.autograd.grad(F.conv2d(xd, wtd, None, **conv), xd, gd)

    def close(a, b):  # float32 rounding of sums of a few hundred terms
        assert a.dtype == torch.float32 and a.shape == b.shape
        torch.testing.assert_close(a.double(), b, rtol=0, atol=2e-6 * float(b.abs().max()))

    close(z, z_ref.detach())
    close(gw, gw_ref)
    close(gx, gx_ref)
    torch.testing.assert_close(gb, grad.sum((0, 2, 3)))


def snr_db(approx, exact):
    return float(10 * torch.log10(exact.pow(2).sum() / (approx - exact).pow(2).sum()))


def test_snr_against_float_conv():
    # 8-bit operands: quantisation noise about 40 dB below the signal for gaussian data.
    x, weight, bias, grad, conv = tensors((8, 16, 12, 12, 16, 3, 1, 1, 1), 3)
    z, gx, gw, gb = run_int8(x, weight, bias, grad, conv, seed=11)
    xf, wf, bf = (t.detach().requires_grad_() for t in (x, weight, bias))
    zf = F.conv2d(xf, wf, bf, **conv)
    zf.backward(grad)
    assert snr_db(z, zf.detach()) > 30
    assert snr_db(gw, wf.grad) > 30
    assert snr_db(gx, xf.grad) > 30


def test_seeded_rounding_is_deterministic_and_unbiased():
    x, weight, bias, grad, conv = tensors(CASES[0], 5)
    a = run_int8(x, weight, bias, grad, conv, seed=1)
    b = run_int8(x, weight, bias, grad, conv, seed=1)
    c = run_int8(x, weight, bias, grad, conv, seed=2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[2], c[2])
    # stochastic rounding is unbiased: the mean over seeds approaches conv(x, w_q)
    w_q = quantize(weight, "nearest")
    target = F.conv2d(x.double(), w_q.dequantize().double(), bias.double(), **conv)
    with torch.no_grad():
        runs = torch.stack([conv2d_int8(x, weight, bias, **conv, seed=s).double() for s in range(64)])
    mean, one = runs.mean(0), runs[0]
    assert (mean - target).abs().max() < 0.25 * (one - target).abs().max()


def test_inference_scales_each_sample_alone():
    x, weight, bias, _, conv = tensors(CASES[1], 6)
    x = x * torch.tensor([1.0, 50.0]).view(2, 1, 1, 1)  # very different ranges per sample
    with torch.no_grad():
        both = conv2d_int8(x, weight, bias, **conv)
        alone = conv2d_int8(x[:1], weight, bias, **conv)
    # Same int8 operands, so equal up to float32 rounding (oneDNN's blocking depends on N); one
    # scale for the batch would have cost sample 0 most of its resolution.
    torch.testing.assert_close(both[:1], alone, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        shared = conv2d_int8(x, weight, bias, **conv, seed=0)
    assert (shared[:1] - alone).abs().max() > 100 * (both[:1] - alone).abs().max() + 1e-3
    # seed None with gradients: nearest rounding, per tensor, deterministic
    _, weight_b, bias_b, grad, conv = tensors(CASES[1], 6)
    r1 = run_int8(x, weight_b, bias_b, grad, conv)
    r2 = run_int8(x, weight_b, bias_b, grad, conv)
    assert all(torch.equal(u, v) for u, v in zip(r1, r2))


def test_no_bias_and_frozen_input():
    x, weight, _, grad, conv = tensors(CASES[2], 8)
    w = weight.clone().requires_grad_()
    z = conv2d_int8(x, w, None, **conv, seed=3)  # x needs no gradient
    z.backward(grad)
    assert w.grad is not None and w.grad.shape == w.shape and x.grad is None


def test_input_grads_only_skips_the_weight_gradient(monkeypatch):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    z = conv2d_int8(x, w, b, padding=1, seed=5)
    g = torch.randn_like(z)
    want = torch.autograd.grad(z, x, g, retain_graph=True)[0]

    def boom(*a, **k):
        raise AssertionError("weight gradient formed inside input_grads_only()")

    monkeypatch.setattr(conv_fn_module, "int8_conv2d_weight_scaled", boom)
    with input_grads_only():
        got = torch.autograd.grad(z, x, g, retain_graph=True)[0]
    assert torch.equal(got, want)  # the same g_q, the same g_x
    with pytest.raises(AssertionError, match="weight gradient formed"):
        torch.autograd.grad(z, w, g)  # outside the block it is formed again
