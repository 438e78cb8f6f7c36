"""Arithmetic operation counts of one training step, one epoch and a whole run (cf. paper Table IV).

Counted from layer shapes, following what ffint8.train.ff and the backprop baselines compute.
Conventions (docs/measurement.md has the derivation):
- A GEMM (M, K) @ (K, N) is M*N*K multiplies and M*N*K adds (one multiply-accumulate each).
  int8 GEMMs multiply 8-bit operands and accumulate in int32, so their adds are counted as
  32-bit integer adds (int32_add); float GEMMs count fp32_mul and fp32_add.
- Elementwise float work over whole tensors is counted (normalisation, goodness, rescaling,
  bias, gradient scaling, the optimiser). A division, square root or exp counts as one multiply.
- Work per row or per tensor (per-row norms and losses, scales, sigmoids: O(B) per unit) is
  left out: below 0.1% of any step of the MLP. Comparisons (ReLU, absmax, clamp) are not counted.
- `quantized` counts elements quantised to int8 (each: a scale multiply, a rounding, a clamp;
  stochastic rounding also draws a random number); they are not in the fp32 counts.
Layers are counted by type (DENSE_COUNTERS), so conv layers can be added beside Dense.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from ffint8.errors import ConfigError

FF_ALGOS = ("ff-int8", "ff-fp32")
BP_ALGOS = ("bp-fp32", "bp-int8", "bp-ui8", "bp-gdai8")
INT8_ALGOS = ("ff-int8", "bp-int8", "bp-ui8", "bp-gdai8")
ALL_ALGOS = FF_ALGOS + BP_ALGOS
# Optimiser arithmetic per parameter (multiplies, adds):
# Adam: m = b1 m + (1-b1) g (2, 1); v = b2 v + (1-b2) g^2 (3, 1); sqrt(v_hat) + eps (1, 1);
#       p -= lr_t * m / denom (2, 1).   SGD with momentum: buf = mu buf + g (1, 1); p -= lr buf (1, 1).
OPTIMIZER_OPS = {"adam": (8, 4), "sgd": (2, 2)}
# The clip searches of bp-ui8 and bp-gdai8 (ffint8.bp.clip.search_ratio): every `period` steps,
# a grid of `grid` clip ratios, 2 golden-section starts and `refine` steps: one evaluation each.
BP_SEARCH_DEFAULTS = (100, 24, 16)  # BPConfig's search_period, search_grid, search_refine


@dataclass(frozen=True)
class OpCounts:
    """Operation counts; int8_mul and int32_add come from int8 GEMMs (int32 accumulation)."""

    int8_mul: int = 0
    int32_add: int = 0
    fp32_mul: int = 0
    fp32_add: int = 0
    quantized: int = 0  # elements quantised to int8

    def __add__(self, other: OpCounts) -> OpCounts:
        return OpCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: OpCounts) -> OpCounts:
        return OpCounts(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def __mul__(self, k: int) -> OpCounts:
        return OpCounts(*(getattr(self, f.name) * k for f in fields(self)))

    __rmul__ = __mul__

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


ZERO = OpCounts()


def fp32(mul: int = 0, add: int = 0) -> OpCounts:
    return OpCounts(fp32_mul=mul, fp32_add=add)


def gemm(m: int, k: int, n: int, int8: bool) -> OpCounts:
    """(M, K) @ (K, N): M*N*K multiply-accumulates, int8 x int8 -> int32 or fp32."""
    macs = m * k * n
    return OpCounts(int8_mul=macs, int32_add=macs) if int8 else fp32(macs, macs)


@dataclass(frozen=True)
class Dense:
    """A dense layer: (rows, in_features) -> (rows, out_features), weight (out, in) and bias."""

    in_features: int
    out_features: int

    @property
    def weights(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        return self.weights + self.out_features

    def in_elems(self, rows: int) -> int:
        return rows * self.in_features

    def out_elems(self, rows: int) -> int:
        return rows * self.out_features


def dense_forward(layer: Dense, rows: int, int8: bool) -> OpCounts:
    """z = x W^T + b. int8: quantise x and W, int8 GEMM, rescale the accumulator to float."""
    d, n = layer.in_features, layer.out_features
    ops = gemm(rows, d, n, int8) + fp32(add=rows * n)  # + bias
    if int8:
        ops += OpCounts(quantized=rows * d + layer.weights) + fp32(mul=rows * n)
    return ops


def dense_weight_grad(layer: Dense, rows: int, int8: bool, quantize_grad: bool = True) -> OpCounts:
    """g_W = g_z^T x (N, D) and g_b = sum of g_z over rows. int8: g_z quantised (unless the
    caller already did), int8 GEMM, rescale."""
    d, n = layer.in_features, layer.out_features
    ops = gemm(n, rows, d, int8) + fp32(add=rows * n)
    if int8:
        ops += fp32(mul=layer.weights) + OpCounts(quantized=rows * n if quantize_grad else 0)
    return ops


def dense_input_grad(layer: Dense, rows: int, int8: bool, quantize_grad: bool = True) -> OpCounts:
    """g_x = g_z W (rows, D). int8: g_z quantised (unless already), int8 GEMM, rescale."""
    d, n = layer.in_features, layer.out_features
    ops = gemm(rows, n, d, int8)
    if int8:
        ops += fp32(mul=rows * d) + OpCounts(quantized=rows * n if quantize_grad else 0)
    return ops


# Layer type -> (forward, weight_grad, input_grad); a conv layer type plugs in here.
DENSE_COUNTERS = {Dense: (dense_forward, dense_weight_grad, dense_input_grad)}


def _counters(layer):
    try:
        return DENSE_COUNTERS[type(layer)]
    except KeyError:
        raise ConfigError(f"no operation counts for layer type {type(layer).__name__}") from None


def mlp_layers(in_features: int, hidden: Sequence[int], num_classes: int | None = None) -> list[Dense]:
    """The MLP's layers in order; num_classes adds the backprop classifier head."""
    sizes = [in_features, *hidden] + ([num_classes] if num_classes else [])
    return [Dense(a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def optimizer_ops(n_params: int, optimizer: str = "adam", weight_decay: float = 0.0) -> OpCounts:
    if optimizer not in OPTIMIZER_OPS:
        raise ConfigError(f"invalid optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZER_OPS)}")
    mul, add = OPTIMIZER_OPS[optimizer]
    if weight_decay:
        mul, add = mul + 1, add + 1  # g + wd * p
    return fp32(mul * n_params, add * n_params)


def _ff_forward(units: Sequence[Dense], rows: int, int8: bool, goodness: bool = True) -> OpCounts:
    """The shared forward: per unit the rms norm (square, sum, divide), the linear map, and
    (goodness) the goodness and local gradient, or the goodness alone."""
    ops = ZERO
    for u in units:
        forward = _counters(u)[0]
        ops += fp32(mul=2 * u.in_elems(rows), add=u.in_elems(rows)) + forward(u, rows, int8)
        if goodness:
            ops += fp32(mul=u.out_elems(rows), add=u.out_elems(rows))
    return ops


def readout_units(n_units: int) -> list[int]:
    """The units the MLP's softmax readout reads (ffint8.models.mlp): all but the first."""
    return list(range(1 if n_units > 1 else 0, n_units))


def readout_params(units: Sequence[Dense], kw: dict) -> int:
    """Parameters of the softmax readout, (C, F) and (C,), when kw["predict"] is "softmax"."""
    if kw.get("predict") != "softmax":
        return 0
    f = sum(units[i].out_features for i in readout_units(len(units)))
    return (f + 1) * kw["num_classes"]


def ff_prediction_ops(units: Sequence[Dense], batch_size: int, int8: bool, num_classes: int,
                      predict: str = "goodness", negatives: str = "random") -> OpCounts:
    """The extra passes of one training step (ffint8.train.loop) beside ff_gradients.
    predict="softmax": a neutral-label forward of batch_size rows, the readout's features
    (normalised outputs), its logits, cross-entropy and gradient. negatives="hard" with
    goodness prediction: a forward of every label (num_classes x batch_size rows). (With the
    greedy schedule the loop runs these passes over all units; here over `units`.)"""
    b, c = batch_size, num_classes
    if predict == "softmax":
        f = sum(units[i].out_features for i in readout_units(len(units)))
        return (_ff_forward(units, b, int8, goodness=False) + fp32(mul=2 * b * f, add=b * f)
                + gemm(b, f, c, False) + fp32(add=b * c)  # logits
                + fp32(mul=3 * b * c, add=3 * b * c)  # softmax, cross-entropy, dL/dlogits
                + gemm(c, b, f, False) + fp32(add=b * c))  # g_W, g_b
    if negatives == "hard":
        return _ff_forward(units, c * b, int8, goodness=True)
    return ZERO


def ff_step_ops(units: Sequence[Dense], batch_size: int, int8: bool, look_ahead: str = "none",
                lam_active: bool = True, chain_depth: int | None = None, peer: bool = False) -> OpCounts:
    """One ff_gradients call on 2*batch_size rows (positives and negatives), optimiser excluded.

    Mirrors ffint8.train.ff: the shared forward (rms norm, linear, ReLU) of every unit, its
    goodness and local gradient g_z = c * y, then per unit from the last: the chain signal
    (when active), g_W and g_b, and the input-gradient GEMMs chain passes down (one per live
    signal). collab differs from none only in per-row work, which is not counted.
    """
    m = 2 * batch_size
    ops = _ff_forward(units, m, int8)
    for u in units:
        ops += fp32(mul=u.out_elems(m))  # g_z = c * y
        if peer:  # two batch means, the mask multiply, the add into g_z
            ops += fp32(mul=u.out_elems(m), add=3 * u.out_elems(m))
    chain = look_ahead == "chain" and lam_active
    n = len(units)
    depth = n if chain_depth is None else chain_depth
    signals: list[int] = []  # keys of the live chain signals, as in ff_gradients
    for l in range(n - 1, -1, -1):
        u = units[l]
        _, wgrad, igrad = _counters(u)
        out = u.out_elems(m)
        if chain and signals:
            ops += fp32(mul=2 * out, add=len(signals) * out)  # sum of k signals, mask, lam *, +
        ops += wgrad(u, m, int8)
        if not chain or l == 0:
            continue
        live: list[int] = []
        for j in [*signals, l]:
            if j > l - 1 + depth:
                continue
            if j != l:
                ops += fp32(mul=out)  # s * mask
            key = 0 if j <= depth else j
            if key in live:
                ops += fp32(add=out)
            else:
                live.append(key)
        for _ in live:  # through the linear map, then the norm's backward (3 mul, 2 add / input)
            ops += igrad(u, m, int8) + fp32(mul=3 * u.in_elems(m), add=2 * u.in_elems(m))
        signals = live
    return ops


def _bp_search() -> tuple[int, int]:
    """(period, evaluations per search) from BPConfig's defaults."""
    try:
        from ffint8.bp.config import BPConfig

        c = BPConfig()
        period, grid, refine = c.search_period, c.search_grid, c.search_refine
    except ImportError:
        period, grid, refine = BP_SEARCH_DEFAULTS
    return period, grid + 2 + refine


def _cosine(n: int) -> OpCounts:
    """cosine_distance of two n-element tensors after dequantising one (done in float64; counted
    as fp32): dequantise, two norms, two scalings, difference, square, sum."""
    return fp32(mul=6 * n, add=4 * n)


def bp_grad_extra(layer: Dense, rows: int, algo: str) -> OpCounts:
    """What bp-ui8 / bp-gdai8 add to one layer's backward (ffint8.bp.grad), the periodic
    searches spread over the steps between them."""
    period, evals = _bp_search()
    out = layer.out_elems(rows)
    q_out = OpCounts(quantized=out)
    clip_search = (q_out + _cosine(out)) * evals  # search_clip: quantise, compare to g
    if algo == "bp-ui8":
        step, search = _cosine(out), clip_search  # the deviation for the lr scaling
    else:
        # per step: a second g_W operand (per channel when long-tailed) and the deviation;
        # per search: the shape test, the float g_W reference, then per evaluation a quantised
        # g, its float g_W (dequantised input, fp32 GEMM) and a cosine over g_W; then the g_x
        # operand's own clip search.
        wgrad = gemm(layer.out_features, rows, layer.in_features, False) + fp32(mul=layer.in_elems(rows))
        per_eval = q_out + fp32(mul=out) + wgrad + _cosine(layer.weights)
        step = q_out + _cosine(out)
        search = fp32(mul=2 * out, add=3 * out) + wgrad + per_eval * evals + clip_search
    return step + OpCounts(*(getattr(search, f.name) // period for f in fields(search)))


def bp_step_ops(layers: Sequence[Dense], batch_size: int, algo: str) -> OpCounts:
    """One backprop step on batch_size rows (forward, cross-entropy, backward), optimiser
    excluded. The int8 algorithms quantise each layer's input and weight in the forward and the
    output gradient once per layer (shared by g_W and g_x); the first layer's g_x is skipped
    (the data needs no gradient)."""
    int8 = algo in INT8_ALGOS
    b = batch_size
    ops = ZERO
    for layer in layers:
        ops += _counters(layer)[0](layer, b, int8)
    logits = layers[-1].out_elems(b)
    ops += fp32(mul=3 * logits, add=3 * logits)  # log-softmax, NLL and its gradient
    for i, layer in enumerate(layers):
        _, wgrad, igrad = _counters(layer)
        ops += wgrad(layer, b, int8, quantize_grad=True)
        if i > 0:
            ops += igrad(layer, b, int8, quantize_grad=False)
        if algo in ("bp-ui8", "bp-gdai8"):
            ops += bp_grad_extra(layer, b, algo)
    return ops


def step_ops(algo: str, layers: Sequence[Dense], batch_size: int, look_ahead: str = "none",
             lam_active: bool = True, chain_depth: int | None = None, optimizer: str = "adam",
             weight_decay: float = 0.0, peer: bool = False,
             optimized_params: int | None = None, num_classes: int = 10,
             predict: str = "goodness", negatives: str = "random") -> OpCounts:
    """One full training step of `algo` (optimiser included). FF: layers are the FF units; BP:
    layers include the classifier head. optimized_params: parameters the optimiser steps
    (default: all of the layers', and the softmax readout's when predict="softmax")."""
    if algo not in ALL_ALGOS:
        raise ConfigError(f"no operation counts for algorithm {algo!r}; known: {', '.join(ALL_ALGOS)}")
    if algo in FF_ALGOS:
        int8 = algo == "ff-int8"
        ops = ff_step_ops(layers, batch_size, int8, look_ahead, lam_active, chain_depth, peer)
        ops += ff_prediction_ops(layers, batch_size, int8, num_classes, predict, negatives)
    else:
        ops = bp_step_ops(layers, batch_size, algo)
    if optimized_params is None:
        optimized_params = sum(layer.params for layer in layers)
        if algo in FF_ALGOS:
            optimized_params += readout_params(layers, {"predict": predict, "num_classes": num_classes})
    return ops + optimizer_ops(optimized_params, optimizer, weight_decay)


def epoch_ops(algo: str, layers: Sequence[Dense], batch_size: int, n_train: int, **kw) -> OpCounts:
    """One pass over n_train samples: full batches and the last, smaller one."""
    full, rest = divmod(n_train, batch_size)
    ops = step_ops(algo, layers, batch_size, **kw) * full
    if rest:
        ops += step_ops(algo, layers, rest, **kw)
    return ops


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def run_ops(cfg, n_train: int, in_features: int, num_classes: int) -> dict:
    """Counts for a TrainConfig (MLP): per steady-state step and epoch (look-ahead active when
    the config has one) and for the whole run, epoch by epoch as the trainer schedules it
    (lambda = 0 switches look-ahead off; the greedy schedule trains units[: u + 1] for unit u).
    Returns {"per_step", "per_epoch", "run"} of OpCounts dicts and "steps_per_epoch"."""
    if cfg.model != "mlp":
        raise ConfigError(f"no operation counts for model {cfg.model!r} yet (only mlp)")
    ff = cfg.ff
    algo = ff.algo
    bp = algo in BP_ALGOS
    layers = mlp_layers(in_features, cfg.hidden, num_classes if bp else None)
    kw = dict(chain_depth=ff.chain_depth, optimizer=cfg.optimizer,
              weight_decay=cfg.weight_decay, peer=bool(ff.peer_weight), num_classes=num_classes,
              predict=getattr(ff, "predict", "goodness"), negatives=getattr(ff, "negatives", "random"))
    look = ff.look_ahead
    step = step_ops(algo, layers, cfg.batch_size, look, look != "none", **kw)
    epoch = epoch_ops(algo, layers, cfg.batch_size, n_train, look_ahead=look,
                      lam_active=look != "none", **kw)
    plan: list[int | None] = [None] * cfg.epochs
    if not bp and ff.schedule == "greedy":
        plan = [u for u in range(len(layers)) for _ in range(cfg.epochs)]
    total = ZERO
    for e, unit in enumerate(plan):
        active = look != "none" and ff.lam(e) != 0.0
        units = layers if unit is None else layers[: unit + 1]
        stepped = None if unit is None else layers[unit].params + readout_params(layers, kw)
        total += epoch_ops(algo, units, cfg.batch_size, n_train, look_ahead=look,
                           lam_active=active, optimized_params=stepped, **kw)
    return {"per_step": step.to_dict(), "per_epoch": epoch.to_dict(), "run": total.to_dict(),
            "steps_per_epoch": steps_per_epoch(n_train, cfg.batch_size), "algo": algo}
