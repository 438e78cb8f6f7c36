"""FF gradients of general units (autograd unit by unit) against train/ff.py's closed form on a
dense-equivalent case, against autograd of each unit's objective on residual blocks, and a tiny
CNN whose FF loss falls."""

import pytest
import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.models import create_model
from ffint8.nn import functional as FF
from ffint8.nn.blocks import BasicBlock, ConvBlock
from ffint8.nn.dense import FFDense
from ffint8.train import ff as dense_ff
from ffint8.train import ff_units
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.ff import SeedStream
from ffint8.train.loop import FFTrainer


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded: many small convolutions, where OpenMP fork/join on a busy 2-core machine
    costs more than the work (see tests/quant/conftest.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def dense_and_conv_units(sizes, seed=0):
    """FFDense units and 1x1 ConvBlocks without a norm holding the same weights (float64)."""
    torch.manual_seed(seed)
    dense = [FFDense(a, b).double() for a, b in zip(sizes[:-1], sizes[1:])]
    conv = [ConvBlock(a, b, k=1, norm="none").double() for a, b in zip(sizes[:-1], sizes[1:])]
    with torch.no_grad():
        for d, c in zip(dense, conv):
            d.weight.mul_(3.0)  # goodness on both sides of theta
            c.block.conv.weight.copy_(d.weight[:, :, None, None])
            c.block.conv.bias.copy_(d.bias)
    return dense, conv


@pytest.mark.parametrize(
    "look_ahead,depth,norm,goodness,loss,peer",
    [
        ("none", None, "rms", "mean", "ff", 0.0),
        ("collab", None, "rms", "mean", "ff", 0.0),
        ("chain", None, "rms", "mean", "ff", 0.0),
        ("chain", 1, "rms", "mean", "ff", 0.0),
        ("chain", 2, "l2", "sum", "ff", 0.0),
        ("collab", None, "l2", "sum", "symba", 0.0),
        ("chain", 2, "rms", "mean", "symba", 0.3),
        ("none", None, "rms", "mean", "ff", 0.3),
    ],
)
def test_1x1_conv_units_match_dense_closed_form(look_ahead, depth, norm, goodness, loss, peer):
    """1x1 convs on 1x1 images are dense units: the autograd step must give train/ff.py's
    gradients and losses, for every look-ahead mode."""
    sizes = [12, 9, 8, 7, 6]
    dense, conv = dense_and_conv_units(sizes)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(10, sizes[0], generator=gen, dtype=torch.float64)
    t = torch.tensor([1.0] * 5 + [0.0] * 5, dtype=torch.float64)
    cfg = FFConfig(algo="ff-fp32", look_ahead=look_ahead, chain_depth=depth, norm=norm,
                   goodness=goodness, theta=2.0 if goodness == "mean" else 6.0, loss=loss,
                   symba_alpha=1.7, peer_weight=peer)
    lam = 0.37
    want = dense_ff.ff_gradients(dense, x, t, cfg, lam, SeedStream(0))
    got = ff_units.ff_gradients(conv, x[:, :, None, None], t, cfg, lam, SeedStream(0))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for l, (d, c) in enumerate(zip(dense, conv)):
        assert d.weight.grad.abs().max() > 1e-6, "degenerate test: no gradient"
        torch.testing.assert_close(c.block.conv.weight.grad[:, :, 0, 0], d.weight.grad, rtol=0,
                                   atol=1e-10, msg=f"unit {l} weight")
        torch.testing.assert_close(c.block.conv.bias.grad, d.bias.grad, rtol=0, atol=1e-10,
                                   msg=f"unit {l} bias")


def residual_units(seed=0):
    torch.manual_seed(seed)
    units = [ConvBlock(2, 4), BasicBlock(4, 4), BasicBlock(4, 6, stride=2), BasicBlock(6, 6)]
    return [u.double() for u in units]


def autograd_objectives(units, x, t, cfg, lam):
    """Gradients of each unit's objective w.r.t. its parameters, from one connected forward."""
    depth = len(units) if cfg.chain_depth is None else cfg.chain_depth
    out = []
    for l, unit in enumerate(units):
        h, goods = x, []
        for u in units:
            h = u(h, cfg.norm)
            goods.append(ff_units.unit_goodness(h, cfg.goodness))
        losses = [FF.unit_loss(g, t, cfg.loss, cfg.theta, cfg.symba_alpha) for g in goods]
        if cfg.look_ahead == "chain":
            later = range(l + 1, min(len(units), l + depth + 1))
            objective = losses[l] + lam * sum(losses[j] for j in later)
        elif cfg.look_ahead == "collab":
            others = sum(g.detach() for j, g in enumerate(goods) if j != l)
            objective = FF.unit_loss(goods[l] + lam * others, t, cfg.loss, cfg.theta,
                                     cfg.symba_alpha)
        else:
            objective = losses[l]
        params = list(unit.parameters())
        out.append(torch.autograd.grad(objective, params))
    return out


@pytest.mark.parametrize("look_ahead,depth", [("none", None), ("collab", None), ("chain", None),
                                              ("chain", 1)])
def test_residual_blocks_match_autograd_of_each_objective(look_ahead, depth):
    """Conv, norm and residual blocks: the one-forward step equals autograd of eq. 3 (chain),
    collab's objective and plain FF, unit by unit (BatchNorm in train mode, float64)."""
    units = residual_units()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 2, 6, 6, generator=gen, dtype=torch.float64)
    t = torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64)
    cfg = FFConfig(algo="ff-fp32", look_ahead=look_ahead, chain_depth=depth, theta=0.8,
                   peer_weight=0.0)  # the objectives above have no peer term
    lam = 0.45
    want = autograd_objectives(units, x, t, cfg, lam)
    ff_units.ff_gradients(units, x, t, cfg, lam, SeedStream(0))
    for l, (unit, grads) in enumerate(zip(units, want)):
        for p, g in zip(unit.parameters(), grads):
            torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-10, msg=f"unit {l}")
        assert max(p.grad.abs().max() for p in unit.parameters()) > 1e-6


