"""Adam8: Adam's update with 8-bit moments: close to torch.optim.Adam step by step, a quarter of
its state, converges like it, exact resume through state_dict, usable from the CLI config."""

import ctypes
import math
import shutil

import pytest
import torch

from ffint8.quant import fastsr
from ffint8.quant.blockwise import quantize_blocks
from ffint8.train.adam8 import Adam8


def problem(seed=0, n=700):
    """A least-squares fit: parameters (n,) and a loss whose gradient is A^T (A p - b)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(64, n, generator=g) / n**0.5
    b = torch.randn(64, generator=g)
    return a, b


def run(opt_cls, steps, seed=0, **kw):
    a, b = problem(seed)
    p = torch.nn.Parameter(torch.zeros(a.shape[1]))
    opt = opt_cls([p], lr=0.01, **kw)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((a @ p - b) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return p.detach(), losses, opt


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_first_steps_match_adam(wd, fused):
    p8, _, _ = run(Adam8, 1, weight_decay=wd, chunk=256, fused=fused)
    p, _, _ = run(torch.optim.Adam, 1, weight_decay=wd)
    # Adam's first step is lr * sign(g); m and r are stored to 3 mantissa bits
    assert torch.allclose(p8, p, rtol=0.15, atol=1e-6)
    p8, _, _ = run(Adam8, 5, weight_decay=wd, chunk=256, fused=fused)
    p, _, _ = run(torch.optim.Adam, 5, weight_decay=wd)
    assert (p8 - p).norm() <= 0.1 * p.norm()


@pytest.mark.parametrize("fused", [True, False])
def test_converges_like_adam(fused):
    _, l8, _ = run(Adam8, 300, fused=fused)
    _, l32, _ = run(torch.optim.Adam, 300)
    assert l8[-1] < 0.05 * l8[0]
    assert l8[-1] <= 1.5 * l32[-1] + 1e-4


def test_state_is_a_quarter_of_adams():
    p = torch.nn.Parameter(torch.randn(1000, 300))
    p.grad = torch.randn_like(p)
    opt = Adam8([p])
    opt.step()
    state = opt.state[p]
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    assert state["m"].dtype == torch.uint8 and state["r"].dtype == torch.uint8
    assert nbytes <= 2.04 * p.numel() + 8  # vs 8 bytes per parameter for Adam
    assert nbytes >= 2 * p.numel()


def test_chunks_do_not_change_the_update_much():
    # the chunks draw their rounding noise in other pieces, so the paths differ by noise only:
    # measured 5% after 20 steps, about what either differs from float32 Adam
    small, _, _ = run(Adam8, 20, chunk=256)
    big, _, _ = run(Adam8, 20, chunk=1 << 18)
    assert (small - big).norm() <= 0.15 * big.norm()


def test_resume_through_state_dict_is_exact():
    a, b = problem()

    def make():
        p = torch.nn.Parameter(torch.zeros(a.shape[1]))
        return p, Adam8([p], lr=0.01, seed=3)

    def steps(p, opt, k):
        for _ in range(k):
            opt.zero_grad()
            ((a @ p - b) ** 2).mean().backward()
            opt.step()

    p1, o1 = make()
    steps(p1, o1, 6)
    p2, o2 = make()
    steps(p2, o2, 3)
    saved = {"p": p2.detach().clone(), "opt": o2.state_dict()}
    torch.save(saved, buf := __import__("io").BytesIO())
    buf.seek(0)
    loaded = torch.load(buf)
    p3, o3 = make()
    with torch.no_grad():
        p3.copy_(loaded["p"])
    o3.load_state_dict(loaded["opt"])
    assert o3.state[p3]["m"].dtype == torch.uint8  # not cast to float32 by load_state_dict
    steps(p3, o3, 3)
    assert torch.equal(p3, p1)


@pytest.mark.parametrize("fused", [True, False])
def test_no_step_where_the_second_moment_underflows(fused):
    p = torch.nn.Parameter(torch.zeros(256))
    opt = Adam8([p], lr=0.1, fused=fused)
    p.grad = torch.zeros(256)
    p.grad[0], p.grad[1] = 1.0, 1e-7  # g[1]^2 far below 2^-9 of the block's largest, squared
    opt.step()
    p.grad = torch.zeros(256)  # a step with no gradient: m[1] may survive while r[1] is 0
    opt.step()
    assert torch.isfinite(p).all() and p.abs().max() <= 0.2 + 1e-6


def test_bad_arguments():
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="lr"):
        Adam8(p, lr=0)
    with pytest.raises(ValueError, match="multiple of block"):
        Adam8(p, chunk=300)


@pytest.mark.parametrize("fused", [True, False])
def test_second_moment_decays_under_stochastic_rounding(fused):
    # Without stochastic rounding v <- 0.999 v moves less than e4m3's spacing and stays put.
    from ffint8.quant.blockwise import FP8, dequantize_blocks

    p = torch.nn.Parameter(torch.zeros(256))
    opt = Adam8([p], lr=1e-4, fused=fused)

    def r():
        s = opt.state[p]
        return dequantize_blocks(s["r"].view(FP8), s["r_scale"], 256)

    for _ in range(3000):  # every element sees gradient 1: v near its steady state
        p.grad = torch.ones(256)
        opt.step()
    before = r()[1:].mean()
    for _ in range(700):  # element 0 keeps the block's scale; the others get no gradient
        p.grad = torch.zeros(256)
        p.grad[0] = 1.0
        opt.step()
    ratio = float(r()[1:].mean() / before)
    assert abs(ratio - 0.999 ** (700 / 2)) < 0.03  # sqrt(v) decays by sqrt(0.999) per step


@pytest.mark.parametrize("algo", ["ff-int8", "bp-fp32"])
def test_training_run_with_adam8_resumes_exactly(tmp_path, algo):
    from ffint8.train.config import FFConfig, TrainConfig
    from ffint8.train.run import load_checkpoint, run_training

    def cfg(epochs):
        return TrainConfig(dataset="synthetic", hidden=(32, 32), epochs=epochs, limit_train=300,
                           limit_test=100, optimizer="adam8", lr_schedule="constant",
                           ff=FFConfig(algo=algo, look_ahead="none" if algo[:2] == "bp" else "chain"))

    quiet = lambda *_: None  # noqa: E731
    whole = run_training(cfg(3), tmp_path / "a", progress=False, log=quiet)
    run_training(cfg(1), tmp_path / "b", progress=False, log=quiet)
    run_training(cfg(3), tmp_path / "b", progress=False, log=quiet, resume=True)
    wa, _, _ = load_checkpoint(tmp_path / "a" / "model.pt")
    wb, _, _ = load_checkpoint(tmp_path / "b" / "model.pt")
    for pa, pb in zip(wa.parameters(), wb.parameters()):
        assert torch.equal(pa, pb)
    assert whole["test_accuracy"] > 0.3  # synthetic data, 10 classes: it learns


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
@pytest.mark.parametrize("n,wd,alternate", [(5000, 0.0, False), (700, 0.01, False),
                                            (256, 0.0, False), (700, 0.0, True)])
def test_c_kernel_agrees_with_the_pytorch_path(n, wd, alternate):
    # Rounding to nearest, the two paths store the same codes and scales (both multiply by
    # 1 / scale) and the same weights to float32's rounding (the kernel multiplies by
    # 1 / root_c2 where PyTorch divides; a last-bit difference can move a later code).
    # Stochastic rounding draws other noise in each, so it is checked by the statistical tests.
    # alternate: one gradient with its sign flipped every step, so that |m| stays below r (with
    # random gradients it is above): each block's two scales are each its own moment's.
    torch.manual_seed(0)
    fixed = torch.randn(n)
    a = torch.nn.Parameter(torch.randn(n))
    b = torch.nn.Parameter(a.detach().clone())
    oa = Adam8([a], stochastic=False, weight_decay=wd)
    ob = Adam8([b], stochastic=False, weight_decay=wd, fused=False)
    for i in range(10):
        g = fixed * (-1) ** i if alternate else torch.randn(n) * 10.0 ** (i % 3 - 1)
        g[: n // 10] *= 1e-4  # small values in a block of large ones: the subnormal codes
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
    for key in ("m", "r"):
        same = (oa.state[a][key] == ob.state[b][key]).float().mean()
        assert same > 0.9999, key
        assert torch.allclose(oa.state[a][f"{key}_scale"], ob.state[b][f"{key}_scale"], rtol=1e-6)


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
def test_c_kernel_decodes_and_encodes_every_code_as_pytorch_does():
    # The kernel computes e4m3 values instead of looking them up (and encodes with integer
    # operations): from a state holding every finite code, one step with a zero gradient
    # (m <- b1 m, r <- sqrt(b2) r, an update of m / r) must come out as PyTorch's does.
    finite = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)
    n = len(finite)  # 254: the last block is padded
    params, opts = [], []
    for fused in (True, False):
        p = torch.nn.Parameter(torch.zeros(n))
        opt = Adam8([p], stochastic=False, fused=fused, block=128, chunk=256)
        p.grad = torch.zeros(n)
        opt.step()  # makes the state
        st = opt.state[p]
        st["m"][:n] = finite
        st["r"][:n] = finite & 0x7F  # r = sqrt(v) >= 0
        st["m_scale"].fill_(3e-3)
        st["r_scale"].fill_(2e-4)
        opt.step()
        params.append(p.detach())
        opts.append((opt, p))
    assert torch.isfinite(params[0]).all() and (params[0] != 0).any()
    # the weights to float32's rounding: the kernel multiplies by 1 / root_c2, PyTorch divides
    assert torch.allclose(params[0], params[1], rtol=1e-6, atol=0)
    (oa, pa), (ob, pb) = opts
    for key in ("m", "r", "m_scale", "r_scale"):
        assert torch.equal(oa.state[pa][key], ob.state[pb][key]), key


@pytest.mark.parametrize("fused", [True, False])
def test_tiny_gradients_store_no_nan(fused):
    # m = 0.1 g is subnormal and its block's absmax / 448 too: 1 / scale would be Inf, and the
    # block's zeros (the padding past 300) NaN. Both paths diverged so within 700 steps of FF.
    p = torch.nn.Parameter(torch.zeros(300))
    opt = Adam8([p], fused=fused)
    for _ in range(3):
        p.grad = torch.full((300,), 1e-40)
        opt.step()
    state = opt.state[p]
    for key in ("m", "r"):
        codes = state[key]
        assert not ((codes == 0x7F) | (codes == 0xFF)).any(), key  # e4m3's NaN patterns
    assert torch.isfinite(p).all()


def test_c_kernel_runs_when_built():
    p = torch.nn.Parameter(torch.zeros(300))
    p.grad = torch.ones(300)
    called = []
    real = fastsr.adam8_step
    try:
        fastsr.adam8_step = lambda *a, **k: called.append(1) or real(*a, **k)
        Adam8([p]).step()
        Adam8([p], fused=False).step()
    finally:
        fastsr.adam8_step = real
    assert called == [1]


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
def test_bound_kernel_over_slices_equals_one_call():
    # step_factored updates a weight a row block at a time through adam8_bind; with stochastic
    # rounding keyed by each value's index, slices must give what one call over all gives
    n, block = 1000, 128  # the last block is partial
    g = torch.randint(-5000, 5000, (n,), dtype=torch.int32)
    results = []
    for cuts in ([0, n], [0, 256, 640, n]):
        p = torch.nn.Parameter(torch.linspace(-1, 1, n))
        opt = Adam8([p], block=block, chunk=1024)
        state = opt._init_state(p)
        step = fastsr.adam8_bind(p.data, state, block, 0.9, 0.999, 1e-3, 0.03, 1e-8, 0.0,
                                 (11, 22, 33, 44))
        for a, b in zip(cuts, cuts[1:]):
            step(a, g[a:b], 1e-4)
        results.append((p.detach().clone(), state))
    (pa, sa), (pb, sb) = results
    assert not torch.equal(pa, torch.linspace(-1, 1, n))  # it stepped
    assert torch.equal(pa, pb)
    for key in ("m", "m_scale", "r", "r_scale"):
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
def test_bound_kernel_refuses_slices_that_do_not_fit():
    p = torch.zeros(300)
    state = Adam8([torch.nn.Parameter(p)], block=128)._init_state(p)
    step = fastsr.adam8_bind(p, state, 128, 0.9, 0.999, 1e-3, 1.0, 1e-8, 0.0, None)
    acc = torch.zeros(300, dtype=torch.int32)
    with pytest.raises(ValueError, match="values 64:192 of a 300-value parameter"):
        step(64, acc[64:192], 1.0)  # starts inside a block
    with pytest.raises(ValueError, match="values 0:200"):
        step(0, acc[:200], 1.0)  # ends inside a block that is not the last
    with pytest.raises(ValueError, match="torch.int64"):
        step(0, acc.long(), 1.0)  # an accumulator must be int32
    with pytest.raises(ValueError, match="values 256:556"):
        step(256, acc, 1.0)  # past the end
    step(256, acc[256:], 1.0)  # the partial last block is fine
    for key, bad in (("m", state["m"][:256]), ("r_scale", state["r_scale"][:2]),
                     ("r", state["r"].float())):  # too short for the parameter, or not codes
        broken = dict(state, **{key: bad})
        assert fastsr.adam8_bind(p, broken, 128, 0.9, 0.999, 1e-3, 1.0, 1e-8, 0.0, None) is None


MASK32 = 0xFFFF_FFFF


def hashed_noise(n: int, k1: int, k2: int) -> torch.Tensor:
    """The C kernel's rounding noise for values 0..n-1 (csrc/fastquant.c, sr_noise16), computed
    in int64 with every product cut to 32 bits, shifted into [0, 2^20) as the kernel adds it."""
    e = torch.arange(n, dtype=torch.int64)

    def mul(x, c):
        return (x * c) & MASK32  # wraps past 2^63 too: the low 32 bits stay right

    x = (mul((e >> 1) ^ k1, 0x9E3779B9) + k2) & MASK32
    x ^= x >> 16
    x = mul(x, 0x7FEB352D)
    x ^= x >> 15
    x = mul(x, 0x846CA68B)
    x ^= x >> 16
    return (((x >> (16 * (e & 1))) & 0xFFFF) << 4).int()


def first_step_state(n, block, keys, steps=1):
    """The C kernel's state after `steps` steps from zero moments with one gradient g (after
    the first: m = (1 - b1) g, r = |g| sqrt(1 - b2)), stored with stochastic rounding."""
    g = torch.randn(n, generator=torch.Generator().manual_seed(3)) * 1e-3
    g[: n // 7] *= 1e-3  # small values in blocks of large ones: the subnormal codes
    p = torch.zeros(n)
    state = Adam8([torch.nn.Parameter(p)], block=block, chunk=64 * block)._init_state(p)
    step = fastsr.adam8_bind(p, state, block, 0.9, 0.999, 1e-3, 0.03, 1e-8, 0.0, keys)
    for _ in range(steps):
        step(0, g)
    return g, p, state


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
@pytest.mark.parametrize("n,block", [(5000, 256), (700, 128), (1000, 96), (340, 33)])
def test_c_kernel_rounds_stochastically_as_the_reference_does_with_its_noise(n, block):
    # Given the kernel's hashed noise, blockwise.quantize_blocks (the PyTorch reference) must
    # store the very same codes: the vector loops, their noise layout and the encoder at once.
    keys = (0x1234567, 0x89ABCDE, 0xDEADBEEF, 0x600DF00D)
    g, _, state = first_step_state(n, block, keys)
    padded = state["m"].numel()
    g = torch.nn.functional.pad(g, (0, padded - n))
    w1, w2 = torch.tensor(1 - 0.9), torch.tensor(1 - 0.999)  # as float32, as ctypes passes them
    m = w1 * g  # m + w1 (g - m) from m = 0, in the kernel's float32 operations
    # the kernel's sqrtf is IEEE's, correctly rounded; torch.sqrt need not be (on an AMD EPYC,
    # session 19, it was one ulp off for a fifth of float32 values), so the reference rounds
    # the float64 root of the float32 value, which is the correctly rounded float32 root
    r = ((w2 * g) * g).double().sqrt().float()
    for key, x, (k1, k2) in (("m", m, keys[:2]), ("r", r, keys[2:])):
        codes, scale = quantize_blocks(x, block, hashed_noise(padded, k1, k2))
        assert torch.equal(state[f"{key}_scale"], scale), key
        assert torch.equal(state[key], codes.view(torch.uint8)), key
    assert (state["m"] & 0x7F > 0).float().mean() > 0.9  # it stored values, not zeros


@pytest.mark.skipif(not fastsr.available() or shutil.which("cc") is None,
                    reason="the C kernel is not built here")
def test_portable_build_steps_as_the_vector_build(tmp_path, monkeypatch):
    # -DFFQ_PORTABLE builds the kernel without its AVX-512 loops, as on a Jetson or an AVX2
    # laptop: the same weights, codes and scales, bit for bit (where this CPU has no AVX-512
    # both builds are portable and the test still runs).
    keys = (11, 22, 33, 44)
    native = first_step_state(1000, 256, keys, steps=3)  # the later steps decode codes
    assert fastsr._compile(tmp_path / "portable.so", ("-DFFQ_PORTABLE",))
    portable_lib = fastsr.declare(ctypes.CDLL(str(tmp_path / "portable.so")))
    monkeypatch.setattr(fastsr, "_library", lambda: portable_lib)
    portable = first_step_state(1000, 256, keys, steps=3)
    assert not torch.equal(native[1], torch.zeros(1000))  # it stepped
    assert torch.equal(native[1], portable[1])
    for key in ("m", "m_scale", "r", "r_scale"):
        assert torch.equal(native[2][key], portable[2][key]), key


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
def test_bound_kernel_returns_the_weights_new_absmax():
    p = torch.linspace(-1, 1, 1000)
    state = Adam8([torch.nn.Parameter(p)], block=128)._init_state(p)
    step = fastsr.adam8_bind(p, state, 128, 0.9, 0.999, 0.1, 0.03, 1e-8, 0.0, None)
    g = torch.ones(1000)
    amax = step(0, g[:512])
    assert amax == float(p[:512].abs().max())
    assert step(512, g[512:], amax=amax) == float(p.abs().max())
    p[3] = float("nan")
    assert math.isnan(step(0, g))


def factored_steps(n: int, d: int, k: int, steps: int, paths: dict) -> list:
    """Adam8.step_factored of an (n, d) weight from k random factor rows, once per path (setup
    functions of the fresh optimiser): each path's (weight, state, max|W| per step)."""
    from ffint8.quant import QTensor

    gen = torch.Generator().manual_seed(n + k)
    g_q = QTensor(torch.randint(-127, 128, (k, n), generator=gen, dtype=torch.int8),
                  torch.tensor(3e-4))
    a_q = QTensor(torch.randint(-127, 128, (k, d), generator=gen, dtype=torch.int8),
                  torch.tensor(2e-3))
    out = []
    for setup in paths.values():
        p = torch.nn.Parameter(torch.randn(n, d, generator=torch.Generator().manual_seed(1)))
        opt = Adam8([p], block=128, chunk=1024)
        setup(opt)
        amaxes = [opt.step_factored(p, g_q, a_q) for _ in range(steps)]
        out.append((p.detach().clone(), opt.state[p], amaxes, opt))
    return out


