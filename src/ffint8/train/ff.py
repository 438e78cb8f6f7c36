"""One Forward-Forward update (Algorithm 1): one shared forward pass, then every unit's gradient.

Look-ahead (PAPER.md section 3), with L_l the FF loss of unit l averaged over the batch:
- none:   unit l minimises L_l.
- collab: unit l minimises softplus(+-(G_l + lambda * sum_{j != l} stopgrad(G_j) - theta)).
- chain:  unit l minimises L_l + lambda * sum_{l < j <= l + depth} L_j (eq. 3): gradients of later
          losses reach W_l through units l+1..j, each later loss weighted by lambda once.
Gradients are written in closed form (PAPER.md section 1) into each parameter's .grad; on the INT8
path g_z (and, in chain mode, the gradient passed between units) is quantised with stochastic
rounding and every GEMM is int8 x int8 -> int32. Where the C kernels are built, the INT8 path's
elementwise work runs fused around those GEMMs (FFDense.forward_fused, fastsr.ff_unit_grad,
fastsr.input_grad): the same operations, but for the order of row and column sums.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ffint8.nn import functional as FF
from ffint8.nn.dense import DenseRecord, FFDense
from ffint8.quant import QTensor, fastsr, int8_mm, int8_mm_scaled, quantize
from ffint8.quant.fastsr import mix64
from ffint8.train.config import FFConfig


class SeedStream:
    """Counter-based seeds for stochastic rounding: deterministic, cheap, resumable (one int)."""

    def __init__(self, seed: int, counter: int = 0) -> None:
        self.base = mix64(seed)
        self.counter = counter

    def next(self) -> int:
        self.counter += 1
        return mix64(self.base ^ self.counter)


def forward_records(
    units: list[FFDense], x: torch.Tensor, cfg: FFConfig, seeds: SeedStream | None
) -> list[DenseRecord]:
    """The shared forward pass: each unit's input is the previous unit's output."""
    records = []
    h = x
    for unit in units:
        seed = seeds.next() if (cfg.int8 and seeds is not None) else None
        rec = unit.forward_record(h, cfg.norm, cfg.int8, seed, cfg.int8_kernel, cfg.weight_channel)
        records.append(rec)
        h = rec.y
    return records


def outputs_each_label(
    units: list[FFDense], x: torch.Tensor, num_classes: int, cfg: FFConfig
) -> list[torch.Tensor]:
    """Inference: every unit's output (C * B, N) for images x (B, D) with each label embedded in
    turn, label 0's B rows first. The first unit forms the image's product once for all labels
    (FFDense.forward_each_label); the units above it see C * B different rows."""
    first = units[0].forward_each_label(x, num_classes, cfg.norm, cfg.int8, cfg.int8_kernel,
                                        cfg.weight_channel)
    return [first] + [r.y for r in forward_records(units[1:], first, cfg, seeds=None)]


def _weight_grad_factors(g_z: torch.Tensor, rec: DenseRecord,
                         seeds: SeedStream) -> tuple[QTensor, QTensor]:
    """The INT8 path's g_W = g_q^T a_q as its two int8 factors: g_z stochastically rounded, and
    the unit's quantised input."""
    return quantize(g_z, "stochastic", seed=seeds.next()), rec.a_q


def _input_grad(
    s_z: torch.Tensor, rec: DenseRecord, cfg: FFConfig, seeds: SeedStream
) -> torch.Tensor:
    """dL/dh_in of one unit from dL/dz: through the linear map, then the normalisation."""
    if cfg.int8:
        w_scale = rec.w_q.scale
        if w_scale.dim() == 2:  # per-output-unit scales (N, 1) sit inside the sum over N:
            s_z, w_scale = s_z * w_scale.t(), w_scale.new_ones(())  # fold them into s_z first
        s_q = quantize(s_z, "stochastic", seed=seeds.next())
        g_a = int8_mm_scaled(s_q.q, s_q.scale, rec.w_q.q, w_scale, cfg.int8_kernel)
    else:
        g_a = s_z @ rec.w
    return FF.normalize_backward(g_a, rec.h_in, rec.r_in, cfg.norm)


def ff_gradients(
    units: list[FFDense],
    x: torch.Tensor,
    t: torch.Tensor,
    cfg: FFConfig,
    lam: float,
    seeds: SeedStream,
    on_unit: Callable[[int], None] | None = None,
    batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    factors: dict[int, tuple[QTensor, QTensor]] | None = None,
) -> torch.Tensor:
    """Forward x (B, D) with targets t (B,) once, set .grad of every unit's parameters, and
    return each unit's loss as its objective defines it: (L,), detached. on_unit, batch_mean,
    factors: see gradients_from_records."""
    records = forward_records(units, x, cfg, seeds)
    return gradients_from_records(units, records, t, cfg, lam, seeds, on_unit=on_unit,
                                  batch_mean=batch_mean, factors=factors)


