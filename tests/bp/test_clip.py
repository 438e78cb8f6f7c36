"""Clipped quantisation, cosine distance, the clip search, the lr factor and the shape test."""

import math

import pytest
import torch

from ffint8.bp import clip as C


def test_quantize_clipped_clamps_and_scales_by_the_clip():
    x = torch.tensor([-3.0, -0.6, 0.25, 1.0, 2.0])
    q = C.quantize_clipped(x, 1.0)
    assert q.scale.item() == pytest.approx(1.0 / 127)
    assert q.q.tolist() == [-127, -76, 32, 127, 127]  # -0.6 * 127 = -76.2, 0.25 * 127 = 31.75
    assert q.q.dtype == torch.int8


def test_a_clip_above_the_max_clips_nothing_and_wastes_no_levels():
    x = torch.tensor([-0.5, 0.25])
    q = C.quantize_clipped(x, 10.0)
    assert q.scale.item() == pytest.approx(0.5 / 127)
    assert q.q.tolist() == [-127, 64]


def test_per_channel_clip_gives_one_scale_per_column():
    x = torch.tensor([[4.0, 0.1], [-1.0, -0.2]])  # (M=2, N=2), channels are columns
    clip = torch.tensor([[2.0, 1.0]])  # (1, N): column 2's max 0.2 is below its clip
    q = C.quantize_clipped(x, clip, channel_dim=1)
    assert q.scale.shape == (1, 2)
    assert q.scale[0].tolist() == pytest.approx([2.0 / 127, 0.2 / 127])
    assert q.q[:, 0].tolist() == [127, -64]
    assert q.q[:, 1].tolist() == [64, -127]


def test_quantize_clipped_rejects_a_negative_clip():
    with pytest.raises(ValueError, match="clip must be >= 0"):
        C.quantize_clipped(torch.ones(3), -1.0)


def test_stochastic_rounding_is_unbiased_inside_the_clip_and_seeded():
    x = torch.full((200_000,), 0.3)  # 0.3 * 127 = 38.1: rounds up 10 % of the time
    q = C.quantize_clipped(torch.cat([x, torch.tensor([5.0])]), 1.0, "stochastic", seed=7)
    mean = q.dequantize()[:-1].mean().item()
    # std of the mean: sqrt(0.1 * 0.9 / 2e5) steps = 6.7e-4 * (1/127); allow 5 sigma
    assert mean == pytest.approx(0.3, abs=5 * 6.7e-4 / 127)
    again = C.quantize_clipped(torch.cat([x, torch.tensor([5.0])]), 1.0, "stochastic", seed=7)
    assert torch.equal(q.q, again.q)
    assert q.q[-1].item() == 127  # the clipped value


def test_cosine_distance_known_values():
    a = torch.tensor([1.0, 0.0])
    assert C.cosine_distance(a, torch.tensor([3.0, 0.0])) == pytest.approx(0.0, abs=1e-15)
    assert C.cosine_distance(a, torch.tensor([0.0, 2.0])) == pytest.approx(1.0)
    assert C.cosine_distance(a, torch.tensor([-1.0, 0.0])) == pytest.approx(2.0)
    assert C.cosine_distance(a, torch.tensor([1.0, 1.0])) == pytest.approx(1 - math.sqrt(0.5))
    assert C.cosine_distance(torch.zeros(3), torch.zeros(3)) == 0.0
    assert C.cosine_distance(torch.zeros(3), torch.ones(3)) == 1.0


def test_cosine_distance_keeps_precision_for_nearly_equal_tensors():
    a = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    b = a + 1e-4 * torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    ref = 1 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()
    assert C.cosine_distance(a, b) == pytest.approx(ref, rel=1e-3)  # ref ~ 5e-9


