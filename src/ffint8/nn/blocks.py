"""FF convolutional units: a conv block, ResNet's basic block, MobileNet-v2's inverted residual and
EfficientNet's MBConv with squeeze-excitation; and ConvNet, a stack of them with a backprop head.

Every unit is one FF unit: forward(h) length-normalises its input per sample (over C*H*W, as
ffint8.nn.functional.normalize does for a dense row), runs its body and returns the output feature
map y (B, C, H, W), whose goodness is the mean square of y per sample. forward is plain autograd,
so ffint8.train.ff_units gets every gradient (own loss, chain look-ahead) by backward passes.

Normalisation layer ("batch", the default): BatchNorm2d in train mode over all 2B rows of an FF
step, positives and negatives together. The two halves hold the same images with different
labels, so their statistics mix symmetrically and no sample can tell from them which half it is
in; the unit learns its goodness threshold through the norm's scale and shift. Inference (goodness
prediction: C label variants per image, one positive and C-1 negatives) uses the running
statistics (ffint8.train.ff_units puts the units in eval mode), so a sample's score does not depend
on its batch. "group" (GroupNorm, per sample, the same statistics at training and at test) and
"none" (conv with bias, no norm: a 1x1 ConvBlock on 1x1 images is then exactly an FFDense unit)
are offered too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ffint8.errors import ConfigError
from ffint8.nn import functional as FF
from ffint8.nn.conv import conv2d_int8, conv_kernel
from ffint8.nn.norm import batch_norm_act
from ffint8.quant.fastsr import mix64

NORMS = ("batch", "group", "none")
ACTIVATIONS = ("relu", "relu6", "silu", "sigmoid", None)


@dataclass(frozen=True)
class Arith:
    """How a unit's convolutions compute: float32 F.conv2d, or int8 x int8 -> int32 (Int8Conv2d).

    seed: keys stochastic rounding of the conv inputs and gradients (training); None rounds to
    nearest (inference). kernel: an FFConfig.int8_kernel name (auto, int_mm, float-exact,
    reference), mapped onto the int8 convolution kernel that computes the same way.
    """

    int8: bool = False
    seed: int | None = None
    weight_channel: bool = False
    kernel: str = "auto"

    def sub(self, k: int) -> Arith:
        """The arithmetic of a unit's k-th convolution: its own stochastic-rounding stream."""
        return self if self.seed is None else replace(self, seed=mix64(self.seed ^ (k + 1)))

    def conv2d(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """conv's convolution of x (B, C, H, W), with conv's weight, bias, stride, padding, groups."""
        if not self.int8:
            return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, 1, conv.groups)
        w, b = conv.weight, conv.bias
        if not torch.is_grad_enabled():  # parameters would make Int8Conv2d think it trains
            w, b = w.detach(), None if b is None else b.detach()
        return conv2d_int8(x, w, b, conv.stride, conv.padding, conv.groups, self.seed,
                           self.weight_channel, conv_kernel(self.kernel))


FLOAT = Arith()


class ConvOp(Protocol):
    """What a unit's convolutions need of their arithmetic: Arith, or one of a backprop
    baseline's quantised layers (ffint8.bp.linear.Int8Layer)."""

    def conv2d(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class LayerArith:
    """Arith's interface with an op of its own for every convolution: conv2d(x, conv) runs
    ops[conv].conv2d(x, conv). The backprop baselines give each conv layer its own quantiser this
    way, through the blocks unchanged (sub(k) keeps the mapping: there is no seed to split)."""

    ops: dict[nn.Conv2d, ConvOp]

    def sub(self, k: int) -> LayerArith:
        return self

    def conv2d(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        return self.ops[conv].conv2d(x, conv)


def cnn_input(model: str, in_features: int, shape: tuple[int, int, int] | None = None,
              width: float = 1.0, readout: bool = False) -> tuple[int, int, int]:
    """Check a CNN builder's options; return (C, H, W) of the flattened images it gets:
    784 -> 28x28 grey (Fashion-MNIST, MNIST), 3072 -> 32x32 RGB (CIFAR-10), or `shape` if given."""
    if not width > 0:
        raise ConfigError(f"model {model}: the width multiplier must be > 0, got {width}")
    if readout:
        raise ConfigError(f"--predict softmax: the softmax readout exists for the mlp only, "
                          f"not {model}; use --predict goodness")
    if shape is not None:
        shape = tuple(int(v) for v in shape)
        if len(shape) != 3 or min(shape) < 1 or shape[0] * shape[1] * shape[2] != in_features:
            raise ConfigError(f"model {model}: image shape {shape} does not hold {in_features} "
                              "input values")
        return shape
    known = {784: (1, 28, 28), 3072: (3, 32, 32)}
    if in_features not in known:
        raise ConfigError(f"model {model} takes 28x28 grey images (784 values) or 32x32 RGB "
                          f"images (3072 values), not {in_features} input values")
    return known[in_features]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of divisor, never more than 10% down."""
    n = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return n + divisor if n < 0.9 * v else n


def activation(x: torch.Tensor, kind: str | None) -> torch.Tensor:
    if kind == "relu":
        return F.relu(x)
    if kind == "relu6":
        return F.relu6(x)
    if kind == "silu":
        return F.silu(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    return x


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # groups of 8 channels (one group where they do not divide)
        return nn.GroupNorm(channels // 8 if channels % 8 == 0 else 1, channels)
    return nn.Identity()


class ConvNorm(nn.Module):
    """conv (k x k, stride, groups; a bias only without a norm) -> norm -> activation."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 norm: str = "batch", act: str | None = "relu") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}")
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=norm == "none")
        self.norm = make_norm(norm, cout)
        self.act = act

    def forward(self, x: torch.Tensor, arith: Arith = FLOAT) -> torch.Tensor:
        z = arith.conv2d(x, self.conv)
        y = batch_norm_act(z, self.norm, self.act)  # training on the CPU: one fused kernel
        return activation(self.norm(z), self.act) if y is None else y


