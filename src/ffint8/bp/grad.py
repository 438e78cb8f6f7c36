"""How each int8 baseline quantises a layer's activation gradient, and the state it keeps.

A quantiser sees the float gradient g at the layer's output, (M, N) with N output channels (M = B
rows for a dense layer; a conv layer passes (B * H * W, C_out)), and returns the int8 operands
of the two backward GEMMs: one for g_x (always one scale per tensor, since g_x sums over N) and
one for g_W (per tensor, or per output channel: g_W's rows are the channels). They are the same
QTensor when one quantisation serves both.

- bp-int8:  per tensor, no clipping.
- bp-ui8:   per tensor, clipped at the layer's clip c, searched every P iterations for the least
            cosine distance of g (direction-sensitive clipping); the cosine distance of the
            quantised g is kept for the learning-rate scaling.
- bp-gdai8: every P iterations, test whether g is Gaussian-like or long-tailed and search the clip
            ratio that keeps the quantised WEIGHT gradient closest in direction to the float one;
            the g_W operand is per tensor (Gaussian-like) or per output channel (long-tailed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ffint8.bp import clip as C
from ffint8.bp.config import BPConfig
from ffint8.quant import QTensor, quantize
from ffint8.train.ff import SeedStream

# (g, g_hat), both (M, N) float -> the cosine distance between the weight gradients they give
# (against the same layer input): what GDAI8's clip search minimises.
WeightDistance = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass(frozen=True)
class GradOperands:
    """The quantised gradient, (M, N) int8, for each backward GEMM."""

    for_input: QTensor  # one 0-d scale: feeds g_x = g_q @ W_q
    for_weight: QTensor  # 0-d scale, or (1, N) per output channel: feeds g_W = g_q^T @ x_q


class GradQuantizer:
    """Base: a per-layer object, called once per backward. `step` counts calls; `deviation` is
    the cosine distance between g and its quantised g_x operand at the last call (NaN when the
    algorithm does not measure it)."""

    def __init__(self, cfg: BPConfig) -> None:
        self.cfg = cfg
        self.step = 0
        self.deviation = math.nan

    def _seed(self, seeds: SeedStream | None) -> int | None:
        if self.cfg.grad_rounding == "nearest" or seeds is None:
            return None
        return seeds.next()

    def _round(self) -> str:
        return self.cfg.grad_rounding

    def __call__(self, g: torch.Tensor, weight_distance: WeightDistance,
                 seeds: SeedStream | None) -> GradOperands:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"step": self.step, "deviation": self.deviation}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.deviation = float(state["deviation"])


class PerTensorGrad(GradQuantizer):
    """bp-int8: one absmax scale per tensor, no clipping."""

    def __call__(self, g, weight_distance, seeds):
        q = quantize(g, self._round(), seed=self._seed(seeds))
        self.step += 1
        return GradOperands(q, q)


class UI8Grad(GradQuantizer):
    """bp-ui8: per tensor, clipped at `clip` (absolute, in gradient units), re-searched every
    search_period calls; `deviation` feeds lr_scale."""

    def __init__(self, cfg: BPConfig) -> None:
        super().__init__(cfg)
        self.clip: float | None = None
        self.ratio = 1.0  # clip / max|g| at the last search

    def __call__(self, g, weight_distance, seeds):
        cfg = self.cfg
        if not self.clip or self.step % cfg.search_period == 0:  # None or 0 (an all-zero g)
            self.clip, _ = C.search_clip(g, cfg.ratio_min, cfg.search_grid, cfg.search_refine)
            self.ratio = self.clip / float(g.abs().amax()) if self.clip else 1.0
        clip = self.clip if cfg.ui8_clip == "absolute" else C.clip_per_tensor(g, self.ratio)
        q = C.quantize_clipped(g, clip, self._round(), seed=self._seed(seeds))
        self.deviation = C.cosine_distance(g, q.dequantize())
        self.step += 1
        return GradOperands(q, q)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "clip": self.clip, "ratio": self.ratio}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.clip = None if state["clip"] is None else float(state["clip"])
        self.ratio = float(state["ratio"])


class GDAI8Grad(GradQuantizer):
    """bp-gdai8 (an approximation, docs/baselines.md). Between searches it keeps the shape
    (`gaussian`) and two clip ratios relative to the current max|g|: `ratio_w` for the g_W operand
    (per tensor or per channel), `ratio_x` for the g_x operand (per tensor)."""

    def __init__(self, cfg: BPConfig) -> None:
        super().__init__(cfg)
        self.gaussian: bool | None = None
        self.ratio_w = 1.0
        self.ratio_x = 1.0

    def _weight_clip(self, g: torch.Tensor, ratio: float) -> torch.Tensor:
        if self.gaussian:
            return C.clip_per_tensor(g, ratio)
        return C.clip_per_channel(g, ratio, channel_dim=1)

    def _quantize_weight_operand(self, g, ratio, rounding, seed) -> QTensor:
        channel_dim = None if self.gaussian else 1
        return C.quantize_clipped(g, self._weight_clip(g, ratio), rounding, channel_dim, seed)

    def _search(self, g: torch.Tensor, weight_distance: WeightDistance) -> None:
        cfg = self.cfg
        self.gaussian = C.is_gaussian_like(g, cfg.gaussian_threshold)

        def distance(ratio: float) -> float:
            g_hat = self._quantize_weight_operand(g, ratio, "nearest", None).dequantize()
            return weight_distance(g, g_hat)

        self.ratio_w, _ = C.search_ratio(distance, cfg.ratio_min, cfg.search_grid, cfg.search_refine)
        self.ratio_x = 1.0
        amax = float(g.abs().amax())
        if cfg.input_clip_search and amax > 0:
            clip, _ = C.search_clip(g, cfg.ratio_min, cfg.search_grid, cfg.search_refine)
            self.ratio_x = clip / amax

    def __call__(self, g, weight_distance, seeds):
        if self.gaussian is None or self.step % self.cfg.search_period == 0:
            self._search(g.float(), weight_distance)
        rounding = self._round()
        q_x = C.quantize_clipped(g, C.clip_per_tensor(g, self.ratio_x), rounding,
                                 seed=self._seed(seeds))
        if self.gaussian and self.ratio_w == self.ratio_x:
            q_w = q_x
        else:
            q_w = self._quantize_weight_operand(g, self.ratio_w, rounding, self._seed(seeds))
        self.deviation = C.cosine_distance(g, q_x.dequantize())
        self.step += 1
        return GradOperands(q_x, q_w)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gaussian": self.gaussian, "ratio_w": self.ratio_w,
                "ratio_x": self.ratio_x}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gaussian = None if state["gaussian"] is None else bool(state["gaussian"])
        self.ratio_w = float(state["ratio_w"])
        self.ratio_x = float(state["ratio_x"])


GRAD_QUANTIZERS: dict[str, type[GradQuantizer]] = {
    "bp-int8": PerTensorGrad, "bp-ui8": UI8Grad, "bp-gdai8": GDAI8Grad,
}


def make_grad_quantizer(algo: str, cfg: BPConfig) -> GradQuantizer:
    """A fresh per-layer quantiser for an int8 algorithm (bp-int8, bp-ui8, bp-gdai8)."""
    if algo not in GRAD_QUANTIZERS:
        raise ValueError(f"no int8 gradient quantiser for {algo!r}; one of: {', '.join(GRAD_QUANTIZERS)}")
    return GRAD_QUANTIZERS[algo](cfg)