def test_gram_cosine_distance_equals_the_explicit_weight_gradient_distance():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 300, generator=gen).relu()  # (M, K) layer input
    a = torch.randn(32, 50, generator=gen)  # (M, N) gradient
    b = a + 0.01 * torch.randn(32, 50, generator=gen)
    gram = x.double() @ x.double().t()
    for u, v in ((a, b), (a, -a), (a, torch.randn(32, 50, generator=gen))):
        explicit = C.cosine_distance(u.double().t() @ x.double(), v.double().t() @ x.double())
        assert C.gram_cosine_distance(gram, u, v) == pytest.approx(explicit, rel=1e-9, abs=1e-14)
    assert C.gram_cosine_distance(gram, a, a) == pytest.approx(0.0, abs=1e-12)
    assert C.gram_cosine_distance(gram, torch.zeros_like(a), a) == 1.0


def test_search_ratio_finds_the_minimum_of_a_known_function():
    calls = []

    def f(r):
        calls.append(r)
        return (math.log(r) - math.log(0.037)) ** 2

    r, v = C.search_ratio(f, ratio_min=1e-3, grid=24, refine=16)
    assert r == pytest.approx(0.037, rel=1e-3)
    assert v == pytest.approx(0.0, abs=1e-6)
    assert len(calls) == 24 + 2 + 16
    assert min(calls) == pytest.approx(1e-3) and max(calls) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["gauss", "laplace", "t2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_search_clip_matches_a_brute_force_grid(draw, kind, seed):
    """The search's distance is within 0.5 % of the best of 400 evenly spaced clips, and its clip
    within 3 % of max|g| of that grid's argmin (the minimum is flat there)."""
    g = draw(kind, 16_384, seed) * 1e-3  # gradient-sized values
    amax = g.abs().max().item()
    clips = [amax * k / 400 for k in range(1, 401)]
    dists = [C.cosine_distance(g, C.quantize_clipped(g, c).dequantize()) for c in clips]
    k = min(range(len(clips)), key=dists.__getitem__)
    c, d = C.search_clip(g)
    assert 0 < c <= amax
    assert d == pytest.approx(C.cosine_distance(g, C.quantize_clipped(g, c).dequantize()))
    assert d <= dists[k] * 1.005
    assert abs(c - clips[k]) <= 0.03 * amax
    assert d < dists[-1]  # clipping beats no clipping on these shapes


def test_search_clip_of_a_zero_gradient():
    assert C.search_clip(torch.zeros(10)) == (0.0, 0.0)


def test_lr_scale_formula():
    assert C.lr_scale(0.0) == 1.0
    assert C.lr_scale(0.01) == pytest.approx(math.exp(-0.2))
    assert C.lr_scale(0.05, alpha=10.0) == pytest.approx(math.exp(-0.5))
    assert C.lr_scale(0.2) == 0.1  # exp(-4) = 0.018 is below the floor
    assert C.lr_scale(2.0) == 0.1
    assert C.lr_scale(0.2, beta=0.01) == pytest.approx(math.exp(-4.0))
    values = [C.lr_scale(d / 1000) for d in range(200)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing in d


@pytest.mark.parametrize("kind, expected, gaussian", [
    ("gauss", 0.3173, True), ("laplace", math.exp(-math.sqrt(2)), False), ("t2", None, False),
])
def test_shape_test_tells_gaussian_from_long_tailed(draw, kind, expected, gaussian):
    g = draw(kind, 50_000, 3) * 1e-4 + 2e-5  # an offset: the test centres on the mean
    p = C.tail_fraction(g)
    if expected is not None:
        assert p == pytest.approx(expected, abs=0.01)  # binomial std 0.002
    else:
        assert p < 0.2
    assert C.is_gaussian_like(g, 0.3) is gaussian


def test_shape_test_threshold_and_constant_tensor():
    g = torch.randn(50_000, generator=torch.Generator().manual_seed(0))
    assert C.is_gaussian_like(g, 0.3) and not C.is_gaussian_like(g, 0.35)
    assert C.is_gaussian_like(torch.full((10,), 0.5))
