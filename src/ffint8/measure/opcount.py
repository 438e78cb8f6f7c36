"""Arithmetic operation counts of one training step, one epoch and a whole run (cf. paper Table IV).

Counted from layer shapes, following what ffint8.train.ff (dense units), ffint8.train.ff_units
(convolutional units) and the backprop baselines compute.
Conventions (docs/measurement.md has the derivation):
- A GEMM (M, K) @ (K, N) is M*N*K multiplies and M*N*K adds (one multiply-accumulate each); a
  convolution is one GEMM per group (ffint8.measure.counts). int8 GEMMs multiply 8-bit operands
  and accumulate in int32, so their adds are counted as 32-bit integer adds (int32_add); float
  GEMMs count fp32_mul and fp32_add.
- Elementwise float work over whole tensors is counted (normalisation, goodness, rescaling,
  bias, gradient scaling, the optimiser; in conv units the norms, activations, residual adds and
  squeeze-excitation: ffint8.measure.convunit). A division, square root or exp counts as one
  multiply.
- Work per row or per tensor (per-row norms and losses, scales, sigmoids: O(B) per unit) is
  left out: below 0.1% of any step of the MLP. Comparisons (ReLU, absmax, clamp) are not counted.
- `quantized` counts elements quantised to int8 (each: a scale multiply, a rounding, a clamp;
  stochastic rounding also draws a random number); they are not in the fp32 counts.
Layers are counted by type (ffint8.measure.counts.LAYER_COUNTERS): Dense, Conv, and whole conv
units (ConvUnit) and the ConvNet head (PoolHead), whose shapes are read off the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ffint8.errors import ConfigError
from ffint8.measure.convshapes import conv_layers, shape_model
from ffint8.measure.convunit import ConvUnit
from ffint8.measure.counts import (  # noqa: F401  (re-exported: the counts' public names)
    ALL_ALGOS,
    BP_ALGOS,
    FF_ALGOS,
    INT8_ALGOS,
    OPTIMIZER_OPS,
    ZERO,
    Conv,
    Dense,
    OpCounts,
    bp_grad_extra,
    counters,
    fp32,
    gemm,
    macs,
    optimizer_ops,
)


def mlp_layers(in_features: int, hidden: Sequence[int], num_classes: int | None = None) -> list[Dense]:
    """The MLP's layers in order; num_classes adds the backprop classifier head."""
    sizes = [in_features, *hidden] + ([num_classes] if num_classes else [])
    return [Dense(a, b) for a, b in zip(sizes[:-1], sizes[1:])]


Layer = Dense | ConvUnit  # what the training steps walk; BP adds a head (Dense or PoolHead)


def _each_label_forward(u: Dense, images: int, labels: int, int8: bool) -> OpCounts:
    """A first dense unit on `images` images with each of `labels` labels embedded in turn
    (FFDense.forward_each_label): the norm, the quantisation and the image's product once per
    image; per row one multiply-accumulate per output for the label's column (8 x 8 bits on the
    INT8 path), the rescale and the bias."""
    out = u.out_elems(images * labels)
    ops = (fp32(mul=2 * u.in_elems(images), add=u.in_elems(images)) + macs(u.macs(images), int8)
           + macs(out, int8) + fp32(add=out))
    if int8:
        ops += OpCounts(quantized=u.in_elems(images) + u.weights) + fp32(mul=out)
    return ops


