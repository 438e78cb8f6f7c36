"""int8 x int8 2-D convolution with exact integer accumulation: forward, weight and input gradient.

With x (N, C, H, W), w (O, C/G, kh, kw), g = dL/dz (N, O, Ho, Wo), stride s, padding p, G groups:
  forward       z[n, o, i, j]  = sum_{c, a, b} x[n, c, s*i + a - p, s*j + b - p] * w[o, c, a, b]
  weight grad   gw[o, c, a, b] = sum_{n, i, j} g[n, o, i, j] * x[n, c, s*i + a - p, s*j + b - p]
  input grad    gx[n, c, h, v] = sum of g[n, o, i, j] * w[o, c, a, b] over s*i + a - p = h, s*j + b - p = v
(c runs over o's group). Each op has an exact form (int32; int64 when a reduction has more than
MAX_EXACT_K terms) and a scaled form, float32 = accumulator * scales, within a few float32 ulps of
the largest partial sum (for most kernels: of the result).

Kernels (all exact; they differ in speed and where they run):
- "onednn": oneDNN's u8 x s8 convolution through torch.ops.onednn (CPU). Without VNNI, oneDNN
  multiplies with vpmaddubsw, which adds pairs of u8*s8 products in saturating int16: u8 values up
  to 255 overflow (measured: wrong sums), values up to 127 cannot. Non-negative int8 operands (ReLU
  outputs, images) go in as they are; signed ones as u = x + 128 = 2h + l with h = u >> 1 in
  [0, 127] (zero point 64) and l = u & 1: two calls, 2 * conv(h - 64) + conv(l), exact (one call
  with zero point 128 where a probe shows full-range u8 is exact: VNNI, AMX). The weight
  gradient is a convolution too (channels and batch swapped, one stride-1 call per phase of a
  strided input), or im2col and oneDNN's int8 GEMM where the patch matrix is small (1x1, stem);
  on CPUs with an int8 dot-product unit, where torch._int_mm (oneDNN's int8 matmul) is fast, an
  ungrouped one runs as kh*kw GEMMs over flat padded buffers instead (_taps_weight);
  the input gradient a stride-1 convolution of the zero-interleaved g with the flipped,
  transposed weight (at stride 1 oneDNN pads g itself, with no copy of it). The weight is
  packed on every call: it changes every training step.
  A strided 1x1 forward runs at stride 1 on a strided copy of the input: oneDNN's own strided
  1x1 kernel returned wrong sums with two threads (8 and 24 input channels, torch 2.13, AVX2).
  Results come back as float32, exact below 2^24, so the exact form splits reductions into
  pieces of at most FLOAT_EXACT_K terms; the scaled form makes one call (per term) and lets
  oneDNN apply the scales.
- "im2col": patches copied into a matrix, then ffint8.quant.int8_mm (its kernel "auto": int_mm
  with VNNI/AMX or on CUDA, float-exact elsewhere). Runs on any device.
- "float-exact": float32 convolution of the int8 values, the reduction split into pieces of at
  most FLOAT_EXACT_K terms so every partial sum is an integer below 2^24. CPU only (cuDNN may pick
  Winograd or TF32, which are not exact); NNPACK (Winograd) is switched off around each call.
- "reference": int64 im2col and matmul; slow, for tests.
"auto" picks per op and device: see resolve_conv_kernel.
Whatever the kernel but "reference", a depthwise weight gradient (one filter per channel, as in
MobileNet-v2 and EfficientNet-B0) runs on the CPU in fastquant.c's loop where that is built
(fastsr.depthwise_weight_grad): oneDNN takes it as a grouped convolution whose kernel is the
whole of g, a shape it is slow at (benchmarks/depthwise_weight.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ffint8.quant import fastsr
from ffint8.quant.gemm import FLOAT_EXACT_K, MAX_EXACT_K, cpu_has_int8_dot, int8_mm, resolve_kernel

ConvKernel = Literal["auto", "onednn", "im2col", "float-exact", "reference"]
CONV_KERNELS = ("auto", "onednn", "im2col", "float-exact", "reference")
Op = Literal["forward", "weight", "input"]


@dataclass(frozen=True)
class ConvSpec:
    """Stride, padding (each an int or an (h, w) pair) and groups of a 2-D convolution."""

    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    groups: int = 1

    def __post_init__(self) -> None:
        for name, lo in (("stride", 1), ("padding", 0)):
            value = getattr(self, name)
            pair = (value, value) if isinstance(value, int) else tuple(value)
            if len(pair) != 2 or any(not isinstance(v, int) or v < lo for v in pair):
                raise ValueError(f"{name} must be an int >= {lo} or a pair of them, got {value!r}")
            object.__setattr__(self, name, pair)
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"groups must be an int >= 1, got {self.groups!r}")

    def out_size(self, h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
        (sh, sw), (ph, pw) = self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _gemm(t: torch.Tensor) -> str:
    """The int8 GEMM kernel of the convolutions' own products (taps, im2col): "auto" without the
    C kernel's VNNI rows, which are laid out for the dense layers' shapes (gemm.resolve_kernel)."""
    return resolve_kernel("auto", t.device, vnni=False)


def _check(x: torch.Tensor, w_shape: tuple[int, ...], spec: ConvSpec) -> tuple[int, int]:
    """Validate an (N, C, H, W) input against an (O, C/G, kh, kw) weight; return (Ho, Wo)."""
    if x.dtype != torch.int8 or x.dim() != 4 or len(w_shape) != 4:
        raise ValueError(f"expected int8 (N, C, H, W) and a 4-D weight, got {x.dtype} "
                         f"{tuple(x.shape)} and {tuple(w_shape)}")
    o, cg, kh, kw = w_shape
    if x.shape[1] != cg * spec.groups or o % spec.groups:
        raise ValueError(f"input {tuple(x.shape)} and weight {tuple(w_shape)} do not match "
                         f"groups={spec.groups}")
    ho, wo = spec.out_size(x.shape[2], x.shape[3], kh, kw)
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kh}x{kw} does not fit input {tuple(x.shape[2:])} with {spec}")
    return ho, wo


def _acc_dtype(terms: int) -> torch.dtype:
    return torch.int32 if terms <= MAX_EXACT_K else torch.int64


def _pad(x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    ph, pw = spec.padding
    return F.pad(x, (pw, pw, ph, ph)) if ph or pw else x


def _patches(x: torch.Tensor, kh: int, kw: int, spec: ConvSpec) -> torch.Tensor:
    """(G, N*Ho*Wo, Cg*kh*kw) im2col matrix of x (a copy, in x's dtype)."""
    n, c = x.shape[:2]
    g = spec.groups
    p = _pad(x, spec).unfold(2, kh, spec.stride[0]).unfold(3, kw, spec.stride[1])
    ho, wo = p.shape[2:4]  # p: (N, C, Ho, Wo, kh, kw) view
    p = p.reshape(n, g, c // g, ho, wo, kh, kw).permute(1, 0, 3, 4, 2, 5, 6)
    return p.reshape(g, n * ho * wo, c // g * kh * kw)


def _col2im(cols: torch.Tensor, x_shape: torch.Size, kh: int, kw: int, spec: ConvSpec,
            ho: int, wo: int) -> torch.Tensor:
    """Sum (G, N*Ho*Wo, Cg*kh*kw) patch values back onto an (N, C, H, W) image."""
    n, c, h, w = x_shape
    g = spec.groups
    (sh, sw), (ph, pw) = spec.stride, spec.padding
    cols = cols.reshape(g, n, ho, wo, c // g, kh, kw).permute(1, 0, 4, 2, 3, 5, 6)
    out = torch.zeros(n, g, c // g, h + 2 * ph, w + 2 * pw, dtype=cols.dtype, device=cols.device)
    for a in range(kh):
        for b in range(kw):
            out[..., a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw] += cols[..., a, b]
    return out[..., ph : ph + h, pw : pw + w].reshape(n, c, h, w)


def _group_slice(t: torch.Tensor, dim: int, groups: int, lo: int, hi: int) -> torch.Tensor:
    """Channels lo:hi of every group along dim (groups laid out one after another)."""
    t = t.unflatten(dim, (groups, t.shape[dim] // groups)).narrow(dim + 1, lo, hi - lo)
    return t.flatten(dim, dim + 1)


def _input_grad_fits_float(g: torch.Tensor, w: torch.Tensor) -> bool:
    """True if one float32 input-gradient convolution of these int8 operands is exact.

    FLOAT_EXACT_K bounds the reduction for worst-case operands; this bound uses the data: an
    input-gradient entry sums g over at most kh*kw positions and all output channels, each term
    at most max|w| * |g|, so every partial sum stays below
    max|w| * kh * kw * max_{n,i,j} sum_o |g[n, o, i, j]|. Stochastically rounded gradients
    are mostly small integers, so the bound usually holds where the worst case does not.
    """
    kh, kw = w.shape[2:]
    w_max = int(w.abs().view(torch.uint8).max())  # abs(-128) is -128 in int8: 128 as uint8
    g_sum = int(g.abs().view(torch.uint8).sum(dim=1, dtype=torch.int32).max())
    return w_max * kh * kw * g_sum < 2**24


def _chunks(total: int, per_item: int) -> list[tuple[int, int]]:
    """Split range(total) so each piece has at most FLOAT_EXACT_K terms (per_item per index)."""
    step = max(FLOAT_EXACT_K // per_item, 1)
    return [(i, min(i + step, total)) for i in range(0, total, step)]


def _dilate_for_input_grad(g: torch.Tensor, x_hw: tuple[int, int], kh: int, kw: int,
                           spec: ConvSpec) -> torch.Tensor:
    """g with s - 1 zeros between entries, padded so that a stride-1 convolution with the flipped
    weight gives the input gradient: (N, O, H + kh - 1, W + kw - 1), signed int8."""
    n, o, ho, wo = g.shape
    (sh, sw), (ph, pw) = spec.stride, spec.padding
    d = g.new_zeros(n, o, sh * (ho - 1) + 1, sw * (wo - 1) + 1)
    d[..., ::sh, ::sw] = g
    rh = (x_hw[0] + 2 * ph - kh) % sh  # rows of the padded input no output reached
    rw = (x_hw[1] + 2 * pw - kw) % sw
    return F.pad(d, (kw - 1 - pw, kw - 1 - pw + rw, kh - 1 - ph, kh - 1 - ph + rh))  # may crop


def _flip_transpose(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(O, Cg, kh, kw) -> (C, Og, kh, kw), spatially flipped: the input-gradient conv's weight."""
    o, cg, kh, kw = w.shape
    wt = w.reshape(groups, o // groups, cg, kh, kw).transpose(1, 2)
    return wt.reshape(groups * cg, o // groups, kh, kw).flip(-1, -2)


# --------------------------------------------------------------------------------------------
# oneDNN


def _probe(act_max: int) -> bool:
    """Run one small oneDNN conv with u8 values up to act_max; True if it is exact."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(act_max // 2, act_max + 1, (1, 16, 5, 5), generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 16, 3, 3), generator=gen, dtype=torch.int8)
    x[0, :, 1:4, 1:4], w[0], w[1] = act_max, -128, 127  # every pair of products at its extreme
    try:
        z = _qconv(x, 0, w, (1, 1), (1, 1), (1, 1), 1, 1.0, torch.ones(4))
    except (AttributeError, RuntimeError):  # no oneDNN build, or no int8 conv on this CPU
        return False
    return bool(torch.equal(z.double(), F.conv2d(x.double(), w.double(), padding=1)))


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True if torch.ops.onednn's int8 convolution runs here and is exact on u7 x s8 operands."""
    return _probe(127)


@functools.lru_cache(maxsize=1)
def onednn_u8_exact() -> bool:
    """True if full-range u8 x s8 is exact too (VNNI / AMX: no saturating int16 pair sums), so
    signed operands need one call with zero point 128 instead of two."""
    return onednn_available() and _probe(255)


def _qconv(act: torch.Tensor, zp: int, w: torch.Tensor, stride, padding, dilation, groups: int,
           act_scale: float, w_scales: torch.Tensor, packs: dict | None = None) -> torch.Tensor:
    """One oneDNN call: act u8 (zero point zp), w s8 packed here -> float32, channels_last.

    The weight changes every training step, so it is packed on every call (timings count it),
    or once per zero point for calls that share w and a `packs` dict.
    """
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    zeros = torch.zeros(w.shape[0], dtype=torch.int64)
    packed = None if packs is None else packs.get(zp)
    if packed is None:
        # prepack reads w's storage as if it were contiguous, whatever its strides
        packed = torch.ops.onednn.qconv_prepack(w.contiguous(), w_scales, act_scale, zp, stride,
                                                padding, dilation, groups, None)
        if packs is not None:
            packs[zp] = packed
    if not (act.is_contiguous() or act.is_contiguous(memory_format=torch.channels_last)):
        act = act.contiguous(memory_format=torch.channels_last)
    return torch.ops.onednn.qconv_pointwise(act, act_scale, zp, packed, w_scales, zeros, None,
                                            stride, padding, dilation, groups, 1.0, 0,
                                            torch.float32, "none", [], "")


def _min(t: torch.Tensor) -> int:
    dense = t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
    # A 1-D reduction over the dense storage is ~30x faster than a 4-D channels_last one.
    return int((t.as_strided((t.numel(),), (1,)) if dense else t).min())


def _u7_terms(t: torch.Tensor) -> list[tuple[int, torch.Tensor, int]]:
    """(coefficient, u8 tensor, zero point) terms with t = sum coef * (u8 - zp), all u8 <= 127."""
    if _min(t) >= 0:
        return [(1, t.view(torch.uint8), 0)]
    if onednn_u8_exact():  # t + 128 as u8: flipping the sign bit, one pass
        return [(1, t.view(torch.uint8).bitwise_xor(0x80), 128)]
    u = t.to(torch.int16) + 128
    # [0, 255] is too wide for vpmaddubsw: split into 7 bits and 1 bit
    return [(2, (u >> 1).to(torch.uint8), 64), (1, (u & 1).to(torch.uint8), 0)]


def _qlinear(act: torch.Tensor, zp: int, w: torch.Tensor, act_scale: float,
             w_scales: torch.Tensor, packs: dict | None = None) -> torch.Tensor:
    """act u8 (M, K) (zero point zp) times w s8 (O, K) transposed -> float32 (M, O)."""
    packed = None if packs is None else packs.get("linear")
    if packed is None:
        # does not depend on zp; reads w's storage as if it were contiguous, whatever its strides
        packed = torch.ops.onednn.qlinear_prepack(w.contiguous(), None)
        if packs is not None:
            packs["linear"] = packed
    zeros = torch.zeros(w.shape[0], dtype=torch.int64)
    return torch.ops.onednn.qlinear_pointwise(act.contiguous(), act_scale, zp, packed, w_scales,
                                              zeros, None, 1.0, 0, torch.float32, "none", [], "")


def _onednn(act: torch.Tensor, w: torch.Tensor, conv: tuple | None,
            act_scale: float = 1.0, w_scales: torch.Tensor | None = None,
            exact_dtype: torch.dtype | None = None, packs: dict | None = None) -> torch.Tensor:
    """Signed int8 act through oneDNN: float32 (scaled), or exact_dtype (then no scales).

    conv: (stride, padding, dilation, groups) of a convolution, or None for act (M, K) @ w.T.
    """
    if w_scales is None:
        w_scales = torch.ones(w.shape[0])
    out = None
    for coef, u, zp in _u7_terms(act):
        if conv is None:
            z = _qlinear(u, zp, w, act_scale, w_scales, packs)
        else:
            z = _qconv(u, zp, w, *conv, act_scale, w_scales, packs)
        z = z.to(exact_dtype) if exact_dtype is not None else z  # exact: |z| < 2^24 by chunking
        z = z.mul_(coef) if coef != 1 else z
        out = z if out is None else out.add_(z)
    return out


def _onednn_forward(x, w, spec, dtype=None, x_scale=1.0, w_scales=None):
    stride, padding = spec.stride, spec.padding
    if w.shape[2:] == (1, 1) and stride != (1, 1):
        # oneDNN's strided 1x1 u8s8 convolution (torch 2.13, AVX2) returns wrong sums with more
        # than one thread for some channel counts (8 and 24 measured; 16, 32, 64 right): the
        # stride is taken here instead (a channels_last copy of every s-th row and column, which
        # moves whole channel vectors: 2.2 ms against an NCHW copy's 4.0 for 64 channels at
        # 32x32) and the convolution runs at stride 1.
        ho, wo = spec.out_size(*x.shape[2:], 1, 1)
        x = _pad(x, spec)[:, :, :: stride[0], :: stride[1]][:, :, :ho, :wo]
        x = x.contiguous(memory_format=torch.channels_last)
        stride, padding = (1, 1), (0, 0)
    return _onednn(x, w, (stride, padding, (1, 1), spec.groups), x_scale, w_scales, dtype)


def _channels_last_transposed(t: torch.Tensor, rows: int) -> torch.Tensor | None:
    """A 1-byte (N, C, H, W) tensor held channels_last, its memory read as (batch, rows, C) and
    transposed to (batch, C, rows) by the C kernel, flat; None where t is not held that way or
    the kernel is unavailable. PyTorch's strided copy moves such a tensor one byte at a time,
    4-6x slower."""
    if not t.is_contiguous(memory_format=torch.channels_last) or t.is_contiguous():
        return None
    return fastsr.transpose_bytes(t.permute(0, 2, 3, 1), rows, t.shape[1])


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as a contiguous NCHW tensor, for 1-byte tensors."""
    n, c, h, w = t.shape
    flat = _channels_last_transposed(t, h * w)
    return t.contiguous() if flat is None else flat.view(n, c, h, w)


def _swap01(t: torch.Tensor) -> torch.Tensor:
    """(A, B, H, W) -> contiguous (B, A, H, W), for 1-byte tensors. Held channels_last, this is a
    transpose of the (A*H*W, B) matrix in memory; an NCHW tensor moves whole rows of H*W bytes,
    which PyTorch does well."""
    a, b, h, w = t.shape
    flat = _channels_last_transposed(t, a * h * w)
    return t.transpose(0, 1).contiguous() if flat is None else flat.view(b, a, h, w)


def _weight_act(x: torch.Tensor, groups: int) -> torch.Tensor:
    """x (N, C, H, W) as the activation of the weight-gradient convolution: (C/G, G*N, H, W),
    contiguous (batch and channels swapped within each group)."""
    n, c, h, w = x.shape
    if groups == 1:
        return _swap01(x)
    x = _nchw(x)  # the copy below then moves whole rows
    act = x.reshape(n, groups, c // groups, h, w).permute(2, 1, 0, 3, 4)
    return act.reshape(c // groups, groups * n, h, w)


def _taps_fit(spec: ConvSpec) -> bool:
    """Whether the oneDNN kernel's weight gradient runs as _taps_weight's GEMMs: one group, on a
    CPU whose int8 dot-product unit (VNNI, AMX) makes torch._int_mm fast. There
    oneDNN's int8 convolution with g as a whole-image kernel gained little over float32 (1.17x
    summed over ResNet-18's shapes on a Xeon with AMX), the GEMMs 1.7-5x."""
    return spec.groups == 1 and cpu_has_int8_dot()


def _pad_for_phases(x: torch.Tensor, kh: int, kw: int, spec: ConvSpec) -> torch.Tensor:
    """x padded for a strided weight gradient: rows / columns past the last window are cut
    (negative padding), so the padded input has exactly s * (Ho - 1) + k rows."""
    (sh, sw), (ph, pw) = spec.stride, spec.padding
    rh, rw = (x.shape[2] + 2 * ph - kh) % sh, (x.shape[3] + 2 * pw - kw) % sw
    return F.pad(x, (pw, pw - rw, ph, ph - rh))


def _phase(xp: torch.Tensor, fh: int, fw: int, kh: int, kw: int, stride: tuple[int, int],
           out_hw: tuple[int, int]) -> torch.Tensor:
    """Phase (fh, fw) of a _pad_for_phases input (a view): the rows and columns that the taps
    a = fh + s*a' read, Ho + (kh - fh - 1) // s of them (and likewise for columns)."""
    (sh, sw), (ho, wo) = stride, out_hw
    return xp[:, :, fh::sh, fw::sw][:, :, : ho + (kh - fh - 1) // sh, : wo + (kw - fw - 1) // sw]


def _taps_weight(x: torch.Tensor, g: torch.Tensor, w_shape: tuple[int, ...],
                 spec: ConvSpec) -> torch.Tensor:
    """The weight gradient of an ungrouped convolution as kh*kw int8 GEMMs, exact: (O, C, kh, kw),
    int32 (int64 past MAX_EXACT_K terms). A stride s is s*s stride-1 problems, one per phase of
    the input, as in _onednn_weight: phase (fh, fw) holds the taps a = fh + s*a'."""
    o, c, kh, kw = w_shape
    sh, sw = spec.stride
    if (sh, sw) == (1, 1):
        return _taps_weight_s1(x, g, w_shape, spec.padding)
    xp = _pad_for_phases(x, kh, kw, spec)
    out = None
    for fh in range(min(sh, kh)):
        for fw in range(min(sw, kw)):
            kh_f, kw_f = -(-(kh - fh) // sh), -(-(kw - fw) // sw)  # the phase's taps
            xf = _phase(xp, fh, fw, kh, kw, spec.stride, tuple(g.shape[2:]))
            z = _taps_weight_s1(xf, g, (o, c, kh_f, kw_f), (0, 0))
            if out is None:
                out = z.new_empty(w_shape)
            out[:, :, fh::sh, fw::sw] = z
    return out


def _taps_weight_s1(x: torch.Tensor, g: torch.Tensor, w_shape: tuple[int, ...],
                    padding: tuple[int, int]) -> torch.Tensor:
    """_taps_weight at stride 1.

    x is laid out as a zero-padded (N*Hp*Wp, C) byte matrix (NHWC) and g as an (N*Hp*Wp, O) one,
    zero outside its Ho x Wo corner of each padded image. Tap (a, b) then pairs g's row r with
    x's row r + a*Wp + b, so gw[:, :, a, b] = g^T @ (x's rows from a*Wp + b on): a contiguous
    slice of one buffer, no patch matrix. Rows of g that are zero absorb the rows that wrap
    around an image's edge.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = w_shape
    ph, pw = padding
    ho, wo = g.shape[2:]
    hp, wp = h + 2 * ph, w + 2 * pw
    m = n * hp * wp
    # Only the padding is zeroed: the interiors are overwritten (a full zero fill cost 2% of a
    # ResNet-18 chain step). The rows past m, room for the last taps' slices, meet only rows of
    # g that are zero, so they stay as they are (int8: no NaN to spread).
    xp = x.new_empty(m + (kh - 1) * wp + kw - 1, c)
    x4 = xp[:m].view(n, hp, wp, c)
    x4[:, :ph].zero_()
    x4[:, ph + h :].zero_()
    x4[:, ph : ph + h, :pw].zero_()
    x4[:, ph : ph + h, pw + w :].zero_()
    x4[:, ph : ph + h, pw : pw + w] = x.permute(0, 2, 3, 1)
    gp = g.new_empty(m, o)
    g4 = gp.view(n, hp, wp, o)
    g4[:, ho:].zero_()
    g4[:, :ho, wo:].zero_()
    g4[:, :ho, :wo] = g.permute(0, 2, 3, 1)
    gt = gp.t()
    mm = _gemm(x)
    taps = [int8_mm(gt, xp[a * wp + b : a * wp + b + m], mm) for a in range(kh) for b in range(kw)]
    out = torch.stack(taps, dim=1).view(o, kh, kw, c)  # (O, kh*kw, C) -> (O, kh, kw, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _onednn_weight(x, g, w_shape, spec, dtype=None, x_scale=1.0, g_scales=None):
    """Channels and batch swapped: act (Cg, G*N, H, W), weight g (O, N, Ho, Wo).

    A stride s becomes s*s stride-1 convolutions, one per phase of the input (the taps a = phase
    + s * a'): oneDNN's dilated int8 convolution, the direct form, measured 4-5x slower. Where
    the patch matrix is small, im2col and an int8 GEMM instead.
    """
    kh, kw = w_shape[2:]
    sh, sw = spec.stride
    g = _swap01(g)  # (O, N, Ho, Wo): the "weight"
    if (sh, sw) != (1, 1):
        # The phases are taken before batch and channels are swapped: in x's channels_last
        # memory a phase moves whole channel vectors.
        x = _pad_for_phases(x, kh, kw, spec)

    def phase(fh: int, fw: int) -> torch.Tensor:
        xf = _phase(x, fh, fw, kh, kw, spec.stride, tuple(g.shape[2:]))
        return xf.contiguous(memory_format=torch.channels_last)

    if spec.groups == 1 and w_shape[1] * kh * kw <= w_shape[0]:
        # Few patch rows (1x1 convs, the 3-channel stem): im2col is a small copy, and oneDNN's
        # int8 GEMM beats a convolution whose kernel is the whole of g.
        if (kh, kw) == (1, 1):
            act = _swap01(x if (sh, sw) == (1, 1) else phase(0, 0))  # (C, N, Ho, Wo)
        else:
            pad = spec.padding if (sh, sw) == (1, 1) else (0, 0)
            act = _pad(_swap01(x), ConvSpec(1, pad)).unfold(2, kh, sh).unfold(3, kw, sw)
            act = act.permute(0, 4, 5, 1, 2, 3)  # (C, kh, kw, N, Ho, Wo)
        z = _onednn(act.reshape(w_shape[1] * kh * kw, -1), g.reshape(g.shape[0], -1), None,
                    x_scale, g_scales, dtype)
        return z.t().reshape(w_shape)  # (C*kk, O) -> (O, C, kh, kw)
    if (sh, sw) == (1, 1):  # oneDNN pads
        conv = ((1, 1), spec.padding, (1, 1), spec.groups)
        z = _onednn(_weight_act(x, spec.groups), g, conv, x_scale, g_scales, dtype)
        return z.permute(1, 0, 2, 3).contiguous()  # (Cg, O, kh, kw) -> (O, Cg, kh, kw)
    conv = ((1, 1), (0, 0), (1, 1), spec.groups)
    packs: dict = {}  # g packed once for all phases
    out = g.new_empty(w_shape, dtype=dtype or torch.float32)
    for fh in range(min(sh, kh)):
        for fw in range(min(sw, kw)):
            z = _onednn(_weight_act(phase(fh, fw), spec.groups), g, conv, x_scale, g_scales,
                        dtype, packs)
            out[:, :, fh::sh, fw::sw] = z.permute(1, 0, 2, 3)
    return out


def _onednn_input(g, w, x_shape, spec, dtype=None, g_scale=1.0, w_scales=None):
    kh, kw = w.shape[2:]
    wt = _flip_transpose(w, spec.groups)
    (ph, pw) = spec.padding
    if spec.stride == (1, 1) and ph <= kh - 1 and pw <= kw - 1:  # oneDNN pads g: no copy of it
        conv = ((1, 1), (kh - 1 - ph, kw - 1 - pw), (1, 1), spec.groups)
        return _onednn(g, wt, conv, g_scale, w_scales, dtype)
    d = _dilate_for_input_grad(g, tuple(x_shape[2:]), kh, kw, spec)
    return _onednn(d, wt, ((1, 1), (0, 0), (1, 1), spec.groups), g_scale, w_scales, dtype)


# --------------------------------------------------------------------------------------------
# float32 on int8 values: one call each, exact when the reduction has <= FLOAT_EXACT_K terms
# (NNPACK's Winograd would not be exact, so it is switched off)


def _float_forward(x, w, spec):
    with torch.backends.nnpack.flags(enabled=False):
        return F.conv2d(x.float(), w.float(), None, spec.stride, spec.padding, 1, spec.groups)


def _float_weight(x, g, w_shape, spec):
    with torch.backends.nnpack.flags(enabled=False):
        return torch.ops.aten.convolution_backward(
            g.float(), x.float(), torch.empty(w_shape), None, list(spec.stride),
            list(spec.padding), [1, 1], False, [0, 0], spec.groups, [False, True, False],
        )[1]


def _float_input(g, w, x_shape, spec):
    kh, kw = w.shape[2:]
    # rows / columns of the padded input that no output reached
    r = tuple((x_shape[2 + i] + 2 * spec.padding[i] - (kh, kw)[i]) % spec.stride[i] for i in (0, 1))
    with torch.backends.nnpack.flags(enabled=False):
        return F.conv_transpose2d(g.float(), w.float(), None, spec.stride, spec.padding, r,
                                  spec.groups)


# --------------------------------------------------------------------------------------------
# exact integer forms, one function per kernel and op


def _forward_int(x, w, spec, kernel):
    o, cg, kh, kw = w.shape
    dtype = _acc_dtype(cg * kh * kw)
    if kernel in ("reference", "im2col"):
        cols = _patches(x.long() if kernel == "reference" else x, kh, kw, spec)
        wg = w.reshape(spec.groups, o // spec.groups, cg * kh * kw)
        if kernel == "reference":
            z = torch.bmm(cols, wg.long().transpose(1, 2)).to(dtype)  # (G, N*L, Og)
        else:
            z = torch.stack([int8_mm(cols[i], wg[i].t().contiguous(), _gemm(x))
                             for i in range(spec.groups)])
        n, ho, wo = x.shape[0], *spec.out_size(*x.shape[2:], kh, kw)
        return z.reshape(spec.groups, n, ho, wo, -1).permute(1, 0, 4, 2, 3).reshape(n, o, ho, wo)
    out = None
    for lo, hi in _chunks(cg, kh * kw):  # input channels of each group
        xs = _group_slice(x, 1, spec.groups, lo, hi) if (lo, hi) != (0, cg) else x
        ws = w[:, lo:hi]
        if kernel == "onednn":
            z = _onednn_forward(xs, ws, spec, dtype)
        else:
            z = _float_forward(xs, ws, spec).to(dtype)
        out = z if out is None else out.add_(z)
    return out


def _depthwise_weight(x: torch.Tensor, g: torch.Tensor, w_shape: tuple[int, ...],
                      spec: ConvSpec) -> torch.Tensor | None:
    """The exact int64 weight gradient of a depthwise convolution from the C loop; None where
    the convolution is not depthwise or the loop cannot take it."""
    if spec.groups == 1 or w_shape[1] != 1 or w_shape[0] != spec.groups:
        return None
    return fastsr.depthwise_weight_grad(x, g, tuple(w_shape[2:]), spec.stride, spec.padding)


def _weight_int(x, g, w_shape, spec, kernel):
    n, o, ho, wo = g.shape
    cg, kh, kw = w_shape[1:]
    dtype = _acc_dtype(n * ho * wo)
    if kernel != "reference" and (gw := _depthwise_weight(x, g, w_shape, spec)) is not None:
        return gw.to(dtype)
    if kernel in ("reference", "im2col"):
        cols = _patches(x.long() if kernel == "reference" else x, kh, kw, spec)  # (G, N*L, Cg*kk)
        gg = g.reshape(n, spec.groups, o // spec.groups, ho * wo).permute(1, 2, 0, 3)
        gg = gg.reshape(spec.groups, o // spec.groups, n * ho * wo)
        if kernel == "reference":
            gw = torch.bmm(gg.long(), cols).to(dtype)
        else:
            gw = torch.stack([int8_mm(gg[i].contiguous(), cols[i], _gemm(x))
                              for i in range(spec.groups)])
        return gw.reshape(w_shape)
    if kernel == "onednn" and _taps_fit(spec):
        return _taps_weight(x, g, w_shape, spec).to(dtype)
    if wo > FLOAT_EXACT_K:
        raise ValueError(f"output width {wo} > {FLOAT_EXACT_K}: too wide for kernel {kernel!r}")
    xp = _pad(x, spec)  # chunks cut rows, so padding is applied once up front
    sh = spec.stride[0]
    nospec = ConvSpec(spec.stride, 0, spec.groups)
    out = torch.zeros(w_shape, dtype=dtype)
    for i0, i1 in _chunks(ho, wo):  # output rows
        xr = xp[:, :, sh * i0 : sh * (i1 - 1) + kh]
        for n0, n1 in _chunks(n, (i1 - i0) * wo):  # samples
            xs, gs = xr[n0:n1], g[n0:n1, :, i0:i1]
            if kernel == "onednn":
                out += _onednn_weight(xs, gs, w_shape, nospec, dtype)
            else:
                out += _float_weight(xs, gs, w_shape, nospec).to(dtype)
    return out


def _input_int(g, w, x_shape, spec, kernel):
    o, cg, kh, kw = w.shape
    og = o // spec.groups
    dtype = _acc_dtype(og * kh * kw)
    n, _, ho, wo = g.shape
    if kernel in ("reference", "im2col"):
        gg = g.reshape(n, spec.groups, og, ho, wo).permute(1, 0, 3, 4, 2)
        gg = gg.reshape(spec.groups, n * ho * wo, og)
        wg = w.reshape(spec.groups, og, cg * kh * kw)
        if kernel == "reference":
            cols = torch.bmm(gg.long(), wg.long()).to(dtype)  # (G, N*L, Cg*kk)
        else:
            cols = torch.stack([int8_mm(gg[i].contiguous(), wg[i], _gemm(g))
                                for i in range(spec.groups)])
            cols = cols.to(dtype)
        return _col2im(cols, x_shape, kh, kw, spec, ho, wo)
    if kernel == "float-exact" and og * kh * kw > FLOAT_EXACT_K and _input_grad_fits_float(g, w):
        return _float_input(g, w, x_shape, spec).to(dtype)  # one call, exact for these operands
    out = None
    for lo, hi in _chunks(og, kh * kw):  # output channels of each group: the reduction here
        gs = _group_slice(g, 1, spec.groups, lo, hi) if (lo, hi) != (0, og) else g
        ws = _group_slice(w, 0, spec.groups, lo, hi) if (lo, hi) != (0, og) else w
        if kernel == "onednn":
            z = _onednn_input(gs, ws, x_shape, spec, dtype)
        else:
            z = _float_input(gs, ws, x_shape, spec).to(dtype)
        out = z if out is None else out.add_(z)
    return out


# --------------------------------------------------------------------------------------------
# public API


def resolve_conv_kernel(kernel: ConvKernel, device: torch.device | str = "cpu",
                        op: Op = "forward") -> str:
    """The concrete kernel "auto" means for this op on this device; other names unchanged.

    CPU with oneDNN: "onednn" for the forward and the weight gradient (their int8 operand with
    spatial extent, the input, is non-negative in FF and ReLU nets: one call). The input gradient
    convolves the signed g, which costs two oneDNN calls where full-range u8 is not exact (AVX2
    without VNNI) plus zero-interleaving for strides > 1; there "float-exact" was measured faster
    (benchmarks/conv_int8.py --ops input), so it is the pick unless onednn_u8_exact(). CPU without
    oneDNN: "im2col" with an int8 dot-product unit, else "float-exact". CUDA: "im2col" (cuBLASLt).
    """
    if kernel not in CONV_KERNELS:
        raise ValueError(f"unknown int8 conv kernel {kernel!r}; choose one of: "
                         f"{', '.join(CONV_KERNELS)}")
    if kernel != "auto":
        return kernel
    if torch.device(device).type != "cpu":
        return "im2col"
    if onednn_available() and (op != "input" or onednn_u8_exact()):
        return "onednn"
    return "im2col" if cpu_has_int8_dot() else "float-exact"


def _kernel(kernel: ConvKernel, device: torch.device, op: Op) -> str:
    k = resolve_conv_kernel(kernel, device, op)
    if device.type != "cpu" and k in ("onednn", "float-exact"):
        raise ValueError(f"int8 conv kernel {k!r} runs on the CPU only, not on {device}")
    return k


def _check_grad(g: torch.Tensor, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                spec: ConvSpec) -> None:
    """g must be the int8 (N, O, Ho, Wo) gradient of the convolution of x_shape and w_shape."""
    ho, wo = _check(torch.empty(x_shape, dtype=torch.int8, device="meta"), w_shape, spec)
    expected = (x_shape[0], w_shape[0], ho, wo)
    if g.dtype != torch.int8 or tuple(g.shape) != expected:
        raise ValueError(f"g must be int8 {expected}, got {g.dtype} {tuple(g.shape)}")


def int8_conv2d(x: torch.Tensor, w: torch.Tensor, spec: ConvSpec = ConvSpec(),
                kernel: ConvKernel = "auto") -> torch.Tensor:
    """Exact forward: x int8 (N, C, H, W), w int8 (O, C/G, kh, kw) -> (N, O, Ho, Wo) int32."""
    _check(x, tuple(w.shape), spec)
    k = _kernel(kernel, x.device, "forward")
    if k == "reference" and x.device.type != "cpu":  # no int64 matmul on CUDA
        return _forward_int(x.cpu(), w.cpu(), spec, k).to(x.device)
    return _forward_int(x, w, spec, k)


def int8_conv2d_weight(x: torch.Tensor, g: torch.Tensor, w_shape: tuple[int, ...],
                       spec: ConvSpec = ConvSpec(), kernel: ConvKernel = "auto") -> torch.Tensor:
    """Exact weight gradient: x int8 (N, C, H, W), g int8 (N, O, Ho, Wo) -> int32 w_shape."""
    w_shape = tuple(w_shape)
    _check_grad(g, tuple(x.shape), w_shape, spec)
    k = _kernel(kernel, x.device, "weight")
    if k == "reference" and x.device.type != "cpu":
        return _weight_int(x.cpu(), g.cpu(), w_shape, spec, k).to(x.device)
    return _weight_int(x, g, w_shape, spec, k)


def int8_conv2d_input(g: torch.Tensor, w: torch.Tensor, x_shape: tuple[int, ...],
                      spec: ConvSpec = ConvSpec(), kernel: ConvKernel = "auto") -> torch.Tensor:
    """Exact input gradient: g int8 (N, O, Ho, Wo), w int8 (O, C/G, kh, kw) -> int32 x_shape."""
    x_shape = torch.Size(x_shape)
    _check_grad(g, tuple(x_shape), tuple(w.shape), spec)
    k = _kernel(kernel, g.device, "input")
    if k == "reference" and g.device.type != "cpu":
        return _input_int(g.cpu(), w.cpu(), x_shape, spec, k).to(g.device)
    return _input_int(g, w, x_shape, spec, k)


def _scale_vec(scale: torch.Tensor, n: int, name: str, allow_vector: bool = True) -> torch.Tensor:
    """A 0-d scale, or one with n entries (per channel / per sample), as a float32 (1,) or (n,)."""
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.numel() == 1:
        return scale.reshape(1)
    if not allow_vector or scale.numel() != n:
        allowed = f"1 or {n}" if allow_vector else "1 (per tensor)"
        raise ValueError(f"{name} has {scale.numel()} values; expected {allowed}")
    return scale.reshape(n)


def int8_conv2d_scaled(
    x: torch.Tensor, x_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
    spec: ConvSpec = ConvSpec(), kernel: ConvKernel = "auto",
) -> torch.Tensor:
    """(x * x_scale) conv (w * w_scale) as float32 (N, O, Ho, Wo), from the exact accumulator.

    x_scale: 0-d, or one per sample (N values); w_scale: 0-d, or one per output channel (O values).
    The oneDNN kernel returns a channels_last tensor.
    """
    n, o = x.shape[0], w.shape[0]
    _check(x, tuple(w.shape), spec)
    xs = _scale_vec(x_scale, n, "x_scale").view(-1, 1, 1, 1)  # (1 or N, 1, 1, 1)
    ws = _scale_vec(w_scale, o, "w_scale").expand(o).contiguous()  # (O,)
    k = _kernel(kernel, x.device, "forward")
    if k == "onednn":
        if xs.numel() == 1:  # scales applied by oneDNN to the int32 accumulator
            return _onednn_forward(x, w, spec, None, float(xs), ws)
        return _onednn_forward(x, w, spec, None, 1.0, ws).mul_(xs)
    if k == "float-exact" and w[0].numel() <= FLOAT_EXACT_K:
        z = _float_forward(x, w, spec)
    else:
        z = int8_conv2d(x, w, spec, k).float()
    return z.mul_(xs.to(z.device) * ws.to(z.device).view(1, -1, 1, 1))


def int8_conv2d_weight_scaled(
    x: torch.Tensor, x_scale: torch.Tensor, g: torch.Tensor, g_scale: torch.Tensor,
    w_shape: tuple[int, ...], spec: ConvSpec = ConvSpec(), kernel: ConvKernel = "auto",
) -> torch.Tensor:
    """Weight gradient of (x * x_scale) and (g * g_scale) as float32 w_shape.

    x_scale: 0-d (per tensor, since the batch is summed over); g_scale: 0-d or one per output
    channel.
    """
    w_shape = tuple(w_shape)
    o = w_shape[0]
    _check_grad(g, tuple(x.shape), w_shape, spec)
    xs = _scale_vec(x_scale, 1, "x_scale", allow_vector=False)
    gs = _scale_vec(g_scale, o, "g_scale").expand(o).contiguous()  # (O,)
    k = _kernel(kernel, x.device, "weight")
    if k != "reference" and (gw := _depthwise_weight(x, g, w_shape, spec)) is not None:
        z = gw.float()  # one rounding to float32, then scaled
    elif k == "onednn" and _taps_fit(spec):
        z = _taps_weight(x, g, w_shape, spec).float()  # one rounding to float32, then scaled
    elif k == "onednn":
        return _onednn_weight(x, g, w_shape, spec, None, float(xs), gs)
    elif k == "float-exact" and g[:, 0].numel() <= FLOAT_EXACT_K:
        z = _float_weight(x, g, w_shape, spec)
    else:
        z = int8_conv2d_weight(x, g, w_shape, spec, k).float()
    return z.mul_(xs.to(z.device) * gs.to(z.device).view(-1, 1, 1, 1))


def int8_conv2d_input_scaled(
    g: torch.Tensor, g_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
    x_shape: tuple[int, ...], spec: ConvSpec = ConvSpec(), kernel: ConvKernel = "auto",
) -> torch.Tensor:
    """Input gradient of (g * g_scale) and (w * w_scale) as float32 x_shape.

    g_scale: 0-d or one per sample; w_scale: 0-d (per tensor, since the output channels are
    summed over).
    """
    x_shape = torch.Size(x_shape)
    n, c = x_shape[:2]
    _check_grad(g, tuple(x_shape), tuple(w.shape), spec)
    gs = _scale_vec(g_scale, n, "g_scale").view(-1, 1, 1, 1)
    ws = _scale_vec(w_scale, 1, "w_scale", allow_vector=False)
    k = _kernel(kernel, g.device, "input")
    if k == "onednn":
        if gs.numel() == 1:
            return _onednn_input(g, w, x_shape, spec, None, float(gs), ws.expand(c).contiguous())
        return _onednn_input(g, w, x_shape, spec, None, 1.0, ws.expand(c).contiguous()).mul_(gs)
    if k == "float-exact" and (w.shape[0] // spec.groups * w[0, 0].numel() <= FLOAT_EXACT_K
                               or _input_grad_fits_float(g, w)):
        z = _float_input(g, w, x_shape, spec)
    else:
        z = int8_conv2d_input(g, w, x_shape, spec, k).float()
    return z.mul_(gs.to(z.device) * ws.to(z.device))