class FFUnit(nn.Module):
    """One FF unit: y = body(normalise(h)). Subclasses define body(a, arith) -> y."""

    def prepare(self, h: torch.Tensor) -> torch.Tensor:
        """The unit's input as an image batch (B, C, H, W); the stem reshapes flat data here."""
        return h

    def body(self, a: torch.Tensor, arith: Arith) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, h: torch.Tensor, norm: FF.Norm | None = "rms",
                arith: Arith = FLOAT) -> torch.Tensor:
        """h (B, C, H, W) -> y (B, C', H', W'). norm: "rms" or "l2" length-normalises each sample
        over C*H*W first (FF); None skips it (the backprop network has no such layer)."""
        h = self.prepare(h)
        if norm is not None:
            h = FF.normalize(h, norm)[0]  # over C*H*W per sample
        return self.body(h, arith)


class ConvBlock(FFUnit):
    """conv -> norm -> activation as one unit (a stem, or MobileNet's and EfficientNet's last
    1x1 conv)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, norm: str = "batch",
                 act: str | None = "relu") -> None:
        super().__init__()
        self.block = ConvNorm(cin, cout, k, stride, norm=norm, act=act)

    def body(self, a: torch.Tensor, arith: Arith) -> torch.Tensor:
        return self.block(a, arith.sub(0))


class StemBlock(ConvBlock):
    """The first unit: takes the pipeline's flattened images (B, C*H*W), label one-hot written
    into the first num_classes values, and convolves them as (B, C, H, W).

    label_plane: also append num_classes constant planes, plane k filled with value k of that
    one-hot (so a neutral label 1/C gives planes of 1/C): every position of the first conv sees
    the label, not only the top-left corner where the one-hot pixels lie.
    """

    def __init__(self, image_shape: tuple[int, int, int], cout: int, num_classes: int,
                 label_plane: bool = False, norm: str = "batch", act: str | None = "relu") -> None:
        extra = num_classes if label_plane else 0
        super().__init__(image_shape[0] + extra, cout, 3, 1, norm, act)
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.label_plane = label_plane

    def prepare(self, h: torch.Tensor) -> torch.Tensor:
        c, hh, ww = self.image_shape
        if h.dim() != 2 or h.shape[1] != c * hh * ww:
            raise ValueError(f"expected flattened images (B, {c * hh * ww}), got {tuple(h.shape)}")
        img = h.reshape(-1, c, hh, ww)
        if not self.label_plane:
            return img
        planes = h[:, : self.num_classes, None, None].expand(-1, -1, hh, ww)
        return torch.cat([img, planes], dim=1)


class BasicBlock(FFUnit):
    """ResNet's basic block: relu(bn(conv3x3(relu(bn(conv3x3(a))))) + shortcut(a)); the shortcut
    is a strided 1x1 conv + norm where the shape changes, else a itself."""

    def __init__(self, cin: int, cout: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 3, stride, norm=norm, act="relu")
        self.conv2 = ConvNorm(cout, cout, 3, 1, norm=norm, act=None)
        self.shortcut = (ConvNorm(cin, cout, 1, stride, norm=norm, act=None)
                         if stride != 1 or cin != cout else None)

    def body(self, a: torch.Tensor, arith: Arith) -> torch.Tensor:
        y = self.conv2(self.conv1(a, arith.sub(0)), arith.sub(1))
        skip = a if self.shortcut is None else self.shortcut(a, arith.sub(2))
        return F.relu(y + skip)


class SqueezeExcite(nn.Module):
    """x * sigmoid(conv1x1(silu(conv1x1(mean_hw(x))))): per-channel gates from global context."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = ConvNorm(channels, squeeze, 1, norm="none", act="silu")
        self.expand = ConvNorm(squeeze, channels, 1, norm="none", act="sigmoid")

    def forward(self, x: torch.Tensor, arith: Arith = FLOAT) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * self.expand(self.reduce(s, arith.sub(0)), arith.sub(1))


