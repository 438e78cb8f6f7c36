"""Operation counts of a convolutional FF unit (ffint8.nn.blocks): its convolutions and the float
elementwise work around them, forward and backward, as autograd runs them.

A unit is described from layer shapes (ffint8.measure.convshapes reads them off a model): its
convolutions, split into `entry` ones (they read the unit's input) and `inner` ones, the
elementwise operations (norms, activations, residual adds, squeeze-excitation), `forks` (how many
extra times the input is read: the input gradient sums that many more terms), and the tensors
autograd saves for the backward (for ffint8.measure.footprint). Sizes are per sample.

Elementwise conventions (docs/measurement.md), per element, (multiplies, adds); a division,
square root or exp counts as one multiply, comparisons (ReLU, ReLU6) are free, and work per
channel or per sample (statistics once summed, scales) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ffint8.measure.counts import (
    LAYER_COUNTERS,
    ZERO,
    Conv,
    Counters,
    Dense,
    OpCounts,
    bp_grad_extra,
    fp32,
    linear_forward,
    linear_input_grad,
    linear_weight_grad,
)

# kind -> ((forward mul, add), (backward mul, add)) per element
ELEMENTWISE = {
    # training mode: statistics (x^2, two sums), then x * scale + shift with the affine folded in;
    # backward: x_hat again, g * x_hat, two channel sums, scale * (g - mean_g - x_hat * mean_gx)
    "batchnorm": ((2, 3), (4, 5)),
    "groupnorm": ((2, 3), (4, 5)),
    "relu": ((0, 0), (0, 0)),  # comparisons, forward and backward (a select by the sign)
    "relu6": ((0, 0), (0, 0)),
    "sigmoid": ((2, 1), (2, 1)),  # 1 / (1 + exp(-x)); g * y * (1 - y)
    "silu": ((3, 1), (5, 3)),  # x * sigmoid(x); g * s * (1 + x (1 - s)), s recomputed
    "add": ((0, 1), (0, 0)),  # a residual add; its gradient goes to both terms unchanged
    "fork": ((0, 0), (0, 1)),  # a tensor read twice: its gradient is the sum of both
    "mean": ((0, 1), (1, 0)),  # mean over H, W (squeeze, global pool); g / (H W) spread back
    "gate": ((1, 0), (2, 1)),  # x * s, s per channel; g_x = g s, g_s = sum over H, W of g x
}


@dataclass(frozen=True)
class Elementwise:
    """Float work over a tensor of `elems` values per sample."""

    kind: str
    elems: int

    def ops(self, rows: int, backward: bool = False) -> OpCounts:
        mul, add = ELEMENTWISE[self.kind][int(backward)]
        return fp32(mul * rows * self.elems, add * rows * self.elems)


class Saved(NamedTuple):
    """A tensor autograd keeps for the backward: `token` names it within its unit ("in": the
    unit's input, "out": its output), `elems` per sample. conv_input: saved by a convolution,
    which on the INT8 path keeps its own int8 copy instead of the float tensor."""

    token: str
    elems: int
    conv_input: bool = False


@dataclass(frozen=True)
class ConvUnit:
    """One convolutional FF unit from layer shapes. Shapes are (C, H, W) per sample."""

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    entry: tuple[Conv, ...]  # the convolutions that read the unit's input
    inner: tuple[Conv, ...]  # the others
    elementwise: tuple[Elementwise, ...]
    forks: int = 0  # extra reads of the unit's input (a residual, a shortcut)
    norm_params: int = 0  # scale and shift of the normalisation layers
    saved: tuple[Saved, ...] = ()

    @property
    def convs(self) -> tuple[Conv, ...]:
        return self.entry + self.inner

    @property
    def weights(self) -> int:
        return sum(c.weights for c in self.convs)

    @property
    def params(self) -> int:
        return sum(c.params for c in self.convs) + self.norm_params

    def in_elems(self, rows: int) -> int:
        c, h, w = self.in_shape
        return rows * c * h * w

    def out_elems(self, rows: int) -> int:
        c, h, w = self.out_shape
        return rows * c * h * w


@dataclass(frozen=True)
class PoolHead(Dense):
    """The backprop head of a ConvNet: global average pool over `spatial` = H*W positions, then a
    dense layer (in_features = channels)."""

    spatial: int = 1


def _elementwise(unit: ConvUnit, rows: int, backward: bool) -> OpCounts:
    return sum((e.ops(rows, backward) for e in unit.elementwise), ZERO)


def _convs(convs, fn, rows: int, int8: bool, *args) -> OpCounts:
    return sum((fn(c, rows, int8, *args) for c in convs), ZERO)


def unit_forward(unit: ConvUnit, rows: int, int8: bool) -> OpCounts:
    """The unit's body on rows samples (the FF length normalisation of its input aside)."""
    return _convs(unit.convs, linear_forward, rows, int8) + _elementwise(unit, rows, False)


def unit_weight_grad(unit: ConvUnit, rows: int, int8: bool, quantize_grad: bool = True) -> OpCounts:
    """A backward to the unit's parameters: every g_W (each conv's output gradient quantised
    once on the INT8 path), the g_x of inner convs (the same quantised gradient), every
    elementwise backward. The entry convs' g_x is not needed for it."""
    return (_convs(unit.convs, linear_weight_grad, rows, int8, quantize_grad)
            + _convs(unit.inner, linear_input_grad, rows, int8, False) + _elementwise(unit, rows, True))


def entry_input_grads(unit: ConvUnit, rows: int, int8: bool) -> OpCounts:
    """The entry convs' g_x, from output gradients already quantised."""
    return _convs(unit.entry, linear_input_grad, rows, int8, False)


def unit_input_grad(unit: ConvUnit, rows: int, int8: bool, quantize_grad: bool = True) -> OpCounts:
    """dL/d(input). quantize_grad=False: what a backward to the input adds to unit_weight_grad's
    (entry g_x, the fork sums). True: a backward of its own, to the input only: every g_x (each
    output gradient quantised), every elementwise backward, the fork sums (no g_W: Int8Conv2d
    forms none inside ffint8.nn.conv.input_grads_only(), as chain runs this backward)."""
    forks = fp32(add=unit.forks * unit.in_elems(rows))
    if not quantize_grad:
        return entry_input_grads(unit, rows, int8) + forks
    return _convs(unit.convs, linear_input_grad, rows, int8, True) + _elementwise(unit, rows, True) + forks


def unit_bp_extra(unit: ConvUnit, rows: int, algo: str) -> OpCounts:
    """bp-ui8 / bp-gdai8: their gradient handling at every convolution."""
    return sum((bp_grad_extra(c, rows, algo) for c in unit.convs), ZERO)


def _pool(head: PoolHead, rows: int, backward: bool) -> OpCounts:
    return Elementwise("mean", head.in_features * head.spatial).ops(rows, backward)


def head_forward(head: PoolHead, rows: int, int8: bool) -> OpCounts:
    return _pool(head, rows, False) + linear_forward(head, rows, int8)


def head_input_grad(head: PoolHead, rows: int, int8: bool, quantize_grad: bool = True) -> OpCounts:
    return linear_input_grad(head, rows, int8, quantize_grad) + _pool(head, rows, True)


LAYER_COUNTERS[ConvUnit] = Counters(unit_forward, unit_weight_grad, unit_input_grad, unit_bp_extra)
LAYER_COUNTERS[PoolHead] = Counters(head_forward, linear_weight_grad, head_input_grad, bp_grad_extra)
