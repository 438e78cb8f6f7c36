"""Pure functions for clipped int8 gradients: quantise at a clip, measure direction, search the clip.

UI8 (Zhu et al., CVPR 2020) measures how far quantisation turns a gradient by the cosine distance
d = 1 - cos(g, g_hat), picks the clip c that minimises it (direction-sensitive gradient clipping),
and shrinks a layer's learning rate by max(exp(-alpha d), beta) (deviation-counteractive scaling).
The GDAI8 approximation adds a test of the gradient's shape (Gaussian-like or long-tailed).
Nothing here holds state; ffint8.bp.grad keeps the per-layer clip between searches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ffint8.quant import QTensor, quantize
from ffint8.quant.quantize import Rounding

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...: the golden-section step


def channel_absmax(x: torch.Tensor, channel_dim: int | None = None) -> torch.Tensor:
    """max|x| as float32: 0-d per tensor, or per channel with x's rank (size 1 off channel_dim)."""
    if channel_dim is None:
        return x.abs().amax().float()
    dims = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
    return x.abs().amax(dim=dims, keepdim=True).float()


def quantize_clipped(
    x: torch.Tensor,
    clip: float | torch.Tensor,
    rounding: Rounding = "nearest",
    channel_dim: int | None = None,
    seed: int | None = None,
) -> QTensor:
    """Symmetric int8 with clipping: x clamped to [-c, c], scale c / 127, q in [-127, 127].

    clip: c >= 0 (inf: no clipping), a number or a 0-d tensor (per tensor), or per channel a
    tensor that broadcasts against x with size 1 off channel_dim (as channel_absmax returns).
    The clip in effect is min(c, max|x|) (per channel where per channel): clipping above the
    largest value would clip nothing and only waste levels. rounding "stochastic" draws from
    `seed` (see ffint8.quant.quantize), so equal seeds give equal results.

    >>> q = quantize_clipped(torch.tensor([-3.0, 0.5, 1.0]), 1.0)
    >>> q.q.tolist(), round(q.scale.item() * 127, 6)
    ([-127, 64, 127], 1.0)
    """
    c = torch.as_tensor(clip, dtype=torch.float32, device=x.device)
    if bool((c < 0).any()):  # inf clips nothing; NaN propagates (divergence is reported later)
        raise ValueError(f"clip must be >= 0, got {clip}")
    if channel_dim is None and c.dim() != 0:
        raise ValueError(f"a per-tensor clip must be a number or 0-d tensor, got shape {tuple(c.shape)}")
    x = x.float()
    # After the clamp, max|x| is min(c, max|x|): the absmax scale of quantize is then c_eff / 127.
    clamped = torch.maximum(torch.minimum(x, c), -c)
    return quantize(clamped, rounding, channel_dim=channel_dim, seed=seed)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - cos(a, b) over all elements, in float64: 0 for the same direction, 2 for opposite.

    Computed as |a/|a| - b/|b||^2 / 2, which keeps its precision when a and b nearly agree (the
    usual case: quantisation turns a gradient by 1e-5 .. 1e-2). Two zero tensors are at distance
    0; a zero tensor and a non-zero one at distance 1 (orthogonal).

    >>> cosine_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    1.0
    """
    if a.shape != b.shape:
        raise ValueError(f"cosine_distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.detach().reshape(-1).double()
    b = b.detach().reshape(-1).double()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    return 0.5 * float((a / na - b / nb).square().sum())


def gram_cosine_distance(gram: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """cosine_distance(a^T X, b^T X) for a, b (M, N) and X (M, K), given gram = X X^T (M, M).

    The Frobenius products <a^T X, b^T X> = sum(a * (gram @ b)) cost an (M, M) @ (M, N) product
    instead of two (N, M) @ (M, K) GEMMs and a pass over two (N, K) tensors: the weight-gradient
    distance a clip search evaluates dozens of times. In float64 (1 - cos keeps 1e-12 there).
    """
    gram = gram.double()
    a, b = a.detach().double(), b.detach().double()
    gb = gram @ b  # (M, N)
    ab = float((a * gb).sum())
    aa = float((a * (gram @ a)).sum())
    bb = float((b * gb).sum())
    if aa <= 0.0 or bb <= 0.0:
        return 0.0 if aa <= 0.0 and bb <= 0.0 else 1.0
    return max(0.0, 1.0 - ab / math.sqrt(aa * bb))


def search_ratio(
    objective: Callable[[float], float],
    ratio_min: float = 1e-3,
    grid: int = 24,
    refine: int = 16,
) -> tuple[float, float]:
    """Minimise objective(r) over r in [ratio_min, 1]: (best r, its objective).

    A coarse grid of `grid` log-spaced points (clip ratios of heavy-tailed gradients span orders
    of magnitude), then `refine` golden-section steps in log r between the best point's
    neighbours. Deterministic; the best of all evaluated points is returned (the first on ties),
    so the result is never worse than the grid's.
    """
    if not 0 < ratio_min < 1 or grid < 3 or refine < 0:
        raise ValueError(f"need 0 < ratio_min < 1, grid >= 3, refine >= 0; got {ratio_min}, {grid}, "
                         f"{refine}")
    lo_log = math.log(ratio_min)
    logs = [lo_log * (1.0 - i / (grid - 1)) for i in range(grid)]  # ratio_min .. 1 (log 1 = 0)
    values = [objective(math.exp(t)) for t in logs]
    i = min(range(grid), key=values.__getitem__)
    best_t, best_v = logs[i], values[i]
    a, b = logs[max(i - 1, 0)], logs[min(i + 1, grid - 1)]
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = objective(math.exp(c)), objective(math.exp(d))
    for _ in range(refine):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = objective(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = objective(math.exp(d))
    for t, v in ((c, fc), (d, fd)):
        if v < best_v:
            best_t, best_v = t, v
    return math.exp(best_t), best_v


def search_clip(
    g: torch.Tensor, ratio_min: float = 1e-3, grid: int = 24, refine: int = 16
) -> tuple[float, float]:
    """UI8's direction-sensitive clip: c in (0, max|g|] minimising cosine_distance(g, g_hat(c)).

    g_hat(c) is g clipped at c, quantised per tensor with round-to-nearest (deterministic) and
    dequantised. Returns (c, the distance at c); (0, 0) for an all-zero g.
    """
    amax = float(g.abs().amax())
    if amax == 0.0 or not math.isfinite(amax):
        return (0.0, 0.0) if amax == 0.0 else (amax, float("nan"))
    g = g.float()

    def distance(ratio: float) -> float:
        return cosine_distance(g, quantize_clipped(g, ratio * amax).dequantize())

    ratio, dist = search_ratio(distance, ratio_min, grid, refine)
    return ratio * amax, dist


def lr_scale(deviation: float, alpha: float = 20.0, beta: float = 0.1) -> float:
    """UI8's deviation-counteractive factor max(exp(-alpha d), beta) for a layer's learning rate.

    d: the cosine distance between the layer's gradient and its quantised version. 1 at d = 0,
    falling as the quantised gradient turns away, never below the floor beta.

    >>> lr_scale(0.0), lr_scale(1.0)
    (1.0, 0.1)
    """
    return max(math.exp(-alpha * deviation), beta)


def tail_fraction(g: torch.Tensor) -> float:
    """P(|g - mean| > std) over all elements (population std): 0.317 for a Gaussian, 0.243 for a
    Laplace, smaller for sharper, longer-tailed shapes (and 0 for a constant tensor)."""
    g = g.detach().double()
    centred = g - g.mean()
    std = centred.square().mean().sqrt()
    return float((centred.abs() > std).double().mean())


def is_gaussian_like(g: torch.Tensor, threshold: float = 0.3) -> bool:
    """DAI8's shape test: Gaussian-like when tail_fraction(g) > threshold, else sharp and
    long-tailed. A constant tensor counts as Gaussian-like (one scale serves it)."""
    g = g.detach()
    if g.numel() == 0 or bool((g == g.reshape(-1)[0]).all()):
        return True
    return tail_fraction(g) > threshold


def clip_per_tensor(g: torch.Tensor, ratio: float) -> torch.Tensor:
    """ratio * max|g| as a 0-d float32 tensor."""
    return channel_absmax(g) * ratio


def clip_per_channel(g: torch.Tensor, ratio: float, channel_dim: int) -> torch.Tensor:
    """ratio * max|g| per channel, shaped to broadcast against g (size 1 off channel_dim)."""
    return channel_absmax(g, channel_dim) * ratio


__all__ = [
    "channel_absmax", "clip_per_channel", "clip_per_tensor", "cosine_distance", "gram_cosine_distance",
    "is_gaussian_like", "lr_scale", "quantize_clipped", "search_clip", "search_ratio",
    "tail_fraction",
]
