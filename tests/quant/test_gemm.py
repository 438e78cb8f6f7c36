"""Exact int8 GEMM (ffint8.quant.gemm): every kernel bit-exact against an int64 reference."""

import contextlib
import ctypes
import io
import shutil

import pytest
import torch

from ffint8.quant import gemm
from ffint8.quant.gemm import (
    FLOAT_EXACT_K,
    KERNELS,
    MAX_EXACT_K,
    int8_mm,
    int8_mm_scaled,
    resolve_kernel,
)

ALL_KERNELS = ("int_mm", "vnni", "float-exact", "reference", "auto")
# the C kernel's VNNI rows run only where it was built with AVX-512 VNNI
VNNI = pytest.param("vnni", marks=pytest.mark.skipif(not gemm.vnni_available(),
                                                     reason="no VNNI loop in the C kernel here"))
KERNEL_PARAMS = ("int_mm", VNNI, "float-exact", "reference", "auto")
# K values: tiny, odd, and across the float-exact chunk (FLOAT_EXACT_K terms), including two
# chunks + 1.
KS = (1, 3, 17, 33, 127, FLOAT_EXACT_K, FLOAT_EXACT_K + 1, 2 * FLOAT_EXACT_K + 1)
# torch._int_mm on a CPU without VNNI is a scalar loop: keep M and N small for every kernel.
MNS = ((1, 1), (3, 17), (17, 3), (33, 5))
BIG_MNS = ((127, 33), (64, 65))  # larger outputs, for the fast kernels only


def ref_mm(a, b):
    return a.long() @ b.long()


def rand_i8(shape, gen, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)


# --------------------------------------------------------------------------------------------
# constants


def test_constants_are_the_exactness_limits():
    # (-128) * (-128) is the largest |product| of two int8 values, -128 included.
    p = 128 * 128
    assert MAX_EXACT_K * p <= 2**31 - 1 < (MAX_EXACT_K + 1) * p
    assert MAX_EXACT_K == 131_071
    assert FLOAT_EXACT_K * p <= 2**24 < (FLOAT_EXACT_K + 1) * p
    assert FLOAT_EXACT_K == 1_024
    assert set(KERNELS) == set(ALL_KERNELS)


# --------------------------------------------------------------------------------------------
# bit-exactness on random operands


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("mn", MNS)
def test_int8_mm_random_bit_exact(kernel, k, mn):
    m, n = mn
    gen = torch.Generator().manual_seed(1000 * k + 10 * m + n)
    a, b = rand_i8((m, k), gen), rand_i8((k, n), gen)
    out = int8_mm(a, b, kernel)
    assert out.dtype == torch.int32
    assert out.shape == (m, n)
    assert torch.equal(out.long(), ref_mm(a, b))


@pytest.mark.parametrize("kernel", (VNNI, "float-exact", "reference", "auto"))
@pytest.mark.parametrize("k", (1, 33, FLOAT_EXACT_K + 1, 2 * FLOAT_EXACT_K + 1))
@pytest.mark.parametrize("mn", BIG_MNS)
def test_int8_mm_random_bit_exact_larger_outputs(kernel, k, mn):
    m, n = mn
    gen = torch.Generator().manual_seed(7 * k + m)
    a, b = rand_i8((m, k), gen), rand_i8((k, n), gen)
    assert torch.equal(int8_mm(a, b, kernel).long(), ref_mm(a, b))


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_int8_mm_non_contiguous_operands(kernel):
    gen = torch.Generator().manual_seed(3)
    k = FLOAT_EXACT_K + 1  # past one float-exact chunk
    a = rand_i8((k, 9), gen).t()  # (9, k), transposed view
    b = rand_i8((5, 2 * k), gen)[:, ::2].t()  # (k, 5), strided view
    assert not a.is_contiguous() and not b.is_contiguous()
    assert torch.equal(int8_mm(a, b, kernel).long(), ref_mm(a, b))


def _odd_stride(t: torch.Tensor) -> torch.Tensor:
    """t's values in column-major strides, as transposing a fresh tensor gives: for a (1, n) or
    (n, 1) matrix such a view still passes is_contiguous() (a size-1 dim's stride is free)."""
    out = torch.empty_strided(t.shape, (1, t.shape[0]), dtype=t.dtype)
    return out.copy_(t)


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
@pytest.mark.parametrize("mkn,which", [((24, 1, 2), "b"), ((1, 5, 3), "a"), ((1, 1, 7), "ab"),
                                      ((4, 6, 1), "b"), ((1, 17, 1), "ab")])
