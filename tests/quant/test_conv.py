"""Exact int8 convolution (ffint8.quant.conv): every kernel and op bit-exact against int64."""

import pytest
import torch
import torch.nn.functional as F

from ffint8.quant import fastsr
from ffint8.quant.conv import (
    CONV_KERNELS,
    ConvSpec,
    int8_conv2d,
    int8_conv2d_input,
    int8_conv2d_input_scaled,
    int8_conv2d_scaled,
    int8_conv2d_weight,
    int8_conv2d_weight_scaled,
    onednn_available,
    resolve_conv_kernel,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN int8 conv not available")
KERNELS = ("im2col", "float-exact", pytest.param("onednn", marks=needs_onednn), "auto")

# (N, C, H, W, O, k, stride, padding, groups): strides 1 and 2, padding 0/1/2, groups 1, 2 and
# depthwise, 1x1 / 3x3 / 5x5, odd and non-square spatial sizes.
CASES = [
    (2, 3, 7, 9, 4, 3, 1, 1, 1),
    (2, 4, 9, 7, 6, 3, 2, 1, 2),
    (1, 6, 11, 8, 6, 5, 2, 2, 6),  # depthwise 5x5
    (3, 5, 5, 5, 7, 1, 1, 0, 1),
    (2, 4, 6, 7, 8, 1, 2, 0, 4),  # grouped 1x1, two outputs per input channel
    (2, 3, 8, 5, 3, 5, 1, 2, 1),
    (1, 4, 7, 7, 4, 3, 1, 0, 4),  # depthwise 3x3, no padding
    (2, 2, 5, 6, 3, 1, 2, 1, 1),  # 1x1 with padding: output borders see only zeros
    (1, 8, 10, 9, 4, 3, 2, 2, 2),
    (2, 2, 7, 6, 20, 3, 2, 1, 1),  # C*k*k <= O, like a stem: oneDNN's weight grad is a GEMM
    (4, 2, 1, 1, 8, 1, 1, 0, 1),  # squeeze-excitation: 1x1 on pooled features, a strided g view
]


def rand_i8(shape, gen, lo=-128, hi=127):
    t = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)
    t.view(-1)[:2] = torch.tensor([lo, hi], dtype=torch.int8)  # both extremes always present
    return t


