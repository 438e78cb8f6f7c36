"""Analytic training memory of an MLP per algorithm: what must be resident during one step.

Bytes of parameters (float32 master copy), gradients, optimiser state (Adam: 2 floats per
parameter; SGD with momentum: 1) and what each algorithm keeps between its forward pass and its
update, read off the code:

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
Transients (a tensor made and freed inside one function) are left out: this is a lower bound on
what a step needs, not a prediction of the process's RSS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ffint8.errors import ConfigError
from ffint8.measure.opcount import ALL_ALGOS, BP_ALGOS, INT8_ALGOS, Dense, mlp_layers

F32 = 4
I8 = 1
OPTIMIZER_STATE = {"adam": 2, "sgd": 1}  # floats per parameter


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


def footprint(algo: str, in_features: int, hidden: Sequence[int], batch_size: int,
              num_classes: int = 10, optimizer: str = "adam", kept: str = "code") -> Footprint:
    """Training memory of the MLP in_features-hidden... (BP adds a num_classes head).

    kept: "code", what this project's trainers keep; "minimal", what FF needs at least (equal
    to "code" for BP)."""
    if algo not in ALL_ALGOS:
        raise ConfigError(f"no footprint for algorithm {algo!r}; known: {', '.join(ALL_ALGOS)}")
    if optimizer not in OPTIMIZER_STATE:
        raise ConfigError(f"invalid optimizer {optimizer!r}; choose one of: adam, sgd")
    if kept not in ("code", "minimal"):
        raise ConfigError(f"invalid kept {kept!r}; choose one of: code, minimal")
    bp = algo in BP_ALGOS
    layers = mlp_layers(in_features, hidden, num_classes if bp else None)
    n = sum(layer.params for layer in layers)
    if bp:
        act, weights = _bp_kept(layers, batch_size, algo)
    else:
        act, weights = _ff_kept(layers, batch_size, algo == "ff-int8", kept)
    return Footprint(parameters=n * F32, gradients=n * F32,
                     optimizer=n * F32 * OPTIMIZER_STATE[optimizer], activations=act,
                     weight_copies=weights)