def test_int8_mm_size_one_dims_with_transposed_strides(kernel, mkn, which):
    # an im2col conv with one input channel per group multiplies (M, 1) by (1, Og) views like
    # these; torch._int_mm (2.13, CPU) summed them wrongly before int8_mm copied them
    m, k, n = mkn
    gen = torch.Generator().manual_seed(7)
    a, b = rand_i8((m, k), gen), rand_i8((k, n), gen)
    a2 = _odd_stride(a) if "a" in which and 1 in a.shape else a
    b2 = _odd_stride(b) if "b" in which and 1 in b.shape else b
    assert (a2.stride(), b2.stride()) != (a.stride(), b.stride())
    assert torch.equal(int8_mm(a2, b2, kernel).long(), ref_mm(a, b))


# --------------------------------------------------------------------------------------------
# extreme values: every product is +-127^2 (the largest the quantiser produces) or (-128)^2
# (the largest any int8 operands give), the largest partial sums possible


def _extreme_operands(pattern, m, k, n, gen):
    if pattern == "all+127":
        return torch.full((m, k), 127, dtype=torch.int8), torch.full((k, n), 127, dtype=torch.int8)
    if pattern == "all-127":
        return torch.full((m, k), -127, dtype=torch.int8), torch.full((k, n), -127, dtype=torch.int8)
    if pattern == "+127@-127":
        return torch.full((m, k), 127, dtype=torch.int8), torch.full((k, n), -127, dtype=torch.int8)
    if pattern == "all-128":
        return torch.full((m, k), -128, dtype=torch.int8), torch.full((k, n), -128, dtype=torch.int8)
    # random signs of magnitude 127
    sa = torch.randint(0, 2, (m, k), generator=gen) * 2 - 1
    sb = torch.randint(0, 2, (k, n), generator=gen) * 2 - 1
    return (sa * 127).to(torch.int8), (sb * 127).to(torch.int8)


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
@pytest.mark.parametrize(
    "k", (1, FLOAT_EXACT_K, FLOAT_EXACT_K + 1, 2 * FLOAT_EXACT_K + 1, 3 * FLOAT_EXACT_K + 17)
)
@pytest.mark.parametrize("pattern", ("all+127", "all-127", "+127@-127", "all-128", "random-sign"))
def test_int8_mm_extreme_values(kernel, k, pattern):
    m, n = 3, 5
    gen = torch.Generator().manual_seed(k)
    a, b = _extreme_operands(pattern, m, k, n, gen)
    out = int8_mm(a, b, kernel)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), ref_mm(a, b))
    if pattern in ("all+127", "all-127"):
        # independent of any matmul: every entry is k * 127^2 (for k > 2^24 // 127^2, i.e. from
        # 2 * FLOAT_EXACT_K + 1 on here, above 2^24 and for odd k not representable in float32,
        # so an unchunked float GEMM would be caught here)
        assert bool((out.long() == k * 127 * 127).all())
    elif pattern == "+127@-127":
        assert bool((out.long() == -k * 127 * 127).all())
    elif pattern == "all-128":
        assert bool((out.long() == k * 128 * 128).all())


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_int8_mm_at_max_exact_k_stays_int32(kernel):
    k = MAX_EXACT_K
    a = torch.full((1, k), 127, dtype=torch.int8)
    b = torch.full((k, 2), 127, dtype=torch.int8)
    out = int8_mm(a, b, kernel)
    assert out.dtype == torch.int32
    assert bool((out.long() == k * 127 * 127).all())  # 2,114,044,159 <= 2^31 - 1


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_int8_mm_past_max_exact_k_is_int64(kernel):
    k = MAX_EXACT_K + 1
    a = torch.full((1, k), -128, dtype=torch.int8)
    b = torch.full((k, 1), -128, dtype=torch.int8)
    out = int8_mm(a, b, kernel)
    assert out.dtype == torch.int64
    assert out.item() == k * 128 * 128 > 2**31 - 1  # 2^31: one past int32


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_int8_mm_long_reduction_all_127_does_not_overflow(kernel):
    k = 140_000
    a = torch.full((2, k), 127, dtype=torch.int8)
    b = torch.full((k, 2), 127, dtype=torch.int8)
    out = int8_mm(a, b, kernel)
    assert out.dtype == torch.int64
    assert out.shape == (2, 2)
    expected = k * 127 * 127  # 2,258,060,000: would overflow int32
    assert expected > 2**31 - 1
    assert out.tolist() == [[expected, expected], [expected, expected]]


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_int8_mm_long_reduction_random_bit_exact(kernel):
    k = 2 * MAX_EXACT_K + 5  # three int32 chunks, the last one short
    gen = torch.Generator().manual_seed(11)
    a, b = rand_i8((2, k), gen), rand_i8((k, 3), gen)
    out = int8_mm(a, b, kernel)
    assert out.dtype == torch.int64
    assert torch.equal(out, ref_mm(a, b))


