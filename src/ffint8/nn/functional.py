"""Pure Forward-Forward functions: length normalisation, goodness, the FF loss and their gradients.

Shapes: B samples (positives and negatives stacked), N units. t is 1.0 for positive samples and
0.0 for negative ones. All functions work in any float dtype (float64 in the gradient tests).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Goodness = Literal["mean", "sum"]
Loss = Literal["ff", "symba"]
Norm = Literal["rms", "l2"]
EPS = 1e-8


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as (B, D), read in its own memory order: a view for a contiguous or channels_last t.

    Reducing a channels_last map through this view (not over dims 1..3) matters for the backward:
    the mean's gradient then comes back channels_last too, and the elementwise backward ops
    after it do not mix layouts (measured: ReLU's backward 3x slower on mixed layouts).
    """
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


def normalize(h: torch.Tensor, kind: Norm = "rms") -> tuple[torch.Tensor, torch.Tensor]:
    """Length-normalise each row so no unit can pass its goodness on to the next one.

    "rms": a = h / (sqrt(mean(h^2)) + eps), rows of root-mean-square 1 (Hinton's choice);
    "l2":  a = h / (||h|| + eps), rows of unit length.
    Returns a (B, D) and the per-row norm r (B, 1) that normalize_backward needs. A feature map
    (B, C, H, W) is normalised per sample over all of C*H*W in its own memory layout (no copy for
    channels_last), r then (B, 1, 1, 1).
    """
    rows = _rows(h).square()
    sq = rows.mean(dim=1) if kind == "rms" else rows.sum(dim=1)
    r = sq.sqrt().view(-1, *[1] * (h.dim() - 1))
    return h / (r + EPS), r


def normalize_backward(
    g_a: torch.Tensor, h: torch.Tensor, r: torch.Tensor, kind: Norm = "rms"
) -> torch.Tensor:
    """dL/dh from dL/da for a = h / (r + eps), r = sqrt(sum(h^2) / m), m = D (rms) or 1 (l2).

    da/dh = I / c - h h^T / (m r c^2) with c = r + eps; a zero row (r = 0) has h = 0, so its
    second term vanishes and r is clamped only to avoid 0 / 0.
    """
    m = h.shape[1] if kind == "rms" else 1
    c = r + EPS
    dot = (h * g_a).sum(dim=1, keepdim=True)  # (B, 1)
    return g_a / c - h * (dot / (m * r.clamp_min(EPS) * c * c))


def goodness(y: torch.Tensor, kind: Goodness = "mean") -> torch.Tensor:
    """G = mean (or sum) of squared activities per row: (B, N) -> (B,); a feature map
    (B, C, H, W) over all of C*H*W."""
    rows = _rows(y).square()
    return rows.mean(dim=1) if kind == "mean" else rows.sum(dim=1)


def goodness_grad_factor(kind: Goodness, n: int) -> float:
    """dG/dy = factor * y."""
    return 2.0 / n if kind == "mean" else 2.0


def ff_loss(g_eff: torch.Tensor, t: torch.Tensor, theta: float) -> torch.Tensor:
    """Per-sample FF loss (eqs. 1-2): softplus(theta - G) for positives, softplus(G - theta) for
    negatives. softplus, not log(1 + exp(x)), so large goodness cannot overflow. (B,) -> (B,)."""
    return F.softplus((1.0 - 2.0 * t) * (g_eff - theta))


def ff_loss_grad(g_eff: torch.Tensor, t: torch.Tensor, theta: float) -> torch.Tensor:
    """d ff_loss / dG per sample: sigmoid(G - theta) - t. (B,) -> (B,)."""
    return torch.sigmoid(g_eff - theta) - t


def symba_loss(g_eff: torch.Tensor, alpha: float) -> torch.Tensor:
    """SymBa loss per pair: softplus(-alpha * (G_pos - G_neg)). Rows 0..B-1 of g_eff (2B,) are the
    positives, rows B..2B-1 their negatives (the same images with wrong labels). -> (B,)."""
    b = g_eff.shape[0] // 2
    return F.softplus(-alpha * (g_eff[:b] - g_eff[b:]))


def symba_loss_grad(g_eff: torch.Tensor, alpha: float) -> torch.Tensor:
    """d symba_loss[i] / dG for each row, the pair's loss only: (2B,) -> (2B,)."""
    b = g_eff.shape[0] // 2
    s = alpha * torch.sigmoid(-alpha * (g_eff[:b] - g_eff[b:]))
    return torch.cat([-s, s])


def unit_loss(g_eff: torch.Tensor, t: torch.Tensor, kind: Loss, theta: float,
              alpha: float) -> torch.Tensor:
    """One unit's loss averaged over the batch: eqs. 1-2 ("ff") or SymBa ("symba")."""
    return ff_loss(g_eff, t, theta).mean() if kind == "ff" else symba_loss(g_eff, alpha).mean()


def unit_loss_grad(g_eff: torch.Tensor, t: torch.Tensor, kind: Loss, theta: float,
                   alpha: float) -> torch.Tensor:
    """d unit_loss / dG per row, the batch mean folded in: (2B,) -> (2B,)."""
    if kind == "ff":
        return ff_loss_grad(g_eff, t, theta) / g_eff.shape[0]
    return symba_loss_grad(g_eff, alpha) / (g_eff.shape[0] // 2)


def peer_loss(y: torch.Tensor, weight: float, m: torch.Tensor | None = None) -> torch.Tensor:
    """Peer normalisation as an explicit loss: weight * mean_j (m_j - mean_k m_k)^2 with m_j the
    batch-mean activity of unit j. Pushes every unit towards the layer's average activity, so no
    unit dies or dominates. A mean over the N units, as in the public FF implementation, so a
    weight means the same at any width (a sum made 0.03 N times stronger: every unit of a
    1000-wide layer died in the first epoch). (B, N) -> scalar. m: the batch means (N,) when
    they come from elsewhere (data-parallel ranks: the global batch's)."""
    m = y.mean(dim=0) if m is None else m
    return weight * (m - m.mean()).square().mean()


def peer_loss_grad(y: torch.Tensor, weight: float, m: torch.Tensor | None = None) -> torch.Tensor:
    """d peer_loss / dy: 2 * weight * (m_j - mean m) / (B * N) on every row (the mean's own term
    vanishes because the deviations sum to zero). (B, N) -> (B, N). m as in peer_loss: with the
    global batch's means, a rank's rows get its share of the global batch's gradient times
    B_global / B."""
    m = y.mean(dim=0) if m is None else m
    return peer_grad_col(m, weight, y.shape[0]).expand_as(y)


def peer_grad_col(m: torch.Tensor, weight: float, rows: int) -> torch.Tensor:
    """peer_loss_grad's one row (N,), the same on every row: from the batch means m (N,) of a
    batch of `rows` rows."""
    return (2.0 * weight / (rows * m.numel())) * (m - m.mean())