class InvertedResidual(FFUnit):
    """MobileNet-v2 (expand != 1: 1x1 expand) -> depthwise 3x3 -> 1x1 linear projection, plus a
    when the shape is kept; EfficientNet's MBConv when kernel, activation and se are set.

    The output of the projection has no activation (the linear bottleneck), so goodness is the
    mean square of a signed map here.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int = 3,
                 act: str = "relu6", se_squeeze: int = 0, norm: str = "batch") -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvNorm(cin, hidden, 1, norm=norm, act=act) if expand != 1 else None
        self.depthwise = ConvNorm(hidden, hidden, kernel, stride, groups=hidden, norm=norm, act=act)
        self.se = SqueezeExcite(hidden, se_squeeze) if se_squeeze else None
        self.project = ConvNorm(hidden, cout, 1, norm=norm, act=None)
        self.residual = stride == 1 and cin == cout

    def body(self, a: torch.Tensor, arith: Arith) -> torch.Tensor:
        x = a if self.expand is None else self.expand(a, arith.sub(0))
        x = self.depthwise(x, arith.sub(1))
        if self.se is not None:
            x = self.se(x, arith.sub(2))
        y = self.project(x, arith.sub(3))
        return y + a if self.residual else y


def mbconv(cin: int, cout: int, stride: int, expand: int, kernel: int,
           se_ratio: float = 0.25, norm: str = "batch") -> InvertedResidual:
    """EfficientNet's MBConv: SiLU, a k x k depthwise conv and squeeze-excitation down to
    se_ratio of the block's input channels (0: none)."""
    squeeze = max(1, int(cin * se_ratio)) if se_ratio > 0 else 0
    return InvertedResidual(cin, cout, stride, expand, kernel, "silu", squeeze, norm)


class ConvNet(nn.Module):
    """FF units in order (units[0] a StemBlock) and, with classifier=True, the backprop network
    built from the same units: units without normalisation -> global average pool -> linear."""

    def __init__(self, units: list[FFUnit], out_channels: int, num_classes: int,
                 classifier: bool) -> None:
        super().__init__()
        if not isinstance(units[0], StemBlock):
            raise TypeError("the first unit of a ConvNet must be a StemBlock")
        self.units = nn.ModuleList(units)
        self.num_classes = num_classes
        c, h, w = units[0].image_shape
        self.in_features = c * h * w
        self.head = nn.Linear(out_channels, num_classes) if classifier else None
        self.readout = None  # no softmax readout (--predict softmax is the MLP's)

    def convs(self) -> list[nn.Conv2d]:
        """Every convolution of the units, in module order (the order the units run them)."""
        return [m for m in self.units.modules() if isinstance(m, nn.Conv2d)]

    def linear_layers(self) -> list[tuple[nn.Parameter, nn.Parameter | None]]:
        """(weight, bias) of every layer the backprop baselines quantise, as FFMLP's: each
        convolution (weight (O, C/G, kh, kw); bias (O,), or None under a norm), then the head's
        (N, D) and (N,). The norms' parameters are not among them."""
        layers = [(c.weight, c.bias) for c in self.convs()]
        if self.head is not None:
            layers.append((self.head.weight, self.head.bias))
        return layers

    def forward(self, x: torch.Tensor, ops: Sequence[ConvOp | Callable] | None = None
                ) -> torch.Tensor:
        """Backprop forward: (B, D) flattened images -> (B, num_classes) logits.

        ops: one per layer of linear_layers(), so a baseline can swap in its quantised layers:
        each convolution's a ConvOp, the head's a LinearOp (ffint8.models.mlp: (x, W, b) -> y).
        Default: float32 (F.conv2d, F.linear).
        """
        if self.head is None:
            raise RuntimeError("this model was built without a classifier head (classifier=False)")
        arith, head = FLOAT, F.linear
        if ops is not None:
            convs = self.convs()
            if len(ops) != len(convs) + 1:
                raise ValueError(f"expected {len(convs) + 1} ops (one per conv, then the head), "
                                 f"got {len(ops)}")
            arith, head = LayerArith(dict(zip(convs, ops[:-1]))), ops[-1]
        h = x
        for unit in self.units:
            h = unit(h, norm=None, arith=arith)
        return head(h.mean(dim=(2, 3)), self.head.weight, self.head.bias)