def gradients_from_records(
    units: list[FFDense],
    records: list[DenseRecord],
    t: torch.Tensor,
    cfg: FFConfig,
    lam: float,
    seeds: SeedStream,
    others: torch.Tensor | None = None,
    on_unit: Callable[[int], None] | None = None,
    batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    factors: dict[int, tuple[QTensor, QTensor]] | None = None,
) -> torch.Tensor:
    """ff_gradients after its forward pass. others: (B,) goodness summed over units that are not
    in `units` (a layer-pipelined stage's view of the rest of the network), added to collab's sum
    as constants. on_unit(l) is called, from the last unit down, as soon as unit l's .grad is
    final and nothing below needs its weight parameter or gradient: a per-unit update may step
    and free them there, so only one unit's gradients are alive at a time. batch_mean: (B, N)
    -> (N,) means over the batch for peer normalisation (default: these rows'; data-parallel
    ranks pass the global batch's). factors: on the INT8 path, unit l's weight gradient is not
    formed; its two int8 factors (train/factored.py) go to factors[l] and the weight's .grad is
    None, for an optimiser that steps from them (FactoredAdam.step_factored, in on_unit); each
    record's w_q is then released (set to None) after its last use. The stochastic rounding
    draws the same numbers either way."""
    n_units = len(units)
    chain = cfg.look_ahead == "chain" and lam != 0.0
    depth = n_units if cfg.chain_depth is None else cfg.chain_depth
    # The fused C path (FFDense.forward_fused made every record): each unit's dL/dz, bias
    # gradient and signal down in one pass (fastsr.ff_unit_grad). The chain's later losses must
    # then travel as one summed signal, as they do without a depth limit below the network's.
    fused = cfg.int8 and all(r.sumsq is not None for r in records) and depth >= n_units
    goods = [_goodness(r, cfg.goodness) for r in records]  # L x (B,)
    g_eff = goods
    if cfg.look_ahead == "collab" and lam != 0.0:
        total = torch.stack(goods).sum(0)
        if others is not None:
            total = total + others
        g_eff = [g + lam * (total - g) for g in goods]  # others' goodness as constants
    losses = torch.stack([FF.unit_loss(g, t, cfg.loss, cfg.theta, cfg.symba_alpha) for g in g_eff])
    means = [None] * n_units
    if cfg.peer_weight:
        means = [batch_mean(r.y) if batch_mean is not None else
                 r.y.mean(dim=0) if r.colsum is None else r.colsum / r.y.shape[0]
                 for r in records]
        losses = losses + torch.stack([FF.peer_loss(r.y, cfg.peer_weight, m)
                                       for r, m in zip(records, means)])
    # Local dL_l/dz_l, with the mean over the batch folded in, as its two parts: crow (B,)
    # times y, plus pcol (N,) where y > 0 (peer normalisation; None without it).
    parts = []
    for rec, g, m in zip(records, g_eff, means):
        d_g = FF.unit_loss_grad(g, t, cfg.loss, cfg.theta, cfg.symba_alpha)
        crow = d_g * FF.goodness_grad_factor(cfg.goodness, rec.y.shape[1])
        pcol = FF.peer_grad_col(m, cfg.peer_weight, rec.y.shape[0]) if cfg.peer_weight else None
        parts.append((crow, pcol))
    if not fused:
        # ReLU masks (y > 0), made once per unit where the peer term or the chain needs them
        masks = [r.y > 0 for r in records] if (cfg.peer_weight or chain) else [None] * n_units
        local = []  # (B, N) each
        for rec, (crow, pcol), mask in zip(records, parts, masks):
            g_z = crow.unsqueeze(1) * rec.y
            if pcol is not None:
                g_z = g_z + pcol.expand_as(rec.y) * mask
            local.append(g_z)

    factored = factors is not None and cfg.int8
    # Chain: signals[j] = dL_j / dy_l for the later units j whose loss still reaches unit l
    # (signals[0]: the sum of those that reach every unit).
    signals: dict[int, torch.Tensor] = {}
    for l in range(n_units - 1, -1, -1):
        rec, unit = records[l], units[l]
        if fused:  # g_z, its bias gradient and (chain) what passes down, in one C pass
            out = fastsr.ff_unit_grad(rec.y, *parts[l], signals.get(0), lam, chain and l > 0)
            if out is None:  # the forward's kernels fitted, so these do
                raise RuntimeError("gradients_from_records: the fused kernel refused its operands")
            g_z, g_amax, down, down_amax, unit.bias.grad = out
            fac = (QTensor(*fastsr.quantize_stochastic_with_absmax(g_z, g_amax, seeds.next())),
                   rec.a_q)
        else:
            g_z = local[l]
            if chain and signals:
                from_later = torch.stack(list(signals.values())).sum(0) * masks[l]
                g_z = g_z + lam * from_later
            unit.bias.grad = g_z.sum(0)
            fac = _weight_grad_factors(g_z, rec, seeds) if cfg.int8 else None
        if factored:
            factors[l] = fac
            unit.weight.grad = None
        elif cfg.int8:
            g_q, a_q = fac
            unit.weight.grad = int8_mm_scaled(g_q.q.t(), g_q.scale, a_q.q, a_q.scale,
                                              cfg.int8_kernel)
        else:
            unit.weight.grad = g_z.t() @ rec.a
        # With a float weight gradient on the INT8 path, unit l steps first and frees it before
        # the input gradient's buffers exist: the signal passes down through the forward's int8
        # copy of the weight (rec.w_q), not the weight. The float path passes it through the
        # weight itself (rec.w), so steps after. With factors there is no gradient to free: the
        # signal passes down first, and the forward's int8 weight is let go (rec.w_q = None)
        # before the step makes the next one, so two int8 copies of a weight are never alive
        # together (1.7 MB of the MLP's peak). The rounding draws the same seeds in either order.
        step_first = on_unit is not None and cfg.int8 and not factored
        if step_first:
            on_unit(l)
        if chain and l > 0:
            signals = ({0: _input_grad_fused(down, down_amax, rec, cfg, seeds)} if fused else
                       _pass_down(signals, local[l], rec, masks[l], l, depth, cfg, seeds))
        if factored:
            rec.w_q = None
        if on_unit is not None and not step_first:
            on_unit(l)
    return losses.detach()


