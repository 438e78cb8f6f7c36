"""The FF dense unit (normalise the input, linear, ReLU), in float and in INT8 arithmetic.

A unit holds parameters only. Its forward returns a DenseRecord: what the unit's own update
needs (its input, kept int8 on the INT8 path, and its output) and what a chain look-ahead
needs to pass gradients through it (its weight as used, and the input's norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ffint8.data.labels import embed_label
from ffint8.nn import functional as FF
from ffint8.quant import QTensor, fastsr, int8_mm, int8_mm_scaled, quantize
from ffint8.quant.gemm import FLOAT_EXACT_K, MAX_EXACT_K


@dataclass
class DenseRecord:
    """One unit's forward, kept for its update. B rows, D inputs, N units."""

    h_in: torch.Tensor  # (B, D) float: the previous unit's output (or the data), before norm
    r_in: torch.Tensor  # (B, 1) the norm that normalised h_in
    a: torch.Tensor | None  # (B, D) float normalised input (float path only)
    w: torch.Tensor | None  # (N, D) float weight as used in the forward (float path only)
    a_q: QTensor | None  # (B, D) int8 normalised input and its scale (INT8 path only)
    w_q: QTensor | None  # (N, D) int8 weight as used in the forward (INT8 path only)
    y: torch.Tensor  # (B, N) ReLU output; zero where z <= 0, so it carries the ReLU mask
    # the fused INT8 training forward's by-products (else None): each row's sum of y^2 (B,),
    # each column's sum of y (N,), for the goodness and peer normalisation's batch means
    sumsq: torch.Tensor | None = None
    colsum: torch.Tensor | None = None


