"""The fused C quantiser (ffint8.quant.fastsr and csrc/fastquant.c)."""

import ctypes
import math
import os
import shutil

import pytest
import torch

from ffint8.quant import fastsr

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")

needs_lib = pytest.mark.skipif(
    os.environ.get("FFINT8_NO_CKERNEL") == "1", reason="FFINT8_NO_CKERNEL=1 disables the kernel"
)


def _lib():
    lib = fastsr._library()
    assert lib is not None
    return lib


def _absmax(x):
    return _lib().ffq_absmax(x.data_ptr(), x.numel())


@needs_lib
def test_available_with_a_compiler():
    assert fastsr.available() is True


# --------------------------------------------------------------------------------------------
# inputs the fused kernel does not take


@needs_lib
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: torch.randn(6, 5).t(), id="transposed"),
        pytest.param(lambda: torch.randn(40)[::2], id="strided"),
        pytest.param(lambda: torch.randn(4, 6)[:, 1:4], id="column-slice"),
        pytest.param(lambda: torch.randn(30, dtype=torch.float64), id="float64"),
        pytest.param(lambda: torch.randn(30).half(), id="float16"),
        pytest.param(lambda: torch.randn(30).bfloat16(), id="bfloat16"),
        pytest.param(lambda: torch.empty(30, device="meta"), id="meta-device"),
    ],
)
@pytest.mark.parametrize("seed", (None, 3))
def test_quantize_per_tensor_declines(make, seed):
    x = make()
    assert fastsr.quantize_per_tensor(x, seed) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantize_per_tensor_declines_cuda():
    assert fastsr.quantize_per_tensor(torch.randn(30, device="cuda"), None) is None


@needs_lib
@pytest.mark.parametrize("seed", (None, 1))
def test_quantize_per_tensor_contiguous_float32_accepted(seed):
    x = torch.randn(6, 5)
    out = fastsr.quantize_per_tensor(x, seed)
    assert out is not None
    q, scale = out
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == ()


@needs_lib
@pytest.mark.parametrize("seed", (None, 4))
def test_quantize_per_tensor_empty(seed):
    q, scale = fastsr.quantize_per_tensor(torch.empty(0, 3), seed)
    assert q.shape == (0, 3) and q.dtype == torch.int8
    assert scale.item() == 1.0


# --------------------------------------------------------------------------------------------
# NaN and Inf


@needs_lib
@pytest.mark.parametrize("bad", (float("nan"), -float("nan"), float("inf"), -float("inf")))
@pytest.mark.parametrize("n", (1, 7, 8, 9, 33, 1000))
@pytest.mark.parametrize("where", ("first", "middle", "last"))
def test_nan_or_inf_gives_nan_scale(bad, n, where):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    i = {"first": 0, "middle": n // 2, "last": n - 1}[where]
    x[i] = bad
    for seed in (None, 11):
        q, scale = fastsr.quantize_per_tensor(x, seed)
        assert math.isnan(scale.item())
        assert q.shape == x.shape
    assert math.isnan(_absmax(x))


@needs_lib
def test_nan_scale_through_quantize():
    from ffint8.quant import quantize

    x = torch.randn(5, 17)
    x[3, 16] = float("inf")
    assert math.isnan(quantize(x).scale.item())
    assert math.isnan(quantize(x, "stochastic", seed=0).scale.item())


# --------------------------------------------------------------------------------------------
# absmax


SIZES = (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 1000, 1023, 4097, 65_537)


@needs_lib
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("where", ("random", "first", "last"))
def test_absmax_exact(n, where):
    for sign in (1.0, -1.0):
        g = torch.Generator().manual_seed(n * 3 + (where == "last"))
        x = torch.randn(n, generator=g)
        if where != "random":
            i = 0 if where == "first" else n - 1
            x[i] = sign * (x.abs().max() + 0.5)
        elif sign < 0:
            x = -x.abs()
        expected = x.abs().max().item()
        assert _absmax(x) == expected
        _, scale = fastsr.quantize_per_tensor(x, None)
        assert torch.equal(scale, (x.double().abs().max() / 127).float())


@needs_lib
@pytest.mark.parametrize(
    "values",
    [
        [0.0],
        [-0.0, -0.0, -0.0],
        [1e-45, -3e-45, 0.0],  # subnormals
        [3.4e38, -3.4028235e38, 1.0],  # near the largest float32
        [-1.0, 1.0, -1.0],
        [2.0**-126, -2.0**-127],
    ],
)
def test_absmax_edge_values(values):
    x = torch.tensor(values, dtype=torch.float32)
    assert _absmax(x) == x.abs().max().item()


@needs_lib
def test_absmax_many_random_tensors():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 300, (1,), generator=g))
        x = torch.randn(n, generator=g) * float(torch.rand(1, generator=g) * 1e3)
        assert _absmax(x) == x.abs().max().item()


