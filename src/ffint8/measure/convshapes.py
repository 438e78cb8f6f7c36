"""The layer shapes of a ConvNet (ffint8.nn.blocks) read off its modules: one ConvUnit per FF unit
and the backprop head, for the operation counts and the analytic footprint.

No forward pass: sizes follow from the image shape and each conv's kernel, stride and padding.
What each unit type computes around its convolutions (norms, activations, residual adds,
squeeze-excitation) and which tensors autograd saves for the backward is read off the unit's
body in ffint8.nn.blocks; a unit type not described here is a ConfigError.
Saved tensors (PyTorch's autograd): a conv its input; BatchNorm and GroupNorm their input; ReLU
and sigmoid their output, ReLU6 (hardtanh) and SiLU their input; x * gate both operands; adds,
means and reshapes nothing. Where the C kernel is built, BatchNorm followed by ReLU or ReLU6 is
one fused operation in training (ffint8.nn.norm) that keeps only the norm's input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ffint8.errors import ConfigError
from ffint8.measure.convunit import ConvUnit, Elementwise, PoolHead, Saved
from ffint8.measure.counts import Conv
from ffint8.models import create_model
from ffint8.nn.blocks import BasicBlock, ConvBlock, ConvNet, ConvNorm, InvertedResidual, SqueezeExcite
from ffint8.nn.norm import fuses

IN, OUT = "in", "out"
Act = tuple[str, tuple[int, int, int]]  # a tensor inside a unit: (token, (C, H, W))
NORM_KINDS = {nn.BatchNorm2d: "batchnorm", nn.GroupNorm: "groupnorm"}


class UnitTrace:
    """Collects one unit's ConvUnit while a describer walks its body, tensor by tensor."""

    def __init__(self, in_shape: tuple[int, int, int]) -> None:
        self.in_shape = in_shape
        self.entry: list[Conv] = []
        self.inner: list[Conv] = []
        self.elementwise: list[Elementwise] = []
        self.saved: list[Saved] = []
        self.forks = self.norm_params = self._tokens = 0

    @property
    def input(self) -> Act:
        return IN, self.in_shape

    def new(self, shape: tuple[int, int, int]) -> Act:
        self._tokens += 1
        return f"t{self._tokens}", shape

    def save(self, act: Act, conv_input: bool = False) -> None:
        self.saved.append(Saved(act[0], math.prod(act[1]), conv_input))

    def op(self, kind: str, act: Act) -> None:
        self.elementwise.append(Elementwise(kind, math.prod(act[1])))

    def fork(self, act: Act) -> None:
        """act is read a second time: its gradient sums one more term."""
        if act[0] == IN:
            self.forks += 1
        else:
            self.op("fork", act)

    def conv_norm(self, cn: ConvNorm, x: Act) -> Act:
        """conv -> norm -> activation (ffint8.nn.blocks.ConvNorm) applied to x."""
        conv = cn.conv
        c, h, w = x[1]
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        size = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        layer = Conv(c, conv.out_channels, (kh, kw), (h, w), size, (sh, sw), conv.groups,
                     conv.bias is not None)
        (self.entry if x[0] == IN else self.inner).append(layer)
        self.save(x, conv_input=True)
        y = self.new((conv.out_channels, *size))
        kind = NORM_KINDS.get(type(cn.norm))
        if kind is not None:
            self.op(kind, y)
            self.save(y)
            self.norm_params += sum(p.numel() for p in cn.norm.parameters())
            y = self.new(y[1])
        if cn.act is None:
            return y
        self.op(cn.act, y)
        out = self.new(y[1])
        if not fuses(cn.norm, cn.act):  # fused: the norm's input is all it keeps
            self.save(out if cn.act in ("relu", "sigmoid") else y)
        return out

    def finish(self, out: Act) -> ConvUnit:
        saved = tuple(s._replace(token=OUT) if s.token == out[0] else s for s in self.saved)
        return ConvUnit(self.in_shape, out[1], tuple(self.entry), tuple(self.inner),
                        tuple(self.elementwise), self.forks, self.norm_params, saved)


def _conv_block(t: UnitTrace, unit: ConvBlock) -> Act:
    return t.conv_norm(unit.block, t.input)


def _basic_block(t: UnitTrace, unit: BasicBlock) -> Act:
    """relu(conv2(conv1(a)) + shortcut(a))."""
    y = t.conv_norm(unit.conv2, t.conv_norm(unit.conv1, t.input))
    if unit.shortcut is not None:
        t.conv_norm(unit.shortcut, t.input)
    t.fork(t.input)
    t.op("add", y)
    t.op("relu", y)
    out = t.new(y[1])
    t.save(out)  # the ReLU keeps its output
    return out


def _squeeze_excite(t: UnitTrace, se: SqueezeExcite, x: Act) -> Act:
    """x * sigmoid(expand(silu(reduce(mean_hw(x)))))."""
    t.op("mean", x)
    gate = t.conv_norm(se.expand, t.conv_norm(se.reduce, t.new((x[1][0], 1, 1))))
    t.fork(x)
    t.op("gate", x)
    t.save(x)
    t.save(gate)
    return t.new(x[1])


def _inverted_residual(t: UnitTrace, unit: InvertedResidual) -> Act:
    """[expand 1x1] -> depthwise -> [squeeze-excite] -> project 1x1 (+ a)."""
    h = t.input if unit.expand is None else t.conv_norm(unit.expand, t.input)
    h = t.conv_norm(unit.depthwise, h)
    if unit.se is not None:
        h = _squeeze_excite(t, unit.se, h)
    y = t.conv_norm(unit.project, h)
    if not unit.residual:
        return y
    t.fork(t.input)
    t.op("add", y)
    return t.new(y[1])


DESCRIBERS = {ConvBlock: _conv_block, BasicBlock: _basic_block, InvertedResidual: _inverted_residual}


def describe_unit(unit: nn.Module, in_shape: tuple[int, int, int]) -> ConvUnit:
    """The ConvUnit of one FF unit whose (prepared) input is in_shape (C, H, W)."""
    for cls in type(unit).__mro__:
        if cls in DESCRIBERS:
            t = UnitTrace(in_shape)
            return t.finish(DESCRIBERS[cls](t, unit))
    raise ConfigError(f"no operation counts for unit type {type(unit).__name__}")


def conv_layers(model: ConvNet) -> tuple[list[ConvUnit], PoolHead | None]:
    """Every FF unit of a ConvNet in order, and its head (None when built without one)."""
    stem = model.units[0]
    _, h, w = stem.image_shape
    shape = (stem.block.conv.in_channels, h, w)  # the image, with its label planes if any
    units = []
    for unit in model.units:
        units.append(describe_unit(unit, shape))
        shape = units[-1].out_shape
    c, h, w = shape
    head = None if model.head is None else PoolHead(c, model.head.out_features, spatial=h * w)
    return units, head


def shape_model(cfg, in_features: int, num_classes: int) -> nn.Module:
    """cfg's model with its classifier head, on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return create_model(cfg.model, in_features=in_features, hidden=cfg.hidden,
                            num_classes=num_classes, classifier=True,
                            readout=cfg.ff.predict == "softmax", width=cfg.width,
                            label_plane=cfg.label_plane)