# -128 is a valid int8 that the quantiser never produces, but int8_mm accepts it. Its square
# (16,384) is the largest |product|, which both the float-exact chunk and MAX_EXACT_K are sized for.
@pytest.mark.parametrize("k", (FLOAT_EXACT_K, FLOAT_EXACT_K + 1, 2 * FLOAT_EXACT_K + 1))
def test_int8_mm_float_exact_with_minus_128_is_exact(k):
    # (k - 1) * 128^2 + 1: below 2^24 at k = FLOAT_EXACT_K (one exact float32 GEMM), 2^24 + 1 at
    # FLOAT_EXACT_K + 1 (odd, above 2^24: not representable in float32, so only chunking is exact)
    a = torch.full((1, k), -128, dtype=torch.int8)
    a[0, -1] = 1
    b = a.t().contiguous()
    out = int8_mm(a, b, "float-exact")
    assert out.dtype == torch.int32
    assert out.item() == (k - 1) * 128 * 128 + 1


@pytest.mark.parametrize("kernel", ("float-exact", "reference", "int_mm"))
def test_int8_mm_minus_128_at_max_exact_k_is_exact(kernel):
    a = torch.full((1, MAX_EXACT_K), -128, dtype=torch.int8)
    b = a.t().contiguous()
    out = int8_mm(a, b, kernel)
    assert out.dtype == torch.int32
    assert out.item() == MAX_EXACT_K * 128 * 128  # 2,147,467,264 <= 2^31 - 1


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "a_dtype,b_dtype",
    [
        (torch.float32, torch.int8),
        (torch.int8, torch.float32),
        (torch.uint8, torch.int8),
        (torch.int8, torch.int32),
        (torch.int16, torch.int16),
    ],
)
def test_int8_mm_rejects_non_int8(a_dtype, b_dtype):
    a = torch.ones(2, 3, dtype=a_dtype)
    b = torch.ones(3, 4, dtype=b_dtype)
    with pytest.raises(TypeError):
        int8_mm(a, b)


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((2, 3), (4, 5)), ((2, 3), (2, 3)), ((3,), (3, 2)), ((2, 3), (3,)), ((1, 2, 3), (3, 4))],
)
def test_int8_mm_rejects_mismatched_shapes(a_shape, b_shape):
    a = torch.ones(a_shape, dtype=torch.int8)
    b = torch.ones(b_shape, dtype=torch.int8)
    with pytest.raises(ValueError):
        int8_mm(a, b)


@pytest.mark.parametrize("kernel", ("fp16", "", "INT_MM", "float_exact"))
def test_unknown_kernel_rejected(kernel):
    a = torch.ones(2, 3, dtype=torch.int8)
    b = torch.ones(3, 4, dtype=torch.int8)
    with pytest.raises(ValueError):
        int8_mm(a, b, kernel)
    with pytest.raises(ValueError):
        resolve_kernel(kernel)
    with pytest.raises(ValueError):
        int8_mm_scaled(a, torch.tensor(1.0), b, torch.tensor(1.0), kernel)


# --------------------------------------------------------------------------------------------
# int8_mm_scaled