# --------------------------------------------------------------------------------------------
# mix64 (splitmix64 finaliser)


def test_mix64_reference_vectors():
    # The first three outputs of Vigna's splitmix64 seeded with 0; the generator adds the golden
    # gamma before mixing, so output i is mix64(i * gamma).
    gamma = 0x9E3779B97F4A7C15
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [fastsr.mix64((i * gamma) % 2**64) for i in range(3)] == expected


def test_mix64_distinct_for_consecutive_inputs():
    outs = [fastsr.mix64(i) for i in range(10_000)]
    assert len(set(outs)) == 10_000
    assert all(0 <= o < 2**64 for o in outs)
    # and the two 32-bit keys handed to the C kernel are distinct too
    assert len({o & 0xFFFF_FFFF for o in outs}) == 10_000
    assert len({o >> 32 for o in outs}) == 10_000


def test_mix64_avalanche():
    """Consecutive inputs differ in about half of the 64 output bits."""
    n = 10_000
    flips = [bin(fastsr.mix64(i) ^ fastsr.mix64(i + 1)).count("1") for i in range(n)]
    mean = sum(flips) / n
    assert abs(mean - 32) < 5 * math.sqrt(16 / n)  # binomial(64, 1/2): sd 4 per pair


def test_mix64_wraps_negative_and_large_inputs():
    assert fastsr.mix64(-1) == fastsr.mix64(2**64 - 1)
    assert fastsr.mix64(2**64 + 5) == fastsr.mix64(5)
    assert 0 <= fastsr.mix64(-(2**70)) < 2**64


# --------------------------------------------------------------------------------------------
# the stochastic kernel's uniform numbers


@needs_lib
@pytest.mark.parametrize("seed", (0, 1, 2**40 + 3))
def test_sr_uniform_fraction_up_at_one_half(seed):
    """1,000,000 copies of 0.5 * scale: each element is an independent draw (the hash takes the
    element index), so the fraction rounded up is 1/2 within 5 binomial sd."""
    n = 1_000_000
    x = torch.full((n + 1,), 0.5)
    x[0] = 127.0  # scale = 1 exactly
    q, scale = fastsr.quantize_per_tensor(x, seed)
    assert scale.item() == 1.0
    up = q[1:]
    assert bool(((up == 0) | (up == 1)).all())
    frac = up.double().mean().item()
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / n)


@needs_lib
def test_sr_uniform_quantiles():
    """P(round up) = frac for fractions across [0, 1): u is uniform, not just symmetric."""
    n = 200_000
    fracs = [1 / 16, 1 / 4, 3 / 8, 5 / 8, 3 / 4, 15 / 16, 1 - 2**-10]
    vals = torch.tensor([10.0 + f for f in fracs])
    x = torch.cat([torch.tensor([-127.0]), vals.repeat(n)])
    q, _ = fastsr.quantize_per_tensor(x, 77)
    up = (q[1:].view(n, len(fracs)) == 11).double().mean(dim=0)
    for f, p in zip(fracs, up.tolist()):
        assert abs(p - f) < 5 * math.sqrt(f * (1 - f) / n), (f, p)