def _goodness(rec: DenseRecord, kind: FF.Goodness) -> torch.Tensor:
    """FF.goodness of rec.y, from the fused forward's row sums of y^2 where it made them."""
    if rec.sumsq is None:
        return FF.goodness(rec.y, kind)
    return rec.sumsq / rec.y.shape[1] if kind == "mean" else rec.sumsq


def _input_grad_fused(s_z: torch.Tensor, amax: float, rec: DenseRecord, cfg: FFConfig,
                      seeds: SeedStream) -> torch.Tensor:
    """_input_grad for a per-tensor int8 weight and an s_z whose max|s_z| is known: the GEMM's
    accumulator scaled and passed back through the norm in one C pass (fastsr.input_grad)."""
    s_q = QTensor(*fastsr.quantize_stochastic_with_absmax(s_z, amax, seeds.next()))
    acc = int8_mm(s_q.q, rec.w_q.q, cfg.int8_kernel)  # (B, D)
    m = rec.h_in.shape[1] if cfg.norm == "rms" else 1
    out = fastsr.input_grad(acc, s_q.scale, rec.w_q.scale, rec.h_in, rec.r_in, m, FF.EPS)
    if out is None:  # an int64 accumulator (N past MAX_EXACT_K)
        g_a = acc.float().mul_(s_q.scale * rec.w_q.scale)
        out = FF.normalize_backward(g_a, rec.h_in, rec.r_in, cfg.norm)
    return out


def _pass_down(signals: dict[int, torch.Tensor], own: torch.Tensor, rec: DenseRecord,
               mask: torch.Tensor, l: int, depth: int, cfg: FFConfig,
               seeds: SeedStream) -> dict[int, torch.Tensor]:
    """The chain signals that reach unit l-1, from those at unit l's output and its own loss's
    dL_l/dz_l (`own`): each live one passed through unit l's linear map and norm.

    A loss still reaches unit l-1 if j <= l-1 + depth. Losses with j <= depth reach every unit
    below them, so they travel as one summed signal (key 0); the others each keep their own, to
    be dropped when out of range."""
    live: dict[int, torch.Tensor] = {}
    for j, s in [*signals.items(), (l, own)]:
        if j > l - 1 + depth:
            continue
        s = s * mask if j != l else s
        key = 0 if j <= depth else j
        live[key] = live[key] + s if key in live else s
    return {j: _input_grad(s, rec, cfg, seeds) for j, s in live.items()}


def readout_features(records: list[DenseRecord], units: list[int], norm: str) -> torch.Tensor:
    """The softmax readout's input: the normalised outputs of `units`, side by side (B, sum N)."""
    return torch.cat([FF.normalize(records[i].y, norm)[0] for i in units], dim=1)


def readout_gradients(readout: torch.nn.Linear, feats: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the readout on detached features; sets the readout's .grad only (no
    gradient reaches the units). Returns (loss, logits (B, C)), both detached."""
    logits = torch.addmm(readout.bias.detach(), feats, readout.weight.detach().t())
    p = torch.softmax(logits, dim=1)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    rows = torch.arange(len(labels), device=p.device)
    g = p.index_put_((rows, labels), p[rows, labels] - 1)
    g = g.div_(len(labels))  # (B, C) dL/dlogits, the batch mean folded in
    readout.weight.grad = g.t() @ feats
    readout.bias.grad = g.sum(0)
    return loss.detach(), logits