def _scales(kind, m, n, gen):
    def pos(shape):
        return (torch.rand(shape, generator=gen) * 0.1 + 1e-3).float()

    if kind == "tensor":
        return pos(()), pos(())
    if kind == "row-col":
        return pos((m, 1)), pos((1, n))
    if kind == "row-tensor":
        return pos((m, 1)), pos(())
    return pos(()), pos((1, n))  # tensor-col


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
@pytest.mark.parametrize("kind", ("tensor", "row-col", "row-tensor", "tensor-col"))
@pytest.mark.parametrize(
    "mkn", ((5, 37, 7), (3, FLOAT_EXACT_K, 2), (17, FLOAT_EXACT_K + 1, 3), (1, 1, 1))
)
def test_int8_mm_scaled_matches_float64(kernel, kind, mkn):
    m, k, n = mkn
    gen = torch.Generator().manual_seed(m * k * n)
    a, b = rand_i8((m, k), gen), rand_i8((k, n), gen)
    sa, sb = _scales(kind, m, n, gen)
    out = int8_mm_scaled(a, sa, b, sb, kernel)
    ref = (a.double() * sa.double()) @ (b.double() * sb.double())
    assert out.dtype == torch.float32
    assert out.shape == (m, n)
    tol = 1e-6 * ref.abs().max().item() + 1e-30
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=tol)


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_int8_mm_scaled_rejects_bad_operands(kernel):
    s = torch.tensor(0.5)
    with pytest.raises(TypeError):
        int8_mm_scaled(torch.ones(2, 3), s, torch.ones(3, 2, dtype=torch.int8), s, kernel)
    with pytest.raises(TypeError):
        int8_mm_scaled(torch.ones(2, 3, dtype=torch.int8), s, torch.ones(3, 2, dtype=torch.int32), s, kernel)
    with pytest.raises(ValueError):
        int8_mm_scaled(torch.ones(2, 3, dtype=torch.int8), s, torch.ones(4, 2, dtype=torch.int8), s, kernel)
    with pytest.raises(ValueError):
        int8_mm_scaled(torch.ones(2, 3, dtype=torch.int8), s, torch.ones(3, dtype=torch.int8), s, kernel)


@pytest.mark.parametrize("kernel", ("float-exact", "reference", "int_mm"))
def test_int8_mm_scaled_rejects_1d_a(kernel):
    s = torch.tensor(0.5)
    with pytest.raises(ValueError):
        int8_mm_scaled(torch.ones(3, dtype=torch.int8), s, torch.ones(3, 2, dtype=torch.int8), s, kernel)