@needs_lib
def test_sr_different_seeds_give_different_streams():
    """Every pair among 8 consecutive seeds rounds a fraction-1/2 tensor differently."""
    x = torch.full((4097,), 0.5)
    x[0] = 127.0
    outs = [fastsr.quantize_per_tensor(x, s)[0] for s in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(outs[i], outs[j])


# --------------------------------------------------------------------------------------------
# building the kernel


def test_compile_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = fastsr._cache_dir()
    assert cache == tmp_path / "ffint8"
    assert not cache.exists()
    out = cache / "fastquant-test.so"
    assert fastsr._compile(out) is True
    assert out.is_file() and out.stat().st_size > 0
    assert sorted(p.name for p in cache.iterdir()) == ["fastquant-test.so"]  # temp dir removed
    lib = ctypes.CDLL(str(out))
    lib.ffq_absmax.restype = ctypes.c_float
    lib.ffq_absmax.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    x = torch.randn(1001)
    assert lib.ffq_absmax(x.data_ptr(), x.numel()) == x.abs().max().item()


@needs_lib
def test_library_builds_into_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = fastsr._library.__wrapped__()  # bypass the lru_cache
    assert lib is not None
    built = list((tmp_path / "ffint8").glob("fastquant-*.so"))
    assert len(built) == 1
    x = torch.randn(77)
    assert lib.ffq_absmax(x.data_ptr(), x.numel()) == x.abs().max().item()
    # a second load reuses the cached file rather than compiling again
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(fastsr, "_compile", lambda out: pytest.fail("recompiled"))
    assert fastsr._library.__wrapped__() is not None
    assert built[0].stat().st_mtime_ns == mtime


def test_library_disabled_by_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("FFINT8_NO_CKERNEL", "1")
    assert fastsr._library.__wrapped__() is None
    assert not (tmp_path / "ffint8").exists()


def test_compile_without_compiler(tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(fastsr.shutil, "which", lambda name: None)
    out = tmp_path / "ffint8" / "x.so"
    assert fastsr._compile(out) is False
    assert not out.exists()


def test_compiler_refusing_the_wide_vectors_flag_gets_the_plain_flags(tmp_path, monkeypatch):
    """On x86 the build tries 512-bit vectors first; a compiler that refuses the flag still
    builds the library, with the plain flags."""
    cc = shutil.which("cc")
    log = tmp_path / "calls"
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\n"
                    f'echo "$*" >> "{log}"\n'
                    'case "$*" in *-mprefer-vector-width*) exit 1;; esac\n'
                    f'exec "{cc}" "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    out = tmp_path / "ffint8" / "x.so"
    assert fastsr._compile(out) is True and out.is_file()
    calls = log.read_text().splitlines()
    assert len(calls) == len(fastsr._flag_sets())
    assert "-mprefer-vector-width" not in calls[-1] and "-march=native" in calls[-1]
    assert list(out.parent.iterdir()) == [out]


def test_compile_failure_leaves_nothing(tmp_path, monkeypatch):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` command")
    monkeypatch.setenv("CC", false)
    out = tmp_path / "ffint8" / "x.so"
    assert fastsr._compile(out) is False
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------------------------
# one scale per row, round to nearest (inference)


def _rows_reference(x):
    """The plain PyTorch path: absmax_scale per row, x / scale, round half to even, clamp."""
    from ffint8.quant.quantize import absmax_scale, round_nearest

    scale = absmax_scale(x, channel_dim=0)
    return round_nearest(x / scale), scale


def _awkward_rows(cols, gen):
    """Rows that probe the rounding: ordinary, all zero, exact ties, subnormal, huge, one value."""
    rows = [torch.randn(cols, generator=gen), torch.zeros(cols),
            torch.rand(cols, generator=gen) * 1e-3, torch.randn(cols, generator=gen) * 1e30,
            torch.full((cols,), 1e-40), torch.zeros(cols)]
    step = 0.25 / 127  # max 0.25: multiples of half a step are ties of x / scale
    ties = (torch.randint(-254, 255, (cols,), generator=gen) * 0.5 * step).float()
    ties[0] = 0.25
    rows.append(ties)
    rows[-2][cols // 2] = -3.0
    return torch.stack(rows)


@needs_lib
@pytest.mark.parametrize("cols", [1, 13, 1000])
def test_rows_nearest_equals_the_pytorch_path(cols):
    gen = torch.Generator().manual_seed(cols)
    for x in (_awkward_rows(cols, gen), torch.randn(300, cols, generator=gen) * 3.7):
        q, scale = fastsr.quantize_rows_nearest(x)
        want_q, want_scale = _rows_reference(x)
        assert q.dtype == torch.int8 and scale.shape == (x.shape[0], 1)
        assert torch.equal(scale, want_scale)
        assert torch.equal(q, want_q)


@needs_lib
def test_rows_nearest_rounds_ties_to_even():
    # max 127 gives scale 1: x / scale is x itself
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5]])
    q, scale = fastsr.quantize_rows_nearest(x)
    assert float(scale) == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2]]


@needs_lib
def test_rows_nearest_marks_a_bad_row_only():
    x = torch.randn(4, 9)
    x[1, 3], x[2, 0] = float("nan"), float("inf")
    q, scale = fastsr.quantize_rows_nearest(x)
    assert math.isnan(scale[1, 0]) and math.isnan(scale[2, 0])
    assert q[1].abs().sum() == 0 and q[2].abs().sum() == 0
    want_q, want_scale = _rows_reference(x[[0, 3]])
    assert torch.equal(q[[0, 3]], want_q) and torch.equal(scale[[0, 3]], want_scale)


@needs_lib
def test_quantize_per_row_takes_the_fused_path(monkeypatch):
    from ffint8.quant import quantize

    x = torch.randn(5, 20)
    calls = []
    real = fastsr.quantize_rows_nearest
    monkeypatch.setattr(fastsr, "quantize_rows_nearest", lambda t: calls.append(t.shape) or real(t))
    got = quantize(x, "nearest", channel_dim=0)
    assert calls == [(5, 20)]
    want_q, want_scale = _rows_reference(x)
    assert torch.equal(got.q, want_q) and torch.equal(got.scale, want_scale)
    quantize(x, "nearest", channel_dim=1)  # one scale per column: the plain path
    quantize(x.unsqueeze(0), "nearest", channel_dim=0)  # not 2-D: the plain path
    assert calls == [(5, 20)]


def test_rows_nearest_declines_what_it_cannot_take():
    assert fastsr.quantize_rows_nearest(torch.randn(3, 4, 5)) is None
    assert fastsr.quantize_rows_nearest(torch.randn(6, 5).t()) is None
    assert fastsr.quantize_rows_nearest(torch.randn(6, 5, dtype=torch.float64)) is None


# --------------------------------------------------------------------------------------------
# the byte transpose


@needs_lib
@pytest.mark.parametrize("dtype", (torch.int8, torch.uint8))
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 8, 8), (3, 16, 16), (2, 17, 9), (1, 5, 40),
                                   (4, 33, 31), (1, 1000, 3), (2, 3, 1000), (1, 64, 129)])
def test_transpose_bytes_equals_torch(shape, dtype):
    # Full tiles, partial tiles and ragged 8x8 edges on both axes.
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(-128 if dtype == torch.int8 else 0, 128, shape, generator=gen, dtype=dtype)
    out = fastsr.transpose_bytes(x, shape[1], shape[2])
    assert out is not None and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out.view(shape[0], shape[2], shape[1]), x.transpose(1, 2))


@needs_lib
def test_transpose_bytes_declines_what_it_cannot_take():
    assert fastsr.transpose_bytes(torch.zeros(4, 4), 4, 4) is None  # 4-byte elements
    assert fastsr.transpose_bytes(torch.zeros(4, 6, dtype=torch.int8).t(), 6, 4) is None
    assert fastsr.transpose_bytes(torch.zeros(10, dtype=torch.int8), 3, 3) is None  # 10 % 9
    assert fastsr.transpose_bytes(torch.zeros(0, dtype=torch.int8), 0, 3) is None


# (N, C, H, W, k, stride, padding): 3x3 and 5x5 (unrolled), 1x1 and 7x7 (the generic loop),
# channel counts below, at and past one 16-lane vector (padded with zero channels), odd sizes
DW_CASES = [
    (2, 16, 7, 9, 3, 1, 1),
    (3, 8, 9, 9, 3, 2, 1),
    (2, 33, 8, 7, 5, 1, 2),
    (1, 48, 11, 10, 5, 2, 2),
    (2, 5, 6, 6, 1, 1, 0),
    (2, 20, 12, 11, 7, 2, 3),
    (1, 16, 5, 5, 3, 1, 0),
    (2, 17, 4, 6, 3, 2, 2),  # padding past the image's border on both sides
]


def _dw_operands(case, seed, extreme=False):
    n, c, h, w, k, s, p = case
    gen = torch.Generator().manual_seed(seed)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    if extreme:  # every product +2^14, the largest a sum can grow by
        return (torch.full((n, c, h, w), -128, dtype=torch.int8),
                torch.full((n, c, ho, wo), -128, dtype=torch.int8))
    x = torch.randint(-128, 128, (n, c, h, w), generator=gen, dtype=torch.int8)
    g = torch.randint(-128, 128, (n, c, ho, wo), generator=gen, dtype=torch.int8)
    return x, g


@needs_lib
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "extreme"])
@pytest.mark.parametrize("case", DW_CASES)
def test_depthwise_weight_grad_exact(case, extreme, layout):
    n, c, h, w, k, s, p = case
    x, g = _dw_operands(case, 7, extreme)
    want = torch.nn.grad.conv2d_weight(x.double(), (c, 1, k, k), g.double(), s, p, 1, c)
    if layout == "channels_last":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    got = fastsr.depthwise_weight_grad(x, g, (k, k), (s, s), (p, p))
    assert got.dtype == torch.int64 and got.shape == (c, 1, k, k)
    assert torch.equal(got.double(), want)


@needs_lib
def test_depthwise_weight_grad_sums_past_int32_across_images():
    # each image sums in int32 (60*60*2^14 < 2^31), the batch in int64: 40 images reach 2.4e9
    x = torch.full((40, 16, 60, 60), -128, dtype=torch.int8)
    got = fastsr.depthwise_weight_grad(x, x, (1, 1), (1, 1), (0, 0))
    assert got is not None and torch.all(got == 40 * 60 * 60 * 2**14)
    assert int(got[0, 0, 0, 0]) > 2**31


@needs_lib
def test_depthwise_weight_grad_declines_what_it_cannot_take():
    x = torch.zeros((2, 4, 12, 12), dtype=torch.int8)
    g = torch.zeros((2, 4, 4, 4), dtype=torch.int8)
    assert fastsr.depthwise_weight_grad(x, g, (9, 9), (1, 1), (0, 0)) is None  # 81 taps > 49
    assert fastsr.depthwise_weight_grad(x.float(), g, (3, 3), (1, 1), (0, 0)) is None
    assert fastsr.depthwise_weight_grad(x, g[:, :3], (3, 3), (1, 1), (0, 0)) is None  # channels
    big = torch.zeros((1, 1, 400, 400), dtype=torch.int8)  # one image's sum could pass int32
    assert fastsr.depthwise_weight_grad(big, big, (1, 1), (1, 1), (0, 0)) is None
