"""The hand-written FF gradients against float64 autograd of each unit's own objective (eq. 3)."""

import pytest
import torch
import torch.nn.functional as F

from ffint8.nn import functional as FF
from ffint8.nn.dense import FFDense
from ffint8.quant import fastsr
from ffint8.train.config import FFConfig
from ffint8.train.ff import SeedStream, ff_gradients


def make_units(sizes, seed=0):
    torch.manual_seed(seed)
    units = [FFDense(a, b).double() for a, b in zip(sizes[:-1], sizes[1:])]
    with torch.no_grad():
        for u in units:  # larger weights so goodness sits on both sides of theta
            u.weight.mul_(3.0)
    return units


def autograd_losses(units, x, t, cfg):
    """Forward without detaching between units; return every unit's loss L_j and goodness G_j."""
    h, losses, goods, ys = x, [], [], []
    for u in units:
        a, _ = FF.normalize(h, cfg.norm)
        y = F.relu(a @ u.weight.t() + u.bias)
        goods.append(FF.goodness(y, cfg.goodness))
        ys.append(y)
        h = y
    for g, y in zip(goods, ys):
        losses.append(FF.unit_loss(g, t, cfg.loss, cfg.theta, cfg.symba_alpha)
                      + FF.peer_loss(y, cfg.peer_weight))
    return losses, goods, ys


def expected_grads(units, x, t, cfg, lam):
    """Autograd, loss by loss, of the objective unit l minimises, w.r.t. unit l's parameters."""
    out = []
    n = len(units)
    depth = n if cfg.chain_depth is None else cfg.chain_depth
    for l, unit in enumerate(units):
        losses, goods, ys = autograd_losses(units, x, t, cfg)
        if cfg.look_ahead == "chain":
            objective = losses[l] + lam * sum(losses[j] for j in range(l + 1, min(n, l + depth + 1)))
        elif cfg.look_ahead == "collab":
            others = sum(g.detach() for j, g in enumerate(goods) if j != l)
            objective = FF.unit_loss(goods[l] + lam * others, t, cfg.loss, cfg.theta,
                                     cfg.symba_alpha) + FF.peer_loss(ys[l], cfg.peer_weight)
        else:
            objective = losses[l]
        gw, gb = torch.autograd.grad(objective, [unit.weight, unit.bias])
        out.append((gw, gb))
    return out


@pytest.mark.parametrize(
    "look_ahead,depth,norm,goodness,loss,peer",
    [
        ("none", None, "rms", "mean", "ff", 0.0),
        ("collab", None, "rms", "mean", "ff", 0.0),
        ("chain", None, "rms", "mean", "ff", 0.0),
        ("chain", 1, "rms", "mean", "ff", 0.0),
        ("chain", 2, "l2", "sum", "ff", 0.0),
        ("collab", None, "l2", "sum", "ff", 0.0),
        ("none", None, "rms", "mean", "symba", 0.0),
        ("collab", None, "rms", "mean", "symba", 0.0),
        ("chain", 2, "rms", "mean", "symba", 0.0),
        ("none", None, "rms", "mean", "ff", 0.3),
        ("chain", None, "rms", "mean", "ff", 0.3),
        ("collab", None, "l2", "mean", "symba", 0.3),
    ],
)
def test_float_gradients_match_autograd(look_ahead, depth, norm, goodness, loss, peer):
    sizes = [12, 9, 8, 7, 6]
    units = make_units(sizes)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(10, sizes[0], generator=gen, dtype=torch.float64)
    t = torch.tensor([1.0] * 5 + [0.0] * 5, dtype=torch.float64)
    theta = 2.0 if goodness == "mean" else 6.0
    cfg = FFConfig(algo="ff-fp32", look_ahead=look_ahead, chain_depth=depth, norm=norm,
                   goodness=goodness, theta=theta, loss=loss, symba_alpha=1.7,
                   peer_weight=peer)
    lam = 0.37
    want = expected_grads(units, x, t, cfg, lam)
    ff_gradients(units, x, t, cfg, lam, SeedStream(0))
    for l, (u, (gw, gb)) in enumerate(zip(units, want)):
        assert gw.abs().max() > 1e-6, "degenerate test: no gradient"
        torch.testing.assert_close(u.weight.grad, gw, rtol=0, atol=1e-10, msg=f"unit {l} weight")
        torch.testing.assert_close(u.bias.grad, gb, rtol=0, atol=1e-10, msg=f"unit {l} bias")


