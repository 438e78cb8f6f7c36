"""Operation counts of single layers: OpCounts, dense and conv layers, the optimiser, and what the
int8 backprop baselines add to a layer's backward. ffint8.measure.opcount adds them up into
training steps; docs/measurement.md gives the conventions.

A dense layer and a convolution are both linear maps, counted alike from four numbers: the
elements of its input and of its output, its weights and its multiply-accumulates (MACs). A conv
is a GEMM per group (im2col): M = rows*Ho*Wo, K = (Cin/groups)*kh*kw, N = Cout/groups, so
rows*Ho*Wo * (Cin/groups)*kh*kw * Cout MACs in all; its weight gradient and input gradient have
the same MACs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, NamedTuple

from ffint8.errors import ConfigError

FF_ALGOS = ("ff-int8", "ff-fp32")
BP_ALGOS = ("bp-fp32", "bp-int8", "bp-ui8", "bp-gdai8")
INT8_ALGOS = ("ff-int8", "bp-int8", "bp-ui8", "bp-gdai8")
ALL_ALGOS = FF_ALGOS + BP_ALGOS
# Optimiser arithmetic per parameter (multiplies, adds):
# Adam: m = b1 m + (1-b1) g (2, 1); v = b2 v + (1-b2) g^2 (3, 1); sqrt(v_hat) + eps (1, 1);
#       p -= lr_t * m / denom (2, 1).   SGD with momentum: buf = mu buf + g (1, 1); p -= lr buf (1, 1).
# Adam8 (8-bit state): Adam's, plus dequantising m and r (2 multiplies), r^2 (1) and re-storing
# both (2 divides, counted as multiplies); absmax searches and the integer adds of stochastic
# rounding are left out.
OPTIMIZER_OPS = {"adam": (8, 4), "sgd": (2, 2), "adam8": (13, 4), "adamw": (8, 4)}
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

    def __floordiv__(self, k: int) -> OpCounts:
        return OpCounts(*(getattr(self, f.name) // k for f in fields(self)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


ZERO = OpCounts()


def fp32(mul: int = 0, add: int = 0) -> OpCounts:
    return OpCounts(fp32_mul=mul, fp32_add=add)


def macs(n: int, int8: bool) -> OpCounts:
    """n multiply-accumulates: int8 x int8 -> int32, or fp32."""
    return OpCounts(int8_mul=n, int32_add=n) if int8 else fp32(n, n)


def gemm(m: int, k: int, n: int, int8: bool) -> OpCounts:
    """(M, K) @ (K, N): M*N*K multiply-accumulates, int8 x int8 -> int32 or fp32."""
    return macs(m * k * n, int8)


@dataclass(frozen=True)
class Dense:
    """A dense layer: (rows, in_features) -> (rows, out_features), weight (out, in) and bias."""

    in_features: int
    out_features: int
    bias: ClassVar[bool] = True

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

    def macs(self, rows: int) -> int:
        return rows * self.in_features * self.out_features


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution: (rows, Cin, H, W) -> (rows, Cout, Ho, Wo), weight (Cout, Cin/groups, kh,
    kw), a bias when `bias`. Sizes are (height, width) pairs."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False

    @property
    def weights(self) -> int:
        return self.out_channels * self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def params(self) -> int:
        return self.weights + (self.out_channels if self.bias else 0)

    def in_elems(self, rows: int) -> int:
        return rows * self.in_channels * self.in_size[0] * self.in_size[1]

    def out_elems(self, rows: int) -> int:
        return rows * self.out_channels * self.out_size[0] * self.out_size[1]

    def macs(self, rows: int) -> int:
        """groups GEMMs of (rows*Ho*Wo, Cin/groups*kh*kw) @ (Cin/groups*kh*kw, Cout/groups)."""
        m = rows * self.out_size[0] * self.out_size[1]
        k = self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
        return self.groups * m * k * (self.out_channels // self.groups)


def linear_forward(layer: Dense | Conv, rows: int, int8: bool) -> OpCounts:
    """z = x W^T + b (or the convolution). int8: quantise x and W, int8 GEMM, rescale the
    accumulator to float."""
    out = layer.out_elems(rows)
    ops = macs(layer.macs(rows), int8) + fp32(add=out if layer.bias else 0)
    if int8:
        ops += OpCounts(quantized=layer.in_elems(rows) + layer.weights) + fp32(mul=out)
    return ops


def linear_weight_grad(layer: Dense | Conv, rows: int, int8: bool,
                       quantize_grad: bool = True) -> OpCounts:
    """g_W (g_z^T x for a dense layer) and g_b = sum of g_z. int8: g_z quantised (unless the
    caller already did), int8 GEMM, rescale."""
    out = layer.out_elems(rows)
    ops = macs(layer.macs(rows), int8) + fp32(add=out if layer.bias else 0)
    if int8:
        ops += fp32(mul=layer.weights) + OpCounts(quantized=out if quantize_grad else 0)
    return ops


def linear_input_grad(layer: Dense | Conv, rows: int, int8: bool,
                      quantize_grad: bool = True) -> OpCounts:
    """g_x (g_z W for a dense layer). int8: g_z quantised (unless already), int8 GEMM, rescale."""
    ops = macs(layer.macs(rows), int8)
    if int8:
        ops += fp32(mul=layer.in_elems(rows)) + OpCounts(quantized=layer.out_elems(rows) if quantize_grad
                                                         else 0)
    return ops


class Counters(NamedTuple):
    """How a layer type is counted: forward(layer, rows, int8); weight_grad and input_grad
    (layer, rows, int8, quantize_grad), where quantize_grad=False means the output gradient was
    already quantised by the same backward; bp_extra(layer, rows, algo), what bp-ui8 and bp-gdai8
    add to its backward."""

    forward: Callable[..., OpCounts]
    weight_grad: Callable[..., OpCounts]
    input_grad: Callable[..., OpCounts]
    bp_extra: Callable[..., OpCounts]


# Layer type -> its Counters; ffint8.measure.convunit registers whole convolutional FF units.
LAYER_COUNTERS: dict[type, Counters] = {}


def counters(layer) -> Counters:
    try:
        return LAYER_COUNTERS[type(layer)]
    except KeyError:
        raise ConfigError(f"no operation counts for layer type {type(layer).__name__}") from None


def optimizer_ops(n_params: int, optimizer: str = "adam", weight_decay: float = 0.0) -> OpCounts:
    if optimizer not in OPTIMIZER_OPS:
        raise ConfigError(f"invalid optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZER_OPS)}")
    mul, add = OPTIMIZER_OPS[optimizer]
    if weight_decay:  # g + wd * p; adamw: p * (1 - lr * wd), the factor once per step
        mul, add = mul + 1, add + (0 if optimizer == "adamw" else 1)
    return fp32(mul * n_params, add * n_params)


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


def bp_grad_extra(layer: Dense | Conv, rows: int, algo: str) -> OpCounts:
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
        wgrad = macs(layer.macs(rows), False) + fp32(mul=layer.in_elems(rows))
        per_eval = q_out + fp32(mul=out) + wgrad + _cosine(layer.weights)
        step = q_out + _cosine(out)
        search = fp32(mul=2 * out, add=3 * out) + wgrad + per_eval * evals + clip_search
    return step + search // period


LINEAR = Counters(linear_forward, linear_weight_grad, linear_input_grad, bp_grad_extra)
LAYER_COUNTERS.update({Dense: LINEAR, Conv: LINEAR})