def assert_same_steps(a, b) -> None:
    (pa, sa, aa, _), (pb, sb, ab, _) = a, b
    assert not torch.equal(pa, torch.randn(pa.shape, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(pa, pb)
    assert aa == ab and aa[-1] == float(pa.abs().max())
    for key in ("m", "m_scale", "r", "r_scale"):
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
@pytest.mark.parametrize("n,d,k", [(100, 784, 64), (70, 1000, 62), (33, 40, 5)])
def test_step_factored_forms_rows_in_the_kernel_as_int8_mm_does(n, d, k):
    # adam8_factored (the gradient's rows by VNNI dot products or AMX tiles, in the kernel)
    # against the row blocks from int8_mm: integer sums, the same noise by index, so bit-equal
    # weights and state. On a CPU without VNNI both take the second path and the test still runs.
    def rows_from(vnni):
        return lambda opt: setattr(opt, "vnni", vnni)

    assert_same_steps(*factored_steps(n, d, k, 3, {"own": rows_from(True),
                                                   "int8_mm": rows_from(False)}))


@pytest.mark.skipif(not fastsr.amx_rows(), reason="no AMX tiles here (CPU, build or kernel)")
@pytest.mark.parametrize("n,d,k", [(100, 784, 64), (70, 1000, 62), (33, 40, 5), (48, 24, 130)])
def test_amx_rows_step_as_vnni_rows(n, d, k):
    # The kernel's rows by AMX tiles against its VNNI loop: whole 16-row blocks by the tiles,
    # the last rows (n % 16), the last columns (d % 16) and a depth past one tile (k > 64) too.
    def amx(on):
        def setup(opt):
            assert fastsr.amx_rows(on) == on
        return setup

    try:
        tiles, loop = factored_steps(n, d, k, 2, {"amx": amx(True), "vnni": amx(False)})
    finally:
        fastsr.amx_rows(True)
    assert tiles[3]._scratch is not None and loop[3]._scratch is not None  # the kernel's rows
    assert_same_steps(tiles, loop)


@pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
def test_adam8_factored_refuses_what_does_not_fit():
    p = torch.zeros(32, 40)
    state = Adam8([torch.nn.Parameter(p)], block=128)._init_state(p)
    g, a = torch.zeros(8, 32, dtype=torch.int8), torch.zeros(8, 40, dtype=torch.int8)
    need = fastsr.factored_scratch(p, 8, 16)
    if not need:
        pytest.skip("the kernel has no VNNI loop on this CPU")
    scratch = torch.empty(need, dtype=torch.uint8)
    args = (state, 128, 0.9, 0.999, 1e-3, 1.0, 1e-8, 0.0, None)
    assert fastsr.adam8_factored(p, g, a, 1.0, *args, 16, scratch) == 0.0
    assert fastsr.adam8_factored(p, g, a, 1.0, *args, 16, scratch[:-1]) is None  # too small
    assert fastsr.adam8_factored(p, g, a, 1.0, *args, 3, scratch) is None  # 3 * 40 % 128
    assert fastsr.adam8_factored(p, g.int(), a, 1.0, *args, 16, scratch) is None
    assert fastsr.adam8_factored(p, g[:, :31], a, 1.0, *args, 16, scratch) is None
    # a state that is not this parameter's: codes one block short, scales of another dtype
    short = dict(state, m=state["m"][:-128])
    assert fastsr.adam8_factored(p, g, a, 1.0, short, *args[1:], 16, scratch) is None
    wrong = dict(state, r_scale=state["r_scale"].double())
    assert fastsr.adam8_factored(p, g, a, 1.0, wrong, *args[1:], 16, scratch) is None
    assert fastsr.adam8_factored(p, g, a, 1.0, state, 2048, *args[2:], 16, scratch) is None


@pytest.mark.parametrize("fused", [True, False])
def test_step_direct_is_step(fused):
    # the same update and the same rounding keys as step(), without torch.optim's machinery;
    # where there is no fused kernel it declines and step() runs
    def make():
        ps = [torch.nn.Parameter(torch.linspace(-1, 1, n)) for n in (300, 1000)]
        return ps, Adam8(ps, lr=1e-2, fused=fused)

    (pa, oa), (pb, ob) = make(), make()
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in pa]
        for p, q, g in zip(pa, pb, grads):
            p.grad, q.grad = g.clone(), g.clone()
        oa.step()
        if not ob.step_direct(pb):
            assert not (fused and fastsr.available())
            ob.step()
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
        for key in ("m", "m_scale", "r", "r_scale", "step"):
            assert torch.equal(oa.state[p][key], ob.state[q][key]), key


def test_step_direct_leaves_hooked_steps_to_step():
    p = torch.nn.Parameter(torch.zeros(300))
    opt = Adam8([p])
    p.grad = torch.ones(300)
    handle = opt.register_step_post_hook(lambda *_: None)
    assert opt.step_direct([p]) is False and not opt.state
    handle.remove()
    assert opt.step_direct([p]) is fastsr.available()
    q = torch.nn.Parameter(torch.zeros(300))  # no .grad
    assert Adam8([q]).step_direct([q]) is False