class FFDense(nn.Module):
    """y = relu(W norm(h) + b). W (N, D), b (N,), initialised as nn.Linear does."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        # cache_int8_weight's copy: ((data pointer, version) of the weight it was made from, it)
        self._w_q_cache: tuple[tuple[int, int], QTensor] | None = None

    def _weight_key(self) -> tuple[int, int]:
        return self.weight.data_ptr(), self.weight._version

    def int8_weight(self, weight_channel: bool = False) -> QTensor:
        """The weight rounded to nearest in int8, one scale per tensor (or per output unit): the
        copy cache_int8_weight made, if the weight has not changed since (any in-place change,
        a load_state_dict or an optimiser step, moves its version on), else made now."""
        cached = self._w_q_cache
        if not weight_channel and cached is not None and cached[0] == self._weight_key():
            return cached[1]
        return quantize(self.weight.detach(), "nearest", channel_dim=0 if weight_channel else None)

    def cache_int8_weight(self, amax: float) -> None:
        """Quantise the weight per tensor now, given its max|W| (FactoredAdam.step_factored
        returns it), and keep the copy for the next forwards: one pass over the weight instead
        of quantize's two. The old copy is let go first, so that where nothing else holds it,
        the two are never in memory together."""
        self._w_q_cache = None
        fused = fastsr.quantize_nearest_with_absmax(self.weight.detach(), amax)
        self._w_q_cache = None if fused is None else (self._weight_key(), QTensor(*fused))

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward_record(
        self,
        h: torch.Tensor,
        norm: FF.Norm = "rms",
        int8: bool = False,
        seed: int | None = None,
        kernel: str = "auto",
        weight_channel: bool = False,
    ) -> DenseRecord:
        """Forward one batch and keep what the update needs.

        int8: quantise the normalised input (stochastic rounding keyed by `seed`, one scale for
        the batch; when seed is None, as at inference, round to nearest with one scale per row)
        and the weight (round to nearest, per tensor, or per output unit when weight_channel),
        and multiply in int8 with int32 accumulation. Training with per-tensor scales runs the
        fused C kernels (forward_fused) where they are built.
        """
        if int8 and seed is not None and not weight_channel:
            rec = self.forward_fused(h, norm, seed, kernel)
            if rec is not None:
                return rec
        a, r = FF.normalize(h, norm)
        w = self.weight.detach()
        b = self.bias.detach()
        if not int8:
            y = torch.addmm(b, a, w.t()).relu_()
            return DenseRecord(h, r, a, w, None, None, y)
        if seed is not None:  # training: per-tensor scale, stochastic rounding
            a_q = quantize(a, "stochastic", seed=seed)
        else:  # inference: one scale per row, so a sample's score does not depend on its batch
            a_q = quantize(a, "nearest", channel_dim=0)
        w_q = self.int8_weight(weight_channel)
        w_scale = w_q.scale.reshape(1, -1) if weight_channel else w_q.scale
        z = int8_mm_scaled(a_q.q, a_q.scale, w_q.q.t(), w_scale, kernel)  # (B, N) float32
        y = z.add_(b).relu_()
        return DenseRecord(h, r, None, None, a_q, w_q, y)

    def forward_fused(self, h: torch.Tensor, norm: FF.Norm, seed: int,
                      kernel: str = "auto") -> DenseRecord | None:
        """forward_record's INT8 training forward (per-tensor scales) in two C calls around the
        GEMM: normalise and quantise h without forming the normalised tensor, then scale, add
        the bias and apply the ReLU in one pass that also sums each row's y^2 and each column's
        y (the record's sumsq and colsum). The same values as the PyTorch path but for the row
        norms' summation order. None where the C kernels do not fit (the caller then takes
        that path)."""
        h = h.detach()
        fused = (fastsr.normalize_quantize(h, norm == "l2", FF.EPS, seed)
                 if h.dim() == 2 and h.shape[1] <= MAX_EXACT_K else None)
        if fused is None:
            return None
        r, q, scale = fused
        w_q = self.int8_weight()
        acc = int8_mm(q, w_q.q.t(), kernel)  # (B, N) int32, exact
        out = fastsr.dense_epilogue(acc, scale, w_q.scale, self.bias.detach())
        if out is None:  # acc is int64 (K past MAX_EXACT_K): not this kernel's
            return None
        y, sumsq, colsum = out
        return DenseRecord(h, r, None, None, QTensor(q, scale), w_q, y, sumsq, colsum)

    @torch.no_grad()
    def forward_each_label(
        self,
        x: torch.Tensor,
        num_classes: int,
        norm: FF.Norm = "rms",
        int8: bool = False,
        kernel: str = "auto",
        weight_channel: bool = False,
    ) -> torch.Tensor:
        """Inference of the first unit on images x (B, D) with each label embedded in turn
        (embed_label): (C * B, N), label 0's B rows first, as forward_record gives for those rows.

        A label only moves the one-hot entry within the first C inputs, so every label's row has
        the same norm and, on the INT8 path, the same per-row scale and the same int8 values but
        for where that entry sits. The image's product with W is computed once (C times fewer
        MACs) and each label adds its own column of W, of the int8 weight on the INT8 path,
        where the accumulator stays exact: the same integers as forward_record's.
        """
        b, c = x.shape[0], num_classes
        h = embed_label(x, torch.zeros(b, dtype=torch.int64, device=x.device), c)
        a, _ = FF.normalize(h, norm)
        w, bias = self.weight.detach(), self.bias.detach()
        # (C, B, N) = the image's product (B, N) + hot (B, 1) x each label's column (C, 1, N),
        # made in one pass (addcmul): the only C-fold tensors are the output's
        if not int8:
            hot = a[:, :1].clone()  # (B, 1) the label's normalised entry
            a[:, :c] = 0.0
            z = torch.addcmul(torch.mm(a, w.t()), hot, w[:, :c].t().unsqueeze(1))
        else:
            a_q = quantize(a, "nearest", channel_dim=0)  # as forward_record at inference
            q = a_q.q
            hot = q[:, :1].to(torch.int32)
            q[:, :c] = 0
            w_q = self.int8_weight(weight_channel)
            acc = int8_mm(q, w_q.q.t(), kernel)  # (B, N) exact
            cols = w_q.q[:, :c].t().unsqueeze(1)
            if x.shape[1] <= FLOAT_EXACT_K:  # every sum of D products is an exact float32
                z = torch.addcmul(acc.float(), hot.float(), cols.float())
            else:
                z = torch.addcmul(acc, hot.to(acc.dtype), cols.to(acc.dtype)).float()
            w_scale = w_q.scale.reshape(1, -1) if weight_channel else w_q.scale
            z = z.mul_(a_q.scale * w_scale)
        return z.add_(bias).relu_().reshape(c * b, -1)