def operands(case, seed, signed=True):
    n, c, h, w, o, k, s, p, g = case
    gen = torch.Generator().manual_seed(seed)
    spec = ConvSpec(s, p, g)
    x = rand_i8((n, c, h, w), gen, -128 if signed else 0)
    wt = rand_i8((o, c // g, k, k), gen)
    gz = rand_i8((n, o, *spec.out_size(h, w, k, k)), gen)
    return x, wt, gz, spec


def ref_all(x, w, gz, spec):
    """The three ops in float64 by torch (exact: every value is an integer below 2^53)."""
    s, p, g = spec.stride, spec.padding, spec.groups
    xd, wd, gd = x.double(), w.double(), gz.double()
    return (F.conv2d(xd, wd, None, s, p, 1, g),
            torch.nn.grad.conv2d_weight(xd, w.shape, gd, s, p, 1, g),
            torch.nn.grad.conv2d_input(x.shape, wd, gd, s, p, 1, g))


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_float64_torch(case):
    x, w, gz, spec = operands(case, 1)
    z, gw, gx = ref_all(x, w, gz, spec)
    assert torch.equal(int8_conv2d(x, w, spec, "reference").double(), z)
    assert torch.equal(int8_conv2d_weight(x, gz, w.shape, spec, "reference").double(), gw)
    assert torch.equal(int8_conv2d_input(gz, w, x.shape, spec, "reference").double(), gx)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "nonneg"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_kernels_bit_exact(case, kernel, signed):
    x, w, gz, spec = operands(case, 2, signed)
    z = int8_conv2d(x, w, spec, kernel)
    gw = int8_conv2d_weight(x, gz, w.shape, spec, kernel)
    gx = int8_conv2d_input(gz, w, x.shape, spec, kernel)
    assert z.dtype == gw.dtype == gx.dtype == torch.int32
    assert torch.equal(z, int8_conv2d(x, w, spec, "reference"))
    assert torch.equal(gw, int8_conv2d_weight(x, gz, w.shape, spec, "reference"))
    assert torch.equal(gx, int8_conv2d_input(gz, w, x.shape, spec, "reference"))


@pytest.mark.parametrize("transpose", ["c-kernel", "torch"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_kernels_bit_exact_channels_last(case, kernel, transpose, monkeypatch):
    # The layout the FF units hold their int8 activations and gradients in: the weight gradient
    # then swaps batch and channels by a transpose (the C kernel, or PyTorch where it is missing).
    if transpose == "torch":
        monkeypatch.setattr(fastsr, "transpose_bytes", lambda *a: None)
    x, w, gz, spec = operands(case, 5, signed=False)
    xc, gc = (t.contiguous(memory_format=torch.channels_last) for t in (x, gz))
    assert torch.equal(int8_conv2d(xc, w, spec, kernel), int8_conv2d(x, w, spec, "reference"))
    assert torch.equal(int8_conv2d_weight(xc, gc, w.shape, spec, kernel),
                       int8_conv2d_weight(x, gz, w.shape, spec, "reference"))
    assert torch.equal(int8_conv2d_input(gc, w, x.shape, spec, kernel),
                       int8_conv2d_input(gz, w, x.shape, spec, "reference"))


@pytest.mark.parametrize("kernel", KERNELS)
def test_scaled_unit_scales_bit_exact(kernel):
    # Accumulators below 2^24 are exact in float32, so the scaled form must equal them exactly.
    x, w, gz, spec = operands(CASES[1], 3)
    one = torch.tensor(1.0)
    z, gw, gx = ref_all(x, w, gz, spec)
    assert torch.equal(int8_conv2d_scaled(x, one, w, one, spec, kernel).double(), z)
    assert torch.equal(int8_conv2d_weight_scaled(x, one, gz, one, w.shape, spec, kernel).double(), gw)
    assert torch.equal(int8_conv2d_input_scaled(gz, one, w, one, x.shape, spec, kernel).double(), gx)


@pytest.mark.parametrize("kernel", KERNELS)
def test_scaled_per_channel_and_per_sample(kernel):
    # Scaled results round in float32: the error is a few ulps of the largest partial sum (signed
    # oneDNN operands are two calls whose results partly cancel), so the tolerance is relative to
    # the same op on |operands| + 1.
    x, w, gz, spec = operands(CASES[0], 4)
    gen = torch.Generator().manual_seed(4)
    n, o = x.shape[0], w.shape[0]
    xs, ws = torch.rand(n, 1, 1, 1, generator=gen), torch.rand(o, 1, 1, 1, generator=gen)
    gs, g_ch = torch.rand((), generator=gen), torch.rand(o, generator=gen)
    exact = ref_all(x, w, gz, spec)
    bound = ref_all(x.short().abs() + 1, w.short().abs() + 1, gz.short().abs() + 1, spec)
    scales = (xs.double() * ws.double().view(1, -1, 1, 1), gs.double() * g_ch.double().view(-1, 1, 1, 1),
              xs.double() * gs.double())
    got = (int8_conv2d_scaled(x, xs, w, ws, spec, kernel),
           int8_conv2d_weight_scaled(x, gs, gz, g_ch, w.shape, spec, kernel),
           int8_conv2d_input_scaled(gz, xs, w, gs, x.shape, spec, kernel))
    for g, e, b, s in zip(got, exact, bound, scales):
        assert g.dtype == torch.float32
        assert ((g.double() - e * s).abs() <= 2**-20 * b * s).all()


def _big_operands():
    """Reductions longer than FLOAT_EXACT_K terms with odd sums above 2^24: where a single
    float32 pass would round (forward and input grad: 144 * 9 = 1296 terms; weight grad: 2 * 30 * 30
    = 1800 terms)."""
    x = torch.full((2, 144, 30, 30), 127, dtype=torch.int8)
    x[0, 0, 0, 0] = 126
    w = torch.full((144, 144, 3, 3), 127, dtype=torch.int8)
    w[:, 0, 0, 0] = 126
    gz = torch.full((2, 144, 30, 30), 127, dtype=torch.int8)
    gz[0, :, 0, 0] = 126
    return x, w, gz, ConvSpec(1, 1)


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_long_reductions_exact(kernel, signed):
    x, w, gz, spec = _big_operands()
    if signed:
        x, w, gz = -x - 1, -w - 1, -gz - 1  # -128 and -127
    z, gw, gx = ref_all(x, w, gz, spec)
    assert z.abs().max() > 2**24 and gx.abs().max() > 2**24 and gw.abs().max() > 2**24
    assert int(z[1, 0, 15, 15]) % 2 == 1 or int(z[0, 0, 1, 1]) % 2 == 1
    assert torch.equal(int8_conv2d(x, w, spec, kernel).double(), z)
    assert torch.equal(int8_conv2d_weight(x, gz, w.shape, spec, kernel).double(), gw)
    assert torch.equal(int8_conv2d_input(gz, w, x.shape, spec, kernel).double(), gx)


@pytest.mark.parametrize("kernel", ("reference", *KERNELS))
def test_int64_past_max_exact_k(kernel):
    # Weight grad of a 1x1 conv over 1 * 363 * 363 = 131,769 > MAX_EXACT_K terms of (-128)^2:
    # the sum passes 2^31 - 1, so it comes back as int64.
    x = torch.full((1, 1, 363, 363), -128, dtype=torch.int8)
    gz = x.clone()
    gw = int8_conv2d_weight(x, gz, (1, 1, 1, 1), ConvSpec(), kernel)
    assert gw.dtype == torch.int64 and int(gw) == 128 * 128 * 363 * 363


def test_resolve_and_errors():
    assert set(CONV_KERNELS) == {"auto", "onednn", "im2col", "float-exact", "reference"}
    assert resolve_conv_kernel("auto", "cpu") in ("onednn", "float-exact", "im2col")
    assert resolve_conv_kernel("auto", "cuda") == "im2col"
    assert resolve_conv_kernel("im2col", "cpu") == "im2col"
    with pytest.raises(ValueError, match="unknown int8 conv kernel 'fast'"):
        resolve_conv_kernel("fast")
    x, w = torch.zeros(1, 4, 5, 5, dtype=torch.int8), torch.zeros(2, 2, 3, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="do not match groups=1"):
        int8_conv2d(x, w)
    with pytest.raises(ValueError, match="expected int8"):
        int8_conv2d(x.float(), w, ConvSpec(groups=2))
    with pytest.raises(ValueError, match="does not fit"):
        int8_conv2d(x[..., :2, :2], w, ConvSpec(groups=2))
    with pytest.raises(ValueError, match="g must be int8"):
        int8_conv2d_weight(x, torch.zeros(1, 2, 4, 4, dtype=torch.int8), w.shape, ConvSpec(groups=2))
    with pytest.raises(ValueError, match="x_scale has 3 values"):
        int8_conv2d_scaled(x, torch.ones(3), w, torch.ones(()), ConvSpec(groups=2))
    gz = torch.zeros(1, 2, 3, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"w_scale has 2 values; expected 1 \(per tensor\)"):
        int8_conv2d_input_scaled(gz, torch.ones(()), w, torch.ones(2), x.shape, ConvSpec(groups=2))
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        ConvSpec(stride=0)
    with pytest.raises(ValueError, match="padding must be"):
        ConvSpec(padding=(1, -1))
    assert ConvSpec(2, (1, 0)).padding == (1, 0) and ConvSpec(2).stride == (2, 2)


def _sparse_grad(o, extreme, gen):
    """A long-reduction input gradient whose g is small: sum_o |g| stays below the float bound."""
    x_shape, w = (2, 8, 6, 6), torch.full((o, 8, 3, 3), extreme, dtype=torch.int8)
    gz = torch.randint(-2, 3, (2, o, 6, 6), generator=gen, dtype=torch.int8)
    return x_shape, w, gz


@pytest.mark.parametrize("extreme", [127, -128])
def test_input_grad_one_float_call_when_the_data_allow(monkeypatch, extreme):
    """144 output channels x 9 taps > FLOAT_EXACT_K, but with |g| <= 2 every partial sum stays
    far below 2^24: float-exact makes one call (no chunks), and is still exact; with large g it
    falls back to chunks and is exact too."""
    import ffint8.quant.conv as qc

    gen = torch.Generator().manual_seed(3)
    x_shape, w, gz = _sparse_grad(144, extreme, gen)
    spec = ConvSpec(1, 1)
    assert 144 * 9 > qc.FLOAT_EXACT_K and qc._input_grad_fits_float(gz, w)
    ref = torch.nn.grad.conv2d_input(x_shape, w.double(), gz.double(), 1, 1)

    def no_chunks(*a):
        raise AssertionError("chunked although one call is exact")

    with monkeypatch.context() as m:
        m.setattr(qc, "_chunks", no_chunks)
        assert torch.equal(int8_conv2d_input(gz, w, x_shape, spec, "float-exact").double(), ref)
        got = int8_conv2d_input_scaled(gz, torch.tensor(0.5), w, torch.tensor(0.25), x_shape,
                                       spec, "float-exact")
        assert torch.equal(got.double(), ref * 0.125)

    big = torch.full_like(gz, 127)  # 127 * 9 * 144 * 127 > 2^24: the bound fails
    assert not qc._input_grad_fits_float(big, w)
    ref = torch.nn.grad.conv2d_input(x_shape, w.double(), big.double(), 1, 1)
    assert ref.abs().max() > 2**24
    assert torch.equal(int8_conv2d_input(big, w, x_shape, spec, "float-exact").double(), ref)


def test_input_grad_bound_counts_minus_128():
    w = torch.full((4, 1, 3, 3), -128, dtype=torch.int8)
    g = torch.full((1, 4, 3, 3), -128, dtype=torch.int8)
    # 128 * 9 * (4 * 128) = 589,824 < 2^24; read as int8, abs(-128) would make it negative
    import ffint8.quant.conv as qc

    assert qc._input_grad_fits_float(g, w)
    g = torch.full((1, 120, 3, 3), -128, dtype=torch.int8)
    w = torch.full((120, 1, 3, 3), -128, dtype=torch.int8)
    assert not qc._input_grad_fits_float(g, w)  # 128 * 9 * 120 * 128 = 17.7 M > 2^24


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_1x1_exact_with_two_threads(two_torch_threads, kernel):
    """Two threads, as training runs: oneDNN's own strided 1x1 u8s8 convolution returned wrong
    sums there for 8 and 24 input channels (this CPU, torch 2.13); the forward now takes the
    stride itself. Repeated, as the wrong sums came from a thread race."""
    assert torch.get_num_threads() == 2
    gen = torch.Generator().manual_seed(11)
    for c, hw, o in [(8, 28, 32), (24, 14, 16)]:
        x = rand_i8((16, c, hw, hw), gen, 0, 127)  # non-negative: one oneDNN call
        w = rand_i8((o, c, 1, 1), gen)
        spec = ConvSpec(2, 0)
        want = F.conv2d(x.double(), w.double(), stride=2)
        for _ in range(5):
            assert torch.equal(int8_conv2d(x, w, spec, kernel).double(), want), (c, hw, o)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", ["auto", "im2col", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_kernels_bit_exact_on_cuda(case, kernel):
    # what --device cuda runs: auto is im2col there (cuBLASLt's int8 GEMM through int8_mm)
    x, w, gz, spec = operands(case, 5)
    z, gw, gx = ref_all(x, w, gz, spec)
    xc, wc, gc = x.cuda(), w.cuda(), gz.cuda()
    assert torch.equal(int8_conv2d(xc, wc, spec, kernel).cpu().double(), z)
    assert torch.equal(int8_conv2d_weight(xc, gc, w.shape, spec, kernel).cpu().double(), gw)
    assert torch.equal(int8_conv2d_input(gc, wc, x.shape, spec, kernel).cpu().double(), gx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", ["float-exact", "onednn"])
def test_cpu_only_kernels_refuse_cuda_operands(kernel):
    x, w, _, spec = operands(CASES[0], 0)
    with pytest.raises(ValueError, match="runs on the CPU only"):
        int8_conv2d(x.cuda(), w.cuda(), spec, kernel)


@pytest.fixture
def poisoned_empty():
    """torch.empty filled with garbage (NaN, the integer maximum): a buffer whose padding is not
    zeroed gives wrong sums instead of passing by luck on fresh, zeroed pages."""
    import torch.utils.deterministic as det

    was, fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(was)
    det.fill_uninitialized_memory = fill


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [c for c in CASES if c[8] == 1])  # one group
def test_weight_grad_taps_bit_exact(case, layout, poisoned_empty):
    # the weight gradient as kh*kw GEMMs over flat padded buffers, a stride as one stride-1
    # problem per phase (what the oneDNN kernel runs where torch._int_mm has an int8 dot-product
    # unit): strides 1 and 2, every padding and kernel size
    from ffint8.quant.conv import _taps_weight

    x, w, gz, spec = operands(case, 11)
    if layout == "channels_last":
        x, gz = (t.contiguous(memory_format=torch.channels_last) for t in (x, gz))
    _, gw, _ = ref_all(x, w, gz, spec)
    got = _taps_weight(x, gz, w.shape, spec)
    assert got.dtype == torch.int32 and got.is_contiguous()
    assert torch.equal(got.double(), gw)


@pytest.mark.parametrize("has_dot", [True, False])
def test_onednn_weight_grad_takes_taps_only_with_int8_dot(monkeypatch, has_dot):
    import ffint8.quant.conv as conv

    calls = []
    real = conv._taps_weight
    monkeypatch.setattr(conv, "cpu_has_int8_dot", lambda: has_dot)
    monkeypatch.setattr(conv, "_taps_weight", lambda *a: calls.append(1) or real(*a))
    for case in (CASES[0], CASES[1]):  # one group; two groups (oneDNN's convolution)
        x, w, gz, spec = operands(case, 2, signed=False)
        _, gw, _ = ref_all(x, w, gz, spec)
        if not onednn_available():
            pytest.skip("oneDNN int8 conv not available")
        assert torch.equal(int8_conv2d_weight(x, gz, w.shape, spec, "onednn").double(), gw)
        scaled = int8_conv2d_weight_scaled(x, torch.tensor(0.5), gz, torch.tensor(0.25),
                                           w.shape, spec, "onednn")
        torch.testing.assert_close(scaled.double(), gw * 0.125, rtol=1e-6, atol=0)
    assert len(calls) == (2 if has_dot else 0)  # the ungrouped case, exact and scaled


@pytest.mark.parametrize("available", [True, False], ids=["c-loop", "no-c-loop"])
def test_depthwise_weight_grad_takes_the_c_loop(monkeypatch, available):
    # every kernel but the reference sends a depthwise weight gradient to fastsr's loop, exact
    # and scaled, and only a depthwise one (not two groups); without the loop, the kernel's own
    import ffint8.quant.conv as conv

    if available and not fastsr.available():
        pytest.skip("the C kernel is not built here")
    calls = []
    real = fastsr.depthwise_weight_grad

    def spy(*a):
        calls.append(1)
        return real(*a) if available else None

    monkeypatch.setattr(conv.fastsr, "depthwise_weight_grad", spy)
    kernels = ["im2col", "float-exact"] + (["onednn"] if onednn_available() else [])
    for case in (CASES[2], CASES[6], CASES[1]):  # depthwise 5x5 and 3x3; two groups
        x, w, gz, spec = operands(case, 4)
        _, gw, _ = ref_all(x, w, gz, spec)
        for kernel in kernels + ["reference"]:
            assert torch.equal(int8_conv2d_weight(x, gz, w.shape, spec, kernel).double(), gw)
            scaled = int8_conv2d_weight_scaled(x, torch.tensor(0.5), gz, torch.tensor(0.25),
                                               w.shape, spec, kernel)
            torch.testing.assert_close(scaled.double(), gw * 0.125, rtol=1e-6, atol=0)
    # two depthwise cases, exact and scaled; a declined scaled call asks again in the exact form
    assert len(calls) == 2 * 2 * len(kernels) if available else len(calls) >= 2 * 2 * len(kernels)
