"""Analytic training memory per algorithm: what must be resident during one step.

Bytes of parameters (float32 master copy), gradients, optimiser state (Adam: 2 floats per
parameter; SGD with momentum: 1; adam8: 2 bytes and a float32 scale per 256) and what each
algorithm keeps between its forward pass and its update, read off the code. Gradients are float32
for every parameter at once for backprop; FF steps each unit as soon as its gradients are final
(ffint8.train.loop's per-unit update), so the largest unit's only. FF-INT8's dense units with
Adam, AdamW or adam8 form a weight's gradient only as an int32 accumulator, a block of rows at a
time (ffint8.train.factored, where the C kernel is built): 4 bytes a value, at most 4 MB (Adam)
or 1 MB (adam8) of it.

- ff-int8 / ff-fp32 (ffint8.train.ff, nn.dense): all units' DenseRecords live until the last
  unit is updated. Per unit, for 2B rows: its input normalised (int8 on the INT8 path, float32
  on the float path), its float32 output y, its float32 local gradient g_z (the `local` list),
  the input's norm (one float per row); on the INT8 path the int8 weight copy w_q. The input
  batch (2B, D0) is kept too; each unit's raw input is the previous unit's y (not a copy).
  kept="minimal" is what the method needs (PAPER.md section 2): the int8 (or float) inputs and
  float outputs of all units (the shared forward holds them all), but g_z one unit at a time and
  no weight copy (none/collab need no input gradient).
- bp-fp32: autograd keeps every layer's float32 input for B rows (a ReLU's output is the next
  layer's input, kept once) and the log-softmax output (B, C).
- bp-int8 / bp-ui8 / bp-gdai8: each quantised linear keeps its int8 input and int8 weight; the
  ReLU after each hidden layer still keeps its float32 output (for its backward mask).
CNNs (conv_footprint; the units' saved tensors are read off ffint8.nn.blocks by
ffint8.measure.convshapes): what autograd saves for the backward, per unit, for 2B rows (FF) or
B rows (BP); a convolution saves its input as float32 on the float path and as its own int8 copy
(plus an int8 weight copy) on the INT8 path; norms and activations save float32 tensors.
- ff-int8 / ff-fp32, kept="code" (ffint8.train.ff_units): one forward builds every unit's graph
  and they live until the backward, so all units' saved tensors at once, each unit's output
  (kept by its goodness), and the input batch.
- kept="minimal": none and collab one unit's graph at a time (forward a unit, update it, keep its
  output for the next; collab then needs every unit's goodness first, from a forward without
  graphs); chain the graphs of the units a signal crosses (l .. l + depth) and the input of the
  lowest one. Int8 weight copies only of the convs whose input gradient is needed.
- bp-*: every unit's saved tensors for B rows (a unit's input is the previous unit's output),
  the pooled features (int8 on the int8 paths) and int8 head weight, the log-softmax output.
Per-row and per-channel tensors (norms, batch statistics, scales) are left out.
Transients (a tensor made and freed inside one function) are left out: this is a lower bound on
what a step needs, not a prediction of the process's RSS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ffint8.errors import ConfigError
from ffint8.measure.convunit import ConvUnit, PoolHead, Saved
from ffint8.measure.opcount import ALL_ALGOS, BP_ALGOS, INT8_ALGOS, Dense, mlp_layers, model_layers

F32 = 4
I8 = 1
I32 = 4
# bytes of optimiser state per parameter
OPTIMIZER_STATE = {"adam": 2 * F32, "adamw": 2 * F32, "sgd": F32, "adam8": 2 * (I8 + F32 / 256)}


@dataclass(frozen=True)
class Footprint:
    """Bytes resident during a training step, by kind."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int  # kept between the forward and the update (inputs, outputs, g_z, norms)
    weight_copies: int  # int8 weights kept for the backward

    @property
    def total(self) -> int:
        return (self.parameters + self.gradients + self.optimizer + self.activations
                + self.weight_copies)

    def to_dict(self) -> dict[str, float]:
        """MB (2^20 bytes) per kind and in total."""
        d = {k: getattr(self, k) for k in ("parameters", "gradients", "optimizer", "activations",
                                           "weight_copies")}
        d["total"] = self.total
        return {f"{k}_mb": round(v / 2**20, 3) for k, v in d.items()}


