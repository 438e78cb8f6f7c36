"""Per-layer gradient quantisers: what each algorithm quantises, when it searches, its state."""

import math

import pytest
import torch

from ffint8.bp import clip as C
from ffint8.bp.config import BPConfig
from ffint8.bp.grad import GDAI8Grad, PerTensorGrad, UI8Grad, make_grad_quantizer
from ffint8.errors import ConfigError
from ffint8.train.ff import SeedStream

NEAREST = BPConfig(grad_rounding="nearest", search_period=3)


def no_weight_distance(g, g_hat):
    raise AssertionError("this quantiser must not need the weight gradient")


def grad(seed, shape=(32, 48), kind="gauss", draw=None):
    if draw is not None:
        return draw(kind, shape[0] * shape[1], seed).reshape(shape) * 1e-3
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 1e-3


def test_bp_int8_is_per_tensor_absmax_without_clipping():
    g = grad(0)
    ops = PerTensorGrad(NEAREST)(g, no_weight_distance, None)
    assert ops.for_input is ops.for_weight
    assert ops.for_input.scale.item() == pytest.approx(g.abs().max().item() / 127)


def test_bp_int8_stochastic_rounding_follows_the_seed_stream():
    g = grad(0)
    cfg = BPConfig()
    a = PerTensorGrad(cfg)(g, no_weight_distance, SeedStream(5))
    b = PerTensorGrad(cfg)(g, no_weight_distance, SeedStream(5))
    c = PerTensorGrad(cfg)(g, no_weight_distance, SeedStream(6))
    assert torch.equal(a.for_input.q, b.for_input.q)
    assert not torch.equal(a.for_input.q, c.for_input.q)


def test_ui8_searches_every_period_and_keeps_the_ratio_between(draw):
    q = UI8Grad(NEAREST)
    for step in range(7):
        g = grad(step, kind="t2", draw=draw)
        ops = q(g, no_weight_distance, None)
        if step % 3 == 0:  # a search step: the clip is the searched one
            c, _ = C.search_clip(g)
            assert q.clip == pytest.approx(c)
            ratio = c / g.abs().max().item()
        expected = C.quantize_clipped(g, ratio * g.abs().max().item())
        assert torch.equal(ops.for_input.q, expected.q)
        assert q.deviation == pytest.approx(C.cosine_distance(g, expected.dequantize()))
    assert q.step == 7


def test_ui8_absolute_clip_is_kept_in_gradient_units():
    q = UI8Grad(BPConfig(grad_rounding="nearest", search_period=100, ui8_clip="absolute"))
    q(grad(0), no_weight_distance, None)
    clip = q.clip
    g = grad(1) * 10  # ten times larger: the old clip now clips hard
    ops = q(g, no_weight_distance, None)
    assert ops.for_input.scale.item() == pytest.approx(clip / 127)
    assert q.deviation > 0.01


def test_ui8_researches_after_an_all_zero_gradient():
    q = UI8Grad(NEAREST)
    q(torch.zeros(4, 5), no_weight_distance, None)
    assert q.clip == 0.0
    g = grad(1)
    ops = q(g, no_weight_distance, None)  # step 1: not a period boundary, but no usable clip
    assert q.clip > 0
    assert ops.for_input.q.abs().max().item() > 0


def weight_distance_of(x):
    """The explicit weight-gradient distance: both (N, K) gradients formed in full."""
    return lambda g, g_hat: C.cosine_distance(g.t() @ x, g_hat.t() @ x)


@pytest.mark.parametrize("kind, gaussian", [("gauss", True), ("t2", False)])
def test_gdai8_picks_per_tensor_or_per_channel_weight_operand(draw, kind, gaussian):
    g = grad(0, shape=(64, 40), kind=kind, draw=draw)
    x = torch.randn(64, 30, generator=torch.Generator().manual_seed(9))
    q = GDAI8Grad(NEAREST)
    ops = q(g, weight_distance_of(x), None)
    assert q.gaussian is gaussian
    if gaussian:
        assert ops.for_weight.scale.dim() == 0
    else:
        assert ops.for_weight.scale.shape == (1, 40)  # one scale per output channel
    assert ops.for_input.scale.dim() == 0  # g_x always per tensor
    # The searched ratio keeps the weight gradient at least as close as no clipping does.
    def dist(ratio):
        g_hat = q._quantize_weight_operand(g, ratio, "nearest", None).dequantize()
        return C.cosine_distance(g.t() @ x, g_hat.t() @ x)

    assert dist(q.ratio_w) <= dist(1.0)
    assert 1e-3 <= q.ratio_w <= 1.0 and 1e-3 <= q.ratio_x <= 1.0


def test_gdai8_without_input_clip_search_leaves_g_x_unclipped(draw):
    g = grad(0, kind="t2", draw=draw)
    x = torch.randn(32, 8)
    q = GDAI8Grad(BPConfig(grad_rounding="nearest", input_clip_search=False))
    ops = q(g, weight_distance_of(x), None)
    assert q.ratio_x == 1.0
    assert ops.for_input.scale.item() == pytest.approx(g.abs().max().item() / 127)


@pytest.mark.parametrize("algo", ["bp-int8", "bp-ui8", "bp-gdai8"])
def test_state_dict_round_trip(algo):
    x = torch.randn(32, 8)
    a = make_grad_quantizer(algo, NEAREST)
    for step in range(4):
        a(grad(step), weight_distance_of(x), None)
    b = make_grad_quantizer(algo, NEAREST)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() or math.isnan(a.deviation)
    g = grad(10)
    oa, ob = a(g, weight_distance_of(x), None), b(g, weight_distance_of(x), None)
    assert torch.equal(oa.for_weight.q, ob.for_weight.q)
    assert torch.equal(oa.for_input.scale, ob.for_input.scale)


def test_unknown_algo_and_bad_config():
    with pytest.raises(ValueError, match="bp-fp32"):
        make_grad_quantizer("bp-fp32", BPConfig())
    with pytest.raises(ConfigError, match="search_period"):
        BPConfig(search_period=0)
    with pytest.raises(ConfigError, match="grad_rounding"):
        BPConfig(grad_rounding="up")
    with pytest.raises(ConfigError, match="ui8_clip"):
        BPConfig(ui8_clip="fixed")
    with pytest.raises(ConfigError, match="lr_beta"):
        BPConfig(lr_beta=0.0)
    assert BPConfig.from_dict(BPConfig(search_period=7).to_dict()) == BPConfig(search_period=7)
