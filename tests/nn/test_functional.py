"""Pure FF functions against autograd and their definitions."""

import pytest
import torch
import torch.nn.functional as F

from ffint8.nn import functional as FF


@pytest.mark.parametrize("kind", ["rms", "l2"])
def test_normalize_scale(kind):
    h = torch.rand(5, 12, dtype=torch.float64) * 7
    a, r = FF.normalize(h, kind)
    target = torch.ones(5, dtype=torch.float64)
    got = a.square().mean(1) if kind == "rms" else a.square().sum(1)
    torch.testing.assert_close(got, target)
    assert r.shape == (5, 1)


@pytest.mark.parametrize("kind", ["rms", "l2"])
def test_normalize_backward_matches_autograd(kind):
    torch.manual_seed(1)  # unseeded, a row of nine ReLU zeros (about 1% of draws) fails the l2 case
    h = torch.randn(6, 9, dtype=torch.float64).relu().requires_grad_()
    g = torch.randn(6, 9, dtype=torch.float64)
    a, r = FF.normalize(h, kind)
    (want,) = torch.autograd.grad((a * g).sum(), h)
    got = FF.normalize_backward(g, h.detach(), r.detach(), kind)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_normalize_backward_dead_row_is_finite():
    """A row of zeros (a dead ReLU layer) has no defined gradient of its norm; no NaN either."""
    h = torch.zeros(2, 5, dtype=torch.float64)
    _, r = FF.normalize(h)
    got = FF.normalize_backward(torch.ones(2, 5, dtype=torch.float64), h, r)
    assert torch.isfinite(got).all()


def test_goodness_and_loss_gradient():
    y = torch.rand(4, 10, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    for kind in ("mean", "sum"):
        g = FF.goodness(y, kind)
        loss = FF.ff_loss(g, t, 2.0).sum()
        (want,) = torch.autograd.grad(loss, y)
        got = FF.ff_loss_grad(g.detach(), t, 2.0).unsqueeze(1) * (
            FF.goodness_grad_factor(kind, 10) * y.detach())
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_loss_does_not_overflow():
    g = torch.tensor([1e6, -1e6, 1e6, -1e6])
    t = torch.tensor([1.0, 1.0, 0.0, 0.0])
    loss = FF.ff_loss(g, t, 2.0)
    assert torch.isfinite(loss).all()
    # a positive with huge goodness and a negative with very negative goodness cost nothing
    assert loss[0] == 0 and loss[3] == 0
    assert loss[1] > 1e5 and loss[2] > 1e5


def test_loss_values_match_definition():
    g = torch.tensor([2.5, 1.0])
    pos = FF.ff_loss(g, torch.ones(2), 2.0)
    neg = FF.ff_loss(g, torch.zeros(2), 2.0)
    torch.testing.assert_close(pos, torch.log1p(torch.exp(-(g - 2.0))))
    torch.testing.assert_close(neg, torch.log1p(torch.exp(g - 2.0)))


def test_symba_loss_and_gradient():
    g = torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)  # 2 pairs
    loss = FF.symba_loss(g, 4.0)
    torch.testing.assert_close(loss.detach(), F.softplus(-4.0 * torch.tensor([2.5, -1.0],
                                                                             dtype=torch.float64)))
    (want,) = torch.autograd.grad(loss.sum(), g)
    torch.testing.assert_close(FF.symba_loss_grad(g.detach(), 4.0), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", ["goodness", "normalize"])
def test_feature_maps_keep_their_layout_through_the_backward(fn):
    """A channels_last map: the same values as NCHW, and its gradient comes back channels_last
    (a mixed-layout backward runs the elementwise ops after it far slower)."""
    torch.manual_seed(0)
    y = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    results = {}
    for name, leaf in (("nchw", y.clone()), ("cl", y.contiguous(memory_format=torch.channels_last))):
        # Not a leaf, and the gradient read by a hook: .grad would be copied to t's layout.
        t = leaf.requires_grad_(True) * 1.0
        seen = []
        t.register_hook(seen.append)
        out = FF.goodness(t) if fn == "goodness" else FF.normalize(t)[0]
        weight = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)
        if name == "cl" and out.dim() == 4:  # the gradient from above in the map's own layout
            weight = weight.contiguous(memory_format=torch.channels_last)
        (out * weight).sum().backward()
        results[name] = (out.detach().contiguous(), seen[0])
    torch.testing.assert_close(results["cl"][0], results["nchw"][0])
    torch.testing.assert_close(results["cl"][1], results["nchw"][1])
    g_cl = results["cl"][1]
    assert g_cl.is_contiguous(memory_format=torch.channels_last) and not g_cl.is_contiguous()
    assert results["nchw"][1].is_contiguous()
    expected = (y.square().mean(dim=(1, 2, 3)) if fn == "goodness"
                else y / (y.square().mean(dim=(1, 2, 3), keepdim=True).sqrt() + FF.EPS))
    torch.testing.assert_close(results["nchw"][0], expected)


def test_peer_loss_is_a_mean_over_units():
    """weight * mean_j (m_j - mean m)^2, by hand; the same weight at any width; its gradient
    against autograd."""
    y = torch.tensor([[1.0, 3.0, 0.0, 4.0], [3.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    # m = (2, 2, 0, 2), mean 1.5, deviations (.5, .5, -1.5, .5): squares sum 3, mean 0.75
    assert FF.peer_loss(y, 0.1).item() == pytest.approx(0.075)
    wide = y.repeat(1, 250)  # the same activity pattern over 1000 units
    assert FF.peer_loss(wide, 0.1).item() == pytest.approx(0.075)
    y = y.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(FF.peer_loss(y, 0.3), y)
    torch.testing.assert_close(FF.peer_loss_grad(y.detach(), 0.3), want)