def _ff_kept(units: Sequence[Dense], batch_size: int, int8: bool, kept: str) -> tuple[int, int]:
    m = 2 * batch_size
    act = units[0].in_elems(m) * F32  # the input batch, positives and negatives
    g_z = []
    for u in units:
        act += u.in_elems(m) * (I8 if int8 else F32)  # normalised input a (or a_q)
        act += u.out_elems(m) * F32 + m * F32  # y, and the input's norm r (one per row)
        g_z.append(u.out_elems(m) * F32)
    weights = sum(u.weights for u in units) * I8 if int8 else 0  # w_q; the float path shares W
    if kept == "minimal":
        return act + max(g_z), 0
    return act + sum(g_z), weights


def _bp_kept(layers: Sequence[Dense], batch_size: int, algo: str) -> tuple[int, int]:
    b = batch_size
    logits = layers[-1].out_elems(b) * F32
    if algo not in INT8_ALGOS:
        return sum(layer.in_elems(b) for layer in layers) * F32 + logits, 0
    acts = sum(layer.in_elems(b) for layer in layers) * I8  # int8 inputs
    acts += sum(layer.out_elems(b) for layer in layers[:-1]) * F32  # ReLU outputs (masks)
    return acts + logits, sum(layer.weights for layer in layers) * I8


def _check(algo: str, optimizer: str, kept: str) -> None:
    if algo not in ALL_ALGOS:
        raise ConfigError(f"no footprint for algorithm {algo!r}; known: {', '.join(ALL_ALGOS)}")
    if optimizer not in OPTIMIZER_STATE:
        raise ConfigError(f"invalid optimizer {optimizer!r}; choose one of: "
                          f"{', '.join(OPTIMIZER_STATE)}")
    if kept not in ("code", "minimal"):
        raise ConfigError(f"invalid kept {kept!r}; choose one of: code, minimal")


def _factored_gradient(layer: Dense, optimizer: str) -> int:
    """Bytes of a dense FF-INT8 unit's gradient as the factored step holds it: the int32
    accumulator of one block of rows, and the float32 bias gradient."""
    from ffint8.train.adam8 import ADAM8_BLOCK_BYTES, row_multiple
    from ffint8.train.factored import BLOCK_BYTES, block_rows

    cols = layer.in_features
    if optimizer == "adam8":
        rows = block_rows(cols, ADAM8_BLOCK_BYTES, row_multiple(cols))
    else:
        rows = block_rows(cols, BLOCK_BYTES)
    return min(rows, layer.out_features) * cols * I32 + layer.out_features * F32


def _footprint(layers: Sequence, algo: str, optimizer: str, activations: int,
               weight_copies: int) -> Footprint:
    """Gradients alive at once: backprop's of every layer; FF's of its largest unit only (the
    per-unit update), dense FF-INT8 units' as the factored step holds them."""
    sizes = [layer.params for layer in layers]
    n_params = sum(sizes)
    from ffint8.train.factored import FACTORED_OPTIMIZERS

    if algo in BP_ALGOS:
        gradients = n_params * F32
    elif (algo == "ff-int8" and optimizer in FACTORED_OPTIMIZERS
          and all(isinstance(layer, Dense) for layer in layers)):
        gradients = max(_factored_gradient(layer, optimizer) for layer in layers)
    else:
        gradients = max(sizes) * F32
    return Footprint(parameters=n_params * F32, gradients=gradients,
                     optimizer=round(n_params * OPTIMIZER_STATE[optimizer]), activations=activations,
                     weight_copies=weight_copies)


def footprint(algo: str, in_features: int, hidden: Sequence[int], batch_size: int,
              num_classes: int = 10, optimizer: str = "adam", kept: str = "code") -> Footprint:
    """Training memory of the MLP in_features-hidden... (BP adds a num_classes head).

    kept: "code", what this project's trainers keep; "minimal", what FF needs at least (equal
    to "code" for BP)."""
    _check(algo, optimizer, kept)
    bp = algo in BP_ALGOS
    layers = mlp_layers(in_features, hidden, num_classes if bp else None)
    if bp:
        act, weights = _bp_kept(layers, batch_size, algo)
    else:
        act, weights = _ff_kept(layers, batch_size, algo == "ff-int8", kept)
    return _footprint(layers, algo, optimizer, act, weights)


