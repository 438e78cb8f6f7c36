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

from ffint8.data.labels import LabelPairs, embed_label
from ffint8.nn import functional as FF
from ffint8.quant import QTensor, int8_mm, int8_mm_scaled, quantize


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


@dataclass
class PairRecord:
    """The first unit's forward of LabelPairs (FFDense.forward_pairs), kept for its update: each
    image once for both rows of its pair. B images, 2B rows, D inputs, N units."""

    a: torch.Tensor | None  # (B, D) float normalised images, label inputs zero (float path only)
    a_q: QTensor | None  # (B, D) int8 of the same and its scale (INT8 path only)
    hot: torch.Tensor  # (B, 1) the normalised label entry: float, or int32 in units of a_q.scale
    labels: torch.Tensor  # (2B,) int64, each row's label
    y: torch.Tensor  # (2B, N) ReLU output, positives then negatives


class FFDense(nn.Module):
    """y = relu(W norm(h) + b). W (N, D), b (N,), initialised as nn.Linear does."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

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
        and multiply in int8 with int32 accumulation.
        """
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
        w_q = quantize(w, "nearest", channel_dim=0 if weight_channel else None)
        w_scale = w_q.scale.reshape(1, -1) if weight_channel else w_q.scale
        z = int8_mm_scaled(a_q.q, a_q.scale, w_q.q.t(), w_scale, kernel)  # (B, N) float32
        y = z.add_(b).relu_()
        return DenseRecord(h, r, None, None, a_q, w_q, y)

    def _split_label(self, x: torch.Tensor, num_classes: int, norm: FF.Norm, int8: bool,
                     seed: int | None) -> tuple[torch.Tensor | QTensor, torch.Tensor]:
        """Images x (B, D) as rows with a label embedded, normalised (and quantised on the INT8
        path: stochastic rounding keyed by seed with one scale for the batch, or, at inference,
        seed None, round to nearest with one scale per row), split into the image part, its
        first C inputs zero, and the label entry (B, 1): float, or int32 in units of the scale.

        A label moves only the one-hot entry within the first C inputs, so the norm, the int8
        scale and every other value of the row are the same whichever label is embedded."""
        h = embed_label(x, torch.zeros(x.shape[0], dtype=torch.int64, device=x.device), num_classes)
        a, _ = FF.normalize(h, norm)
        if not int8:
            hot = a[:, :1].clone()
            a[:, :num_classes] = 0.0
            return a, hot
        a_q = (quantize(a, "stochastic", seed=seed) if seed is not None
               else quantize(a, "nearest", channel_dim=0))
        hot = a_q.q[:, :1].to(torch.int32)
        a_q.q[:, :num_classes] = 0
        return a_q, hot

    def _labelled_sums(self, img: torch.Tensor | QTensor, hot: torch.Tensor,
                       labels: torch.Tensor | None, num_classes: int, kernel: str,
                       weight_channel: bool) -> torch.Tensor:
        """z = W a + b of each image with each label of labels (L, B) (None: every label in
        turn), from the image part and the label entry (_split_label): (L, B, N). The image's
        product is formed once; a label adds hot times its column of W (of the int8 weight,
        exactly, on the INT8 path)."""
        w, bias = self.weight.detach(), self.bias.detach()
        if not isinstance(img, QTensor):
            cols = w[:, :num_classes].t()  # (C, N)
            picked = cols.unsqueeze(1) if labels is None else cols[labels]
            z = torch.mm(img, w.t()).unsqueeze(0) + hot.unsqueeze(0) * picked
            return z.add_(bias)
        w_q = quantize(w, "nearest", channel_dim=0 if weight_channel else None)
        acc = int8_mm(img.q, w_q.q.t(), kernel)  # (B, N), exact
        cols = w_q.q[:, :num_classes].t().to(acc.dtype)
        picked = cols.unsqueeze(1) if labels is None else cols[labels]
        acc = acc.unsqueeze(0) + hot.unsqueeze(0) * picked
        w_scale = w_q.scale.reshape(1, -1) if weight_channel else w_q.scale
        return acc.float().mul_(img.scale * w_scale).add_(bias)

    def forward_pairs(
        self,
        pairs: LabelPairs,
        norm: FF.Norm = "rms",
        int8: bool = False,
        seed: int | None = None,
        kernel: str = "auto",
        weight_channel: bool = False,
    ) -> PairRecord:
        """forward_record of pairs.stacked(), the image part formed and kept once for both rows
        of a pair: half the first unit's forward MACs, and half its weight gradient's (see
        ffint8.train.ff). On the INT8 path a pair shares one stochastic rounding of its image,
        where the stacked rows would each draw their own."""
        img, hot = self._split_label(pairs.images, pairs.num_classes, norm, int8, seed)
        labels = torch.stack([pairs.pos, pairs.neg]).to(torch.int64)  # (2, B)
        z = self._labelled_sums(img, hot, labels, pairs.num_classes, kernel, weight_channel)
        y = z.relu_().reshape(-1, z.shape[2])
        if int8:
            return PairRecord(None, img, hot, labels.reshape(-1), y)
        return PairRecord(img, None, hot, labels.reshape(-1), y)

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
        """Inference on images x (B, D) with each label embedded in turn (embed_label):
        (C * B, N), label 0's B rows first, as forward_record gives for those rows (the same
        integers on the INT8 path), with the image's product formed once: C times fewer MACs."""
        img, hot = self._split_label(x, num_classes, norm, int8, None)
        z = self._labelled_sums(img, hot, None, num_classes, kernel, weight_channel)
        return z.relu_().reshape(-1, z.shape[2])
