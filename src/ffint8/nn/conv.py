"""INT8 2-D convolution as an autograd Function: int8 forward and both backward convolutions.

Forward: the input is quantised per tensor with stochastic rounding keyed by `seed` (training), or
to nearest with one scale per sample when seed is None and no gradient is needed (inference, so
a sample's output does not depend on its batch); the weight to nearest, per tensor or per output
channel. z = (x_q conv w_q) * scales + b, from the exact int32 accumulator.
Backward: grad_output is quantised per tensor (stochastic rounding keyed by grad_seed(seed)), then
  g_W = weight-gradient conv of x_q and g_q (int8 x int8)
  g_x = input-gradient conv of g_q and the weight quantised per tensor (int8 x int8): the sum runs
        over output channels, so a per-channel weight scale cannot be factored out of it and
        the weight is quantised once more, per tensor, for this product
  g_b = sum of grad_output (float).
A custom Function cannot tell which of its inputs an autograd.grad call asks for (it sees only
what required grad at forward time), so a backward to a unit's input alone, as the chain
look-ahead runs, would form every g_W too; inside `input_grads_only()` it forms none.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ffint8.quant import QTensor, quantize
from ffint8.quant.conv import (
    ConvKernel,
    ConvSpec,
    int8_conv2d_input_scaled,
    int8_conv2d_scaled,
    int8_conv2d_weight_scaled,
)
from ffint8.quant.fastsr import mix64

_MODE = threading.local()  # .input_only: True inside input_grads_only() (per thread)


@contextmanager
def input_grads_only() -> Iterator[None]:
    """Within this block Int8Conv2d's backward returns no weight or bias gradient: wrap an
    autograd.grad call whose inputs are activations only (its weight gradients would be
    discarded anyway)."""
    before = getattr(_MODE, "input_only", False)
    _MODE.input_only = True
    try:
        yield
    finally:
        _MODE.input_only = before


# the int8 GEMM kernel names of FFConfig.int8_kernel -> the int8 convolution kernel that matches
# (vnni: the convolutions keep auto's choice; the C kernel's VNNI rows are for the dense GEMMs)
_CONV_KERNEL = {"auto": "auto", "int_mm": "im2col", "vnni": "auto", "float-exact": "float-exact",
                "reference": "reference"}


def conv_kernel(gemm_kernel: str) -> ConvKernel:
    """The int8 convolution kernel that computes as the GEMM kernel `gemm_kernel` (an
    FFConfig.int8_kernel name: auto, int_mm, float-exact, reference) does; "auto" otherwise."""
    return _CONV_KERNEL.get(gemm_kernel, "auto")


def grad_seed(seed: int) -> int:
    """The stochastic-rounding seed for grad_output of the forward keyed by seed."""
    return mix64(seed ^ 0x6772_6164)  # "grad": a stream unrelated to any forward seed


def quantize_activation(x: torch.Tensor, seed: int | None) -> QTensor:
    """Per-tensor int8 of an (N, C, H, W) tensor, stochastic if seed is given, else nearest.

    A channels_last x is quantised in its own memory order, so q is channels_last too and the
    oneDNN kernel needs no reorder.
    """
    rounding = "nearest" if seed is None else "stochastic"
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        q = quantize(x.permute(0, 2, 3, 1), rounding, seed=seed)  # (N, H, W, C), contiguous
        return QTensor(q.q.permute(0, 3, 1, 2), q.scale)
    return quantize(x, rounding, seed=seed)


def _engine_needs(ctx, i: int) -> bool:
    """Whether the backward pass now running uses the gradient of the Function's input i.

    needs_input_grad only says the input requires grad. A chain step's weight pass,
    torch.autograd.grad(y, unit parameters), reaches a unit's entry convolution whose input
    requires grad (for the signal pass that follows) but reads no gradient of it: the engine
    knows it will not run the node that gradient feeds. True where it cannot tell (a leaf
    input under torch.autograd.grad, which the engine does not answer for)."""
    node = ctx.next_functions[i][0]
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


class Int8Conv2d(torch.autograd.Function):
    """z = conv2d(x, weight) + bias with int8 operands and int32 accumulation, forward and back.

    x (N, C, H, W) float, weight (O, C/G, kh, kw) float, bias (O,) float or None -> z float32
    (N, O, Ho, Wo); channels_last when the oneDNN kernel computed it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                spec: ConvSpec, seed: int | None, weight_channel: bool, kernel: ConvKernel
                ) -> torch.Tensor:
        x = x.detach().float()
        if seed is not None or any(ctx.needs_input_grad[:2]):
            x_q = quantize_activation(x, seed)
        else:  # inference: one scale per sample
            x_q = quantize(x, "nearest", channel_dim=0)
        w_q = quantize(weight.detach(), "nearest", channel_dim=0 if weight_channel else None)
        z = int8_conv2d_scaled(x_q.q, x_q.scale, w_q.q, w_q.scale, spec, kernel)
        if bias is not None:
            z = z.add_(bias.detach().view(1, -1, 1, 1))
        ctx.save_for_backward(x_q.q, x_q.scale, w_q.q, w_q.scale, weight)
        ctx.spec, ctx.seed, ctx.weight_channel, ctx.kernel = spec, seed, weight_channel, kernel
        ctx.x_shape = tuple(x.shape)
        return z

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor):
        x_q, x_scale, w_q, w_scale, weight = ctx.saved_tensors
        spec, kernel = ctx.spec, ctx.kernel
        g_q = quantize_activation(grad_z.float(), None if ctx.seed is None else grad_seed(ctx.seed))
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0] and _engine_needs(ctx, 0):
            if ctx.weight_channel:
                w_t = quantize(weight.detach(), "nearest")
                w_q, w_scale = w_t.q, w_t.scale
            g_x = int8_conv2d_input_scaled(g_q.q, g_q.scale, w_q, w_scale, ctx.x_shape, spec, kernel)
        params = not getattr(_MODE, "input_only", False)
        if ctx.needs_input_grad[1] and params:
            g_w = int8_conv2d_weight_scaled(x_q, x_scale, g_q.q, g_q.scale, tuple(weight.shape),
                                            spec, kernel)
        if ctx.needs_input_grad[2] and params:
            g_b = grad_z.sum(dim=(0, 2, 3))
        return g_x, g_w, g_b, None, None, None, None


def conv2d_int8(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    seed: int | None = None,
    weight_channel: bool = False,
    kernel: ConvKernel = "auto",
) -> torch.Tensor:
    """F.conv2d's arguments, computed by Int8Conv2d: seed keys stochastic rounding (None: round to
    nearest), weight_channel quantises the weight per output channel, kernel picks the int8
    convolution (see ffint8.quant.conv)."""
    return Int8Conv2d.apply(x, weight, bias, ConvSpec(stride, padding, groups), seed,
                            weight_channel, kernel)