def _ff_forward(units: Sequence[Layer], rows: int, int8: bool, goodness: bool = True,
                labels: int = 1) -> OpCounts:
    """The shared forward: per unit the rms norm (square, sum, divide), the unit's body, and
    (goodness) the goodness and local gradient, or the goodness alone. labels > 1: the rows are
    every label of rows // labels images, whose image a dense first unit forms once."""
    ops = ZERO
    for i, u in enumerate(units):
        if i == 0 and labels > 1 and isinstance(u, Dense):
            ops += _each_label_forward(u, rows // labels, labels, int8)
        else:
            forward = counters(u).forward
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
    goodness prediction: a forward of every label (num_classes x batch_size rows, a dense first
    unit forming each image once). (With the greedy schedule the loop runs these passes over all
    units; here over `units`.)"""
    b, c = batch_size, num_classes
    if predict == "softmax":
        f = sum(units[i].out_features for i in readout_units(len(units)))
        return (_ff_forward(units, b, int8, goodness=False) + fp32(mul=2 * b * f, add=b * f)
                + gemm(b, f, c, False) + fp32(add=b * c)  # logits
                + fp32(mul=3 * b * c, add=3 * b * c)  # softmax, cross-entropy, dL/dlogits
                + gemm(c, b, f, False) + fp32(add=b * c))  # g_W, g_b
    if negatives == "hard":
        return _ff_forward(units, c * b, int8, goodness=True, labels=c)
    return ZERO


def chain_rungs(n_units: int, depth: int) -> list[tuple[int, int, int, int, int]]:
    """The chain look-ahead's ladder, as both ff_gradients (ffint8.train.ff, ff_units) walk it:
    per unit l from the last, (l, signals arriving from above, of them those handed on below,
    merges of two signals under one key, live signals handed on). Losses with j <= depth travel
    summed under key 0; a signal stops below unit j - depth."""
    rungs = []
    signals: list[int] = []  # keys of the live signals
    for l in range(n_units - 1, -1, -1):
        passed = merges = 0
        live: list[int] = []
        for j in [*signals, l] if l > 0 else []:
            if j > l - 1 + depth:
                continue
            passed += j != l
            key = 0 if j <= depth else j
            if key in live:
                merges += 1
            else:
                live.append(key)
        rungs.append((l, len(signals), passed, merges, len(live)))
        signals = live
    return rungs


def ff_step_ops(units: Sequence[Layer], batch_size: int, int8: bool, look_ahead: str = "none",
                lam_active: bool = True, chain_depth: int | None = None, peer: bool = False) -> OpCounts:
    """One ff_gradients call on 2*batch_size rows (positives and negatives), optimiser excluded.

    Mirrors ffint8.train.ff for dense units and ffint8.train.ff_units for conv units: the shared
    forward of every unit, its goodness and local gradient g_z = c * y, then per unit from the
    last: the chain signal (when active), the backward to its parameters (dense: g_W and g_b),
    and a backward to its input for every live signal chain passes down (dense: the input-
    gradient GEMM; then the rms norm's backward). collab differs from none only in per-row
    work, which is not counted. Dense signals are taken w.r.t. the ReLU's output and masked
    into z (one multiply each); conv signals are w.r.t. the unit's output y.
    """
    m = 2 * batch_size
    ops = _ff_forward(units, m, int8)
    for u in units:
        ops += fp32(mul=u.out_elems(m))  # g_z = c * y
        if peer:  # two batch means, the mask multiply, the add into g_z
            ops += fp32(mul=u.out_elems(m), add=3 * u.out_elems(m))
    chain = look_ahead == "chain" and lam_active
    depth = len(units) if chain_depth is None else chain_depth
    for l, incoming, passed, merges, live in chain_rungs(len(units), depth):
        u = units[l]
        c = counters(u)
        out, conv = u.out_elems(m), isinstance(u, ConvUnit)
        mask = 0 if conv else 1
        if chain and incoming:  # sum of k signals, (mask,) lam *, + g_z
            ops += fp32(mul=(1 + mask) * out, add=incoming * out)
        ops += c.weight_grad(u, m, int8)
        if not chain or l == 0:
            continue
        # (the weight pass forms no entry g_x although the unit's input requires grad:
        # Int8Conv2d skips a gradient the running backward will not use)
        ops += fp32(mul=mask * passed * out, add=merges * out)  # (s * mask,) merged signals
        back = c.input_grad(u, m, int8) + fp32(mul=3 * u.in_elems(m), add=2 * u.in_elems(m))
        ops += back * live  # to the input, then the norm's backward (3 mul, 2 add per input)
    return ops


def bp_step_ops(layers: Sequence[Layer], batch_size: int, algo: str) -> OpCounts:
    """One backprop step on batch_size rows (forward, cross-entropy, backward), optimiser
    excluded. layers: the MLP's dense layers, or a ConvNet's units and its PoolHead. The int8
    algorithms quantise each linear map's (dense or conv) input and weight in the forward and its
    output gradient once (shared by g_W and g_x); norms, activations and pooling stay float. The
    first layer's g_x is skipped (the data needs no gradient)."""
    int8 = algo in INT8_ALGOS
    b = batch_size
    ops = ZERO
    for layer in layers:
        ops += counters(layer).forward(layer, b, int8)
    logits = layers[-1].out_elems(b)
    ops += fp32(mul=3 * logits, add=3 * logits)  # log-softmax, NLL and its gradient
    for i, layer in enumerate(layers):
        c = counters(layer)
        ops += c.weight_grad(layer, b, int8, quantize_grad=True)
        if i > 0:
            ops += c.input_grad(layer, b, int8, quantize_grad=False)
        if algo in ("bp-ui8", "bp-gdai8"):
            ops += c.bp_extra(layer, b, algo)
    return ops


def step_ops(algo: str, layers: Sequence[Layer], batch_size: int, look_ahead: str = "none",
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


def epoch_ops(algo: str, layers: Sequence[Layer], batch_size: int, n_train: int, **kw) -> OpCounts:
    """One pass over n_train samples: full batches and the last, smaller one."""
    full, rest = divmod(n_train, batch_size)
    ops = step_ops(algo, layers, batch_size, **kw) * full
    if rest:
        ops += step_ops(algo, layers, rest, **kw)
    return ops


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def model_layers(cfg, in_features: int, num_classes: int, model=None) -> list[Layer]:
    """The layers a TrainConfig trains, from their shapes: its FF units (the MLP's dense layers,
    or the ConvUnits of a ConvNet, read off `model`, by default cfg's model built on the meta
    device); the backprop algorithms add the classifier head."""
    bp = cfg.ff.algo in BP_ALGOS
    if cfg.model == "mlp":
        return mlp_layers(in_features, cfg.hidden, num_classes if bp else None)
    units, head = conv_layers(model if model is not None else shape_model(cfg, in_features, num_classes))
    if not bp:
        return units
    if head is None:
        raise ConfigError(f"backprop counts of {cfg.model} need the model's classifier head")
    return [*units, head]


def run_ops(cfg, n_train: int, in_features: int, num_classes: int, model=None) -> dict:
    """Counts for a TrainConfig: per steady-state step and epoch (look-ahead active when the
    config has one) and for the whole run, epoch by epoch as the trainer schedules it (lambda =
    0 switches look-ahead off; the greedy schedule trains units[: u + 1] for unit u). model: the
    model being trained (a CNN's shapes are read off it; default: cfg's, built for the purpose).
    Returns {"per_step", "per_epoch", "run"} of OpCounts dicts and "steps_per_epoch"."""
    ff = cfg.ff
    algo = ff.algo
    bp = algo in BP_ALGOS
    layers = model_layers(cfg, in_features, num_classes, model)
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