def test_chain_differs_from_none_when_lambda_positive():
    """Guards the test above against a chain that silently does nothing."""
    sizes = [12, 9, 8]
    x = torch.rand(8, 12, dtype=torch.float64)
    t = torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64)
    grads = {}
    for mode in ("none", "chain"):
        units = make_units(sizes)
        ff_gradients(units, x, t, FFConfig(algo="ff-fp32", look_ahead=mode), 0.5, SeedStream(0))
        grads[mode] = units[0].weight.grad.clone()
    assert (grads["none"] - grads["chain"]).abs().max() > 1e-6


def snr_db(estimate, reference):
    noise = (estimate - reference).square().sum()
    return 10 * torch.log10(reference.square().sum() / noise).item()


@pytest.mark.parametrize("look_ahead,channel", [("none", False), ("collab", False),
                                                ("chain", False), ("chain", True)])
def test_int8_weight_gradient_snr(look_ahead, channel):
    """On random data the INT8 path's g_W agrees with the float path at >= 20 dB (with one
    weight scale per unit too, whose scales the chain's input gradient must fold in)."""
    torch.manual_seed(3)
    sizes = [784, 256, 256]
    units_f = [FFDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    units_q = [FFDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    for uf, uq in zip(units_f, units_q):
        with torch.no_grad():
            uf.weight.mul_(4.0)
        uq.load_state_dict(uf.state_dict())
    x = torch.rand(64, sizes[0])
    t = torch.cat([torch.ones(32), torch.zeros(32)])
    lam = 0.3
    ff_gradients(units_f, x, t, FFConfig(algo="ff-fp32", look_ahead=look_ahead), lam, SeedStream(0))
    ff_gradients(units_q, x, t, FFConfig(algo="ff-int8", look_ahead=look_ahead,
                                         weight_channel=channel), lam, SeedStream(0))
    for l, (uf, uq) in enumerate(zip(units_f, units_q)):
        assert snr_db(uq.weight.grad, uf.weight.grad) >= 20.0, f"unit {l}"


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
@pytest.mark.parametrize("look_ahead,depth,norm,goodness,peer", [
    ("none", None, "rms", "mean", 0.03), ("collab", None, "l2", "sum", 0.0),
    ("chain", None, "rms", "mean", 0.03), ("chain", 5, "rms", "sum", 0.0),
    ("chain", 1, "rms", "mean", 0.03),
])
def test_fused_int8_step_matches_the_pytorch_path(monkeypatch, look_ahead, depth, norm,
                                                   goodness, peer):
    """The fused C step (FFDense.forward_fused, fastsr.ff_unit_grad, fastsr.input_grad) gives the
    PyTorch path's losses and gradients. The same seeds draw the same rounding noise; only the
    order of row sums differs, which moves a rare rounding by one step. A chain depth below the
    network's keeps the PyTorch path (its later losses travel as separate signals)."""
    torch.manual_seed(5)
    sizes = [784, 200, 120, 64]
    cfg = FFConfig(algo="ff-int8", look_ahead=look_ahead, chain_depth=depth, norm=norm,
                   goodness=goodness, peer_weight=peer)
    units = [[FFDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])] for _ in range(2)]
    for a, b in zip(*units):
        with torch.no_grad():
            a.weight.mul_(4.0)
        b.load_state_dict(a.state_dict())
    x = torch.rand(64, sizes[0])
    t = torch.cat([torch.ones(32), torch.zeros(32)])
    calls = []
    real = fastsr.ff_unit_grad
    monkeypatch.setattr(fastsr, "ff_unit_grad", lambda *a: calls.append(1) or real(*a))
    fused = ff_gradients(units[0], x, t, cfg, 0.3, SeedStream(9))
    assert len(calls) == (0 if depth == 1 else 3)
    monkeypatch.setattr(FFDense, "forward_fused", lambda *a, **k: None)
    plain = ff_gradients(units[1], x, t, cfg, 0.3, SeedStream(9))
    assert len(calls) == (0 if depth == 1 else 3)  # not called again
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6)
    for l, (a, b) in enumerate(zip(*units)):
        for name in ("weight", "bias"):
            ga, gb = getattr(a, name).grad, getattr(b, name).grad
            assert (ga - gb).norm() <= 1e-3 * gb.norm(), f"unit {l} {name}"