def saved_bytes(saved: list[Saved], rows: int, int8: bool) -> int:
    """Bytes of saved tensors for `rows` samples: a float tensor once however many ops keep it
    (by token); a conv input on the INT8 path as that conv's own int8 copy."""
    floats: dict[str, int] = {}
    copies = 0
    for s in saved:
        if s.conv_input and int8:
            copies += s.elems
        else:
            floats[s.token] = s.elems
    return rows * (F32 * sum(floats.values()) + I8 * copies)


def _unit_saved(units: Sequence[ConvUnit], l: int, bp: bool) -> list[Saved]:
    """Unit l's saved tensors, their tokens made global: its input is its normalised input
    (FF) or the previous unit's output (BP)."""
    def name(token: str) -> str:
        return f"{l - 1}:out" if (bp and token == "in" and l > 0) else f"{l}:{token}"

    return [s._replace(token=name(s.token)) for s in units[l].saved]


def _ff_window(units: Sequence[ConvUnit], window: range, connected: bool, int8: bool,
               code: bool) -> tuple[list[Saved], int]:
    """The saved tensors of units in `window` and their int8 weight copies (code: every conv's;
    else those whose input gradient is needed: inner convs, and entry ones when connected)."""
    saved, weights = [], 0
    for l in window:
        u = units[l]
        saved += _unit_saved(units, l, bp=False) + [Saved(f"{l}:out", u.out_elems(1))]  # goodness
        link = connected and l > 0
        if link:  # the norm keeps its input, the previous unit's output
            saved.append(Saved(f"{l - 1}:out", u.in_elems(1)))
        needed = u.convs if (code or link) else u.inner
        weights += sum(c.weights for c in needed) * I8 if int8 else 0
    return saved, weights


def _ff_conv_kept(units: Sequence[ConvUnit], rows: int, int8: bool, kept: str, look_ahead: str,
                  chain_depth: int | None) -> tuple[int, int]:
    n = len(units)
    chain = look_ahead == "chain"
    depth = n if chain_depth is None else chain_depth
    if kept == "code":
        windows = [range(n)]
    else:
        windows = [range(l, min(n, l + 1 + (depth if chain else 0))) for l in range(n)]
    best = (0, 0)
    for w in windows:
        saved, weights = _ff_window(units, w, chain, int8, kept == "code")
        best = max(best, (saved_bytes(saved, rows, int8), weights), key=sum)
    return best


def _bp_conv_kept(units: Sequence[ConvUnit], head: PoolHead, rows: int, int8: bool) -> tuple[int, int]:
    saved = [s for l in range(len(units)) for s in _unit_saved(units, l, bp=True)]
    saved += [Saved("head:in", head.in_features, conv_input=True),  # the linear's input, pooled
              Saved("logits", head.out_features)]  # the log-softmax output
    weights = (sum(u.weights for u in units) + head.weights) * I8 if int8 else 0
    return saved_bytes(saved, rows, int8), weights


def conv_footprint(algo: str, layers: Sequence, batch_size: int, in_features: int,
                   optimizer: str = "adam", kept: str = "code", look_ahead: str = "collab",
                   chain_depth: int | None = None) -> Footprint:
    """Training memory of a ConvNet from its layers (ffint8.measure.opcount.model_layers: the
    ConvUnits, and for BP the PoolHead). in_features: values per input image (FF keeps the
    input batch). kept: as for footprint()."""
    _check(algo, optimizer, kept)
    int8 = algo in INT8_ALGOS
    if algo in BP_ALGOS:
        act, weights = _bp_conv_kept(layers[:-1], layers[-1], batch_size, int8)
    else:
        act, weights = _ff_conv_kept(layers, 2 * batch_size, int8, kept, look_ahead, chain_depth)
        act += 2 * batch_size * in_features * F32
    return _footprint(layers, algo, optimizer, act, weights)


def run_footprint(cfg, in_features: int, num_classes: int, kept: str = "code",
                  model=None) -> Footprint:
    """The footprint of a TrainConfig's model and algorithm (model: as for opcount.run_ops)."""
    if cfg.model == "mlp":
        return footprint(cfg.ff.algo, in_features, cfg.hidden, cfg.batch_size, num_classes,
                         cfg.optimizer, kept)
    return conv_footprint(cfg.ff.algo, model_layers(cfg, in_features, num_classes, model),
                          cfg.batch_size, in_features, cfg.optimizer, kept, cfg.ff.look_ahead,
                          cfg.ff.chain_depth)