def test_chain_reaches_earlier_units():
    """Guards the tests above: with lambda > 0, chain changes the first unit's gradient."""
    grads = {}
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    t = torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64)
    for mode in ("none", "chain"):
        units = residual_units()
        ff_units.ff_gradients(units, x, t, FFConfig(algo="ff-fp32", look_ahead=mode), 0.5,
                              SeedStream(0))
        grads[mode] = units[0].block.conv.weight.grad.clone()
    assert (grads["none"] - grads["chain"]).abs().max() > 1e-6


@pytest.mark.parametrize("look_ahead", ["none", "chain"])
def test_int8_gradients_agree_with_float(look_ahead):
    """The INT8 step's weight gradients agree with the float step's at >= 15 dB (a first-order
    check that the int8 convolutions sit in the right places, backward included)."""
    torch.manual_seed(4)
    m = create_model("resnet18", width=0.25)
    units = list(m.units)[:4]
    x = torch.rand(32, 784)
    t = torch.cat([torch.ones(16), torch.zeros(16)])
    grads = {}
    for algo in ("ff-fp32", "ff-int8"):
        ff_units.ff_gradients(units, x, t, FFConfig(algo=algo, look_ahead=look_ahead), 0.5,
                              SeedStream(0))
        grads[algo] = [u.conv1.conv.weight.grad.clone() for u in units[1:]]
    for l, (gq, gf) in enumerate(zip(grads["ff-int8"], grads["ff-fp32"])):
        snr = 10 * torch.log10(gf.square().sum() / (gq - gf).square().sum())
        assert snr >= 15.0, f"unit {l + 1}: {snr:.1f} dB"


def test_inference_goodness_does_not_depend_on_the_batch():
    """total_goodness uses BatchNorm's running statistics: a sample scores the same alone."""
    m = create_model("resnet18", width=0.125)
    units = list(m.units)
    x = torch.rand(6, 784)
    for algo in ("ff-fp32", "ff-int8"):
        cfg = FFConfig(algo=algo)
        ff_units.ff_gradients(units, x, torch.ones(6), cfg, 0.0, SeedStream(0))  # moves stats
        together = ff_units.total_goodness(units, x, cfg)
        alone = ff_units.total_goodness(units, x[2:3], cfg)
        assert units[1].training, "eval mode must be restored"
        torch.testing.assert_close(alone, together[2:3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["ff-fp32", "ff-int8"])
def test_tiny_cnn_ff_loss_falls(algo):
    """A small ResNet-18 on synthetic 28x28 images: the FF loss falls over a few trainer steps,
    and prediction by goodness runs through the trainer's dispatch."""
    d = load_dataset("synthetic", limit_train=64, limit_test=8)
    x, y = to_float_images(d.train.images), d.train.labels
    torch.manual_seed(0)
    cfg = TrainConfig(model="resnet18", batch_size=16, lr=0.01, epochs=1,
                      ff=FFConfig(algo=algo, look_ahead="chain", lambda_start=0.1))
    tr = FFTrainer(create_model("resnet18", width=0.125), cfg, 10)
    assert not tr.dense
    xb, t = tr._batch(x[:16], y[:16])  # a fixed batch of positives and negatives
    first = ff_units.ff_gradients(tr.units, xb, t, cfg.ff, 0.1, SeedStream(9)).sum()
    for _ in range(2):
        tr.train_epoch(x, y)
    after = ff_units.ff_gradients(tr.units, xb, t, cfg.ff, 0.1, SeedStream(9)).sum()
    assert after < 0.95 * first
    scores = tr.predict_scores(to_float_images(d.test.images))
    assert scores.shape == (8, 10) and bool(torch.isfinite(scores).all())