def test_int8_mm_scaled_long_reduction():
    k = MAX_EXACT_K + 1000
    gen = torch.Generator().manual_seed(5)
    a = torch.full((2, k), 127, dtype=torch.int8)
    b = rand_i8((k, 3), gen)
    sa, sb = _scales("row-col", 2, 3, gen)
    out = int8_mm_scaled(a, sa, b, sb, "reference")
    ref = (a.double() * sa.double()) @ (b.double() * sb.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


# --------------------------------------------------------------------------------------------
# kernel choice


@pytest.mark.parametrize("has_dot,expected", [(True, "int_mm"), (False, "float-exact")])
def test_resolve_auto_on_cpu_follows_int8_dot(monkeypatch, has_dot, expected):
    monkeypatch.setattr("ffint8.quant.gemm.cpu_has_int8_dot", lambda: has_dot)
    monkeypatch.setattr("ffint8.quant.gemm.vnni_available", lambda device="cpu": False)
    assert resolve_kernel("auto") == expected
    assert resolve_kernel("auto", "cpu") == expected
    assert resolve_kernel("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("has_dot", (True, False))
def test_resolve_auto_on_cuda_is_int_mm(monkeypatch, has_dot):
    monkeypatch.setattr("ffint8.quant.gemm.cpu_has_int8_dot", lambda: has_dot)
    assert resolve_kernel("auto", "cuda") == "int_mm"
    assert resolve_kernel("auto", torch.device("cuda", 0)) == "int_mm"


@pytest.mark.parametrize("threads,vnni,has_dot,allowed,expected", [
    (1, True, True, True, "vnni"),        # one thread: the C kernel's rows
    (2, True, True, True, "int_mm"),      # more: oneDNN's GEMM, which uses them
    (1, True, True, False, "int_mm"),     # the convolutions' own GEMMs leave vnni out
    (1, True, False, True, "vnni"),
    (2, True, False, True, "float-exact"),
    (1, False, True, True, "int_mm"),     # a build without the VNNI loop
])
def test_resolve_auto_picks_vnni_on_one_thread(monkeypatch, threads, vnni, has_dot, allowed,
                                               expected):
    monkeypatch.setattr("ffint8.quant.gemm.cpu_has_int8_dot", lambda: has_dot)
    monkeypatch.setattr("ffint8.quant.gemm.vnni_available", lambda device="cpu": vnni)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert resolve_kernel("auto", "cpu", vnni=allowed) == expected
    assert resolve_kernel("auto", "cuda", vnni=allowed) == "int_mm"


def test_vnni_by_name_where_it_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr("ffint8.quant.gemm._vnni_built", lambda: False)
    with pytest.raises(ValueError, match="'vnni' runs only on a CPU"):
        resolve_kernel("vnni", "cpu")
    with pytest.raises(ValueError, match="'vnni' runs only on a CPU"):
        int8_mm(torch.zeros(2, 3, dtype=torch.int8), torch.zeros(3, 4, dtype=torch.int8), "vnni")


def test_vnni_is_only_for_cpus():
    with pytest.raises(ValueError, match="'vnni' runs only on a CPU"):
        resolve_kernel("vnni", "cuda")


@pytest.mark.skipif(not gemm.vnni_available(), reason="no VNNI loop in the C kernel here")
@pytest.mark.parametrize("mkn", [(1, 1, 1), (3, 5, 7), (64, 784, 1000), (130, 65, 17),
                                 (65, 1000, 100), (2, 131, 64), (5, 0, 3)])
@pytest.mark.parametrize("layout", ["nt", "nn", "nt-wide-rows", "nn-wide-rows"])
def test_vnni_layouts_bit_exact(mkn, layout):
    # the dense layers' two products: x W^T (nt, b a transposed weight as it lies) and g W (nn),
    # operands also as slices of wider rows, whose row stride is not K: with K = 5 and rows of
    # 8 bytes the stride equals K rounded up to a quad, so the kernel reads the 3 bytes past
    # each row in place, and they must add nothing
    m, k, n = mkn
    gen = torch.Generator().manual_seed(m * 1000 + k + n)
    wide = 3 if "wide" in layout else 0
    a = rand_i8((m, k + wide), gen, -128, 127)[:, :k]
    if layout.startswith("nt"):
        b = rand_i8((n, k + wide), gen, -128, 127)[:, :k].t()
    else:
        b = rand_i8((k, n + wide), gen, -128, 127)[:, :n]
    got = int8_mm(a, b, "vnni")
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got.long(), ref_mm(a, b))


@pytest.mark.skipif(not gemm.vnni_available(), reason="no VNNI loop in the C kernel here")
def test_vnni_scratch_does_not_grow_with_the_rows_of_a_forward():
    # x W^T takes x's rows 64 at a time: an evaluation's thousands of rows need no more scratch
    # (kept between calls) than a training batch's
    from ffint8.quant import fastsr

    lib = fastsr._library()
    assert lib.ffq_int8_mm_scratch(25_000, 784, 1000, 1, 784) == lib.ffq_int8_mm_scratch(
        64, 784, 1000, 1, 784)
    assert lib.ffq_int8_mm_scratch(25_000, 784, 1000, 0, 784) > lib.ffq_int8_mm_scratch(
        64, 784, 1000, 0, 784)  # nn copies nothing of a here (row stride 784) but its corr grows


@pytest.mark.parametrize("kernel", ("int_mm", "float-exact", "reference"))
@pytest.mark.parametrize("device", ("cpu", "cuda"))
def test_resolve_named_kernels_unchanged(monkeypatch, kernel, device):
    for has_dot in (True, False):
        monkeypatch.setattr("ffint8.quant.gemm.cpu_has_int8_dot", lambda h=has_dot: h)
        assert resolve_kernel(kernel, device) == kernel


@pytest.mark.parametrize("has_dot,vnni,expected", [(True, False, "int_mm"),
                                                    (False, False, "float-exact"),
                                                    (True, True, "vnni")])
def test_int8_mm_auto_dispatches_to_resolved_kernel(monkeypatch, has_dot, vnni, expected):
    if vnni and not gemm.vnni_available():
        pytest.skip("no VNNI loop in the C kernel here")
    monkeypatch.setattr("ffint8.quant.gemm.cpu_has_int8_dot", lambda: has_dot)
    monkeypatch.setattr("ffint8.quant.gemm.vnni_available", lambda device="cpu": vnni)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    calls = []
    for name, impl in list(gemm._IMPL.items()):
        def spy(a, b, _name=name, _impl=impl):
            calls.append(_name)
            return _impl(a, b)

        monkeypatch.setitem(gemm._IMPL, name, spy)
    gen = torch.Generator().manual_seed(0)
    a, b = rand_i8((3, 5), gen), rand_i8((5, 2), gen)
    assert torch.equal(int8_mm(a, b).long(), ref_mm(a, b))
    assert calls == [expected]


@contextlib.contextmanager
def _fake_file(text):
    yield io.StringIO(text)


@pytest.mark.parametrize(
    "cpuinfo,expected",
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx_vnni\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_int8 amx_tile\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm\n", False),
        ("", False),
    ],
)
def test_cpu_has_int8_dot_parses_cpuinfo(monkeypatch, cpuinfo, expected):
    monkeypatch.setattr(gemm, "open", lambda *a, **k: _fake_file(cpuinfo), raising=False)
    assert gemm.cpu_has_int8_dot.__wrapped__() is expected


def test_cpu_has_int8_dot_without_cpuinfo(monkeypatch):
    def no_file(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(gemm, "open", no_file, raising=False)
    assert gemm.cpu_has_int8_dot.__wrapped__() is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mkn", ((1, 3, 5), (17, 8, 8), (33, FLOAT_EXACT_K + 1, 7)))
def test_int8_mm_cuda_padding_exact(mkn):
    m, k, n = mkn
    gen = torch.Generator().manual_seed(k)
    a, b = rand_i8((m, k), gen), rand_i8((k, n), gen)
    out = int8_mm(a.cuda(), b.cuda(), "auto")
    assert out.shape == (m, n)
    assert torch.equal(out.cpu().long(), ref_mm(a, b))


@pytest.mark.parametrize("kernel", ["int_mm", VNNI, "float-exact", "reference", "auto"])
def test_out_holds_the_product(kernel):
    gen = torch.Generator().manual_seed(11)
    a = torch.randint(-128, 128, (40, 64), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (64, 24), dtype=torch.int8, generator=gen)
    buf = torch.full((2000,), 7, dtype=torch.int32)
    out = buf[: 40 * 24].view(40, 24)
    got = int8_mm(a.t().contiguous().t(), b, kernel, out=out)  # a transposed view, as g^T is
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(out, a.long().mm(b.long()).int())
    assert torch.equal(buf[40 * 24:], torch.full((2000 - 960,), 7, dtype=torch.int32))


@pytest.mark.parametrize("bad", [torch.empty(40, 24, dtype=torch.int64),
                                 torch.empty(24, 40, dtype=torch.int32),
                                 torch.empty(24, 40, dtype=torch.int32).t()])
def test_out_of_the_wrong_kind_is_refused(bad):
    a = torch.zeros(40, 8, dtype=torch.int8)
    b = torch.zeros(8, 24, dtype=torch.int8)
    with pytest.raises(ValueError, match="out must be a contiguous int32 40 x 24"):
        int8_mm(a, b, out=bad)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler here")
def test_a_build_without_the_vnni_loop_has_no_vnni_kernel(tmp_path, monkeypatch):
    # -DFFQ_PORTABLE builds the C kernel as on a Jetson or an AVX2 laptop: no VNNI loop, so
    # fastsr.int8_mm does nothing, "vnni" is refused by name and auto does not pick it
    from ffint8.quant import fastsr

    assert fastsr._compile(tmp_path / "portable.so", ("-DFFQ_PORTABLE",))
    lib = fastsr.declare(ctypes.CDLL(str(tmp_path / "portable.so")))
    assert lib.ffq_int8_mm_scratch(64, 784, 1000, 1, 784) == 0
    monkeypatch.setattr(fastsr, "_library", lambda: lib)
    gemm._vnni_built.cache_clear()
    try:
        a, b = torch.ones(2, 3, dtype=torch.int8), torch.ones(3, 4, dtype=torch.int8)
        assert fastsr.int8_mm(a, b) is None
        assert not gemm.vnni_available()
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        assert resolve_kernel("auto", "cpu") in ("int_mm", "float-exact")
        with pytest.raises(ValueError, match="'vnni' runs only on a CPU"):
            resolve_kernel("vnni")
    finally:
        monkeypatch.undo()
        gemm._vnni_built.cache_clear()
