"""FactoredAdam (ffint8.train.factored) and Adam8.step_factored: an FF-INT8 dense weight stepped
from the int8 factors of its gradient, against forming the gradient and stepping the optimiser."""

import copy
import math
import platform

import pytest
import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.models import create_model
from ffint8.nn.dense import FFDense
from ffint8.quant import QTensor, fastsr, int8_mm_scaled, quantize
from ffint8.train.adam8 import Adam8
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.factored import FactoredAdam, FactoredStep
from ffint8.train.loop import FFTrainer, make_optimizer

needs_lib = pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")
# PyTorch's fused CPU Adam, as built for x86, rounds as ffq_adam_i32 does; elsewhere its
# compiler may fuse other multiply-adds, so only closeness is asserted there
X86 = platform.machine() in ("x86_64", "AMD64")


def factors(k: int, n: int, d: int, gen: torch.Generator) -> tuple[QTensor, QTensor]:
    g = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=gen)
    a = torch.randint(-127, 128, (k, d), dtype=torch.int8, generator=gen)
    return (QTensor(g, torch.tensor(1.3e-4 * (1 + torch.rand((), generator=gen).item()))),
            QTensor(a, torch.tensor(0.011)))


def pair(shape, wd=0.0, decoupled=False, lr=3e-3):
    gen = torch.Generator().manual_seed(sum(shape))
    p0 = torch.randn(shape, generator=gen) * 0.05
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    fa = FactoredAdam([a], lr=lr, weight_decay=wd, decoupled=decoupled)
    ref = torch.optim.Adam([b], lr=lr, weight_decay=wd, fused=True,
                           decoupled_weight_decay=decoupled)
    return a, fa, b, ref, gen


def step_both(a, fa, b, ref, g_q, a_q):
    amax = fa.step_factored(a, g_q, a_q)
    b.grad = int8_mm_scaled(g_q.q.t(), g_q.scale, a_q.q, a_q.scale)
    ref.step()
    ref.zero_grad(set_to_none=True)
    return amax


def assert_same_state(a, fa, b, ref, exact: bool):
    sa, sb = fa.state[a], ref.state[b]
    assert torch.equal(sa["step"], sb["step"])
    for x, y in ((a, b), (sa["exp_avg"], sb["exp_avg"]), (sa["exp_avg_sq"], sb["exp_avg_sq"])):
        if exact:
            assert torch.equal(x, y)
        else:  # one unit in the last place, at most
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-12)


@needs_lib
@pytest.mark.parametrize("shape", [(64, 48), (1000, 784), (40, 16)])
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-3, False), (1e-2, True)])
def test_same_as_fused_adam(shape, wd, decoupled):
    a, fa, b, ref, gen = pair(shape, wd, decoupled)
    for _ in range(6):
        amax = step_both(a, fa, b, ref, *factors(64, shape[0], shape[1], gen))
        assert_same_state(a, fa, b, ref, exact=X86)
        assert amax == a.detach().abs().max().item()
    assert not torch.equal(a, torch.zeros_like(a))


@needs_lib
@pytest.mark.parametrize("shape", [(3, 5), (37, 53)])
def test_odd_sizes_close_to_fused_adam(shape):
    """PyTorch's kernel ends in a scalar loop for the last numel % (vector width) values, which
    rounds the second moment otherwise now and then: those may differ in the last place."""
    a, fa, b, ref, gen = pair(shape, 1e-3)
    for _ in range(6):
        step_both(a, fa, b, ref, *factors(8, shape[0], shape[1], gen))
        assert_same_state(a, fa, b, ref, exact=False)


@needs_lib
def test_blocks_give_the_same_step():
    shape = (50, 32)
    one = pair(shape)
    many = pair(shape)
    one[1].vnni = many[1].vnni = False  # the int8_mm row blocks (the other path: below)
    many[1].block_bytes = 4 * 32 * 7  # 7 rows a block: 8 blocks
    assert many[1].block_rows(32) == 7 and many[1].block_rows(32, multiple=4) == 4
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        f = factors(16, *shape, gen)
        assert one[1].step_factored(one[0], *f) == many[1].step_factored(many[0], *f)
    assert torch.equal(one[0], many[0])
    assert torch.equal(one[1].state[one[0]]["exp_avg_sq"], many[1].state[many[0]]["exp_avg_sq"])


@needs_lib
def test_accumulator_memory_is_reused():
    a, fa, *_ = pair((30, 20))
    fa.vnni = False  # the int8_mm path's accumulator
    gen = torch.Generator().manual_seed(2)
    fa.step_factored(a, *factors(8, 30, 20, gen))
    first = fa._acc
    fa.step_factored(a, *factors(8, 30, 20, gen))
    assert fa._acc is first and first.numel() == 600


@needs_lib
@pytest.mark.parametrize("shape,k", [((50, 32), 16), ((70, 1000), 64), ((33, 40), 7),
                                     ((130, 784), 62)])
def test_kernel_rows_give_the_int8_mm_blocks_step(shape, k):
    # The C kernel's own row loop (AVX-512 VNNI, where the CPU has it) against the int8_mm row
    # blocks: integer sums, so bit-equal weights, moments and max|W|; where the CPU has no
    # VNNI both take the int8_mm path and the test still runs.
    own, blocks = pair(shape), pair(shape)
    blocks[1].vnni = False
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        f = factors(k, *shape, gen)
        assert own[1].step_factored(own[0], *f) == blocks[1].step_factored(blocks[0], *f)
    assert torch.equal(own[0], blocks[0])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(own[1].state[own[0]][key], blocks[1].state[blocks[0]][key]), key
    if fastsr.factored_scratch(own[0], k, 64):  # the kernel's path ran: its scratch is kept
        assert own[1]._scratch is not None and own[1]._acc is None


@needs_lib
def test_a_named_int8_kernel_forms_the_product_itself():
    # --int8-kernel reference (or int_mm, float-exact) runs every int8 GEMM on that kernel, the
    # weight gradient's too: the C kernel's own row loop is for auto only
    a, fa, *_ = pair((30, 20))
    fa.kernel = "reference"
    fa.step_factored(a, *factors(8, 30, 20, torch.Generator().manual_seed(4)))
    assert fa._scratch is None and fa._acc is not None


@needs_lib
def test_the_vnni_kernel_by_name_keeps_the_c_rows():
    # --int8-kernel vnni names the same rows the C kernel forms itself: they still run there
    a, fa, *_ = pair((30, 20))
    fa.kernel = "vnni"
    fa.step_factored(a, *factors(8, 30, 20, torch.Generator().manual_seed(4)))
    if fastsr.vnni_rows():
        assert fa._scratch is not None and fa._acc is None
    else:
        assert fa._scratch is None and fa._acc is not None


@needs_lib
def test_non_finite_weight_gives_nan_absmax():
    a, fa, *_ = pair((16, 16))
    g_q, a_q = factors(8, 16, 16, torch.Generator().manual_seed(3))
    amax = fa.step_factored(a, QTensor(g_q.q, torch.tensor(float("inf"))), a_q)
    assert math.isnan(amax)
    assert not torch.isfinite(a).all()


def test_without_the_c_kernel_the_gradient_goes_to_grad(monkeypatch):
    monkeypatch.setattr(fastsr, "available", lambda: False)
    a, fa, b, ref, gen = pair((24, 16))
    g_q, a_q = factors(8, 24, 16, gen)
    assert fa.step_factored(a, g_q, a_q) is None
    assert not fa.state  # nothing stepped yet
    torch.testing.assert_close(a.grad, int8_mm_scaled(g_q.q.t(), g_q.scale, a_q.q, a_q.scale),
                               rtol=0, atol=0)
    fa.step()
    b.grad = a.grad.clone()
    ref.step()
    assert torch.equal(a, b)


@needs_lib
def test_per_row_scales_are_left_to_the_plain_path():
    a, fa, *_ = pair((12, 16))
    g_q, a_q = factors(8, 12, 16, torch.Generator().manual_seed(4))
    rows = QTensor(a_q.q, torch.full((1, 1), 0.01))  # not 0-d: left to the plain path
    assert fa.step_factored(a, g_q, rows) is None and a.grad is not None


def test_a_parameter_of_another_optimiser_is_refused():
    a, fa, b, *_ = pair((8, 16))
    with pytest.raises(ValueError, match="not in this optimiser"):
        fa.step_factored(b, *factors(4, 8, 16, torch.Generator().manual_seed(5)))


@needs_lib
def test_state_dict_continues_in_plain_adam():
    """The state is Adam's own: a checkpoint of FactoredAdam continues in torch.optim.Adam."""
    a, fa, b, ref, gen = pair((32, 48))
    for _ in range(3):
        step_both(a, fa, b, ref, *factors(16, 32, 48, gen))
    c = torch.nn.Parameter(a.detach().clone())
    plain = torch.optim.Adam([c], lr=3e-3, fused=True)
    plain.load_state_dict(copy.deepcopy(fa.state_dict()))  # as a checkpoint would: not shared
    f = factors(16, 32, 48, gen)
    fa.step_factored(a, *f)
    c.grad = int8_mm_scaled(f[0].q.t(), f[0].scale, f[1].q, f[1].scale)
    plain.step()
    if X86:
        assert torch.equal(a, c)
    else:
        torch.testing.assert_close(a, c, rtol=3e-7, atol=1e-12)


# ---- step_direct: a float gradient (a bias) through the same kernel ----

def direct_pair(n, wd=0.0, decoupled=False, amsgrad=False):
    gen = torch.Generator().manual_seed(n)
    p0 = torch.randn(n, generator=gen) * 0.05
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    fa = FactoredAdam([a], lr=3e-3, weight_decay=wd, decoupled=decoupled)
    fa.param_groups[0]["amsgrad"] = amsgrad
    ref = torch.optim.Adam([b], lr=3e-3, weight_decay=wd, fused=True,
                           decoupled_weight_decay=decoupled)
    return a, fa, b, ref, gen


@needs_lib
@pytest.mark.parametrize("n", [1000, 64, 37])
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-3, False), (1e-2, True)])
def test_step_direct_same_as_fused_adam(n, wd, decoupled):
    """As step() would: bit-equal on x86 where n is a whole number of vectors (PyTorch's scalar
    tail, n = 37, may differ in the last place)."""
    a, fa, b, ref, gen = direct_pair(n, wd, decoupled)
    for _ in range(5):
        g = torch.randn(n, generator=gen) * 1e-2
        a.grad, b.grad = g.clone(), g.clone()
        assert fa.step_direct([a])
        ref.step()
        assert torch.equal(a.grad, g)  # left for zero_grad
        assert_same_state(a, fa, b, ref, exact=X86 and n % 16 == 0)
    assert not torch.equal(a, b.new_zeros(n)) and float(fa.state[a]["step"]) == 5


@needs_lib
@pytest.mark.parametrize("case", ["float64", "amsgrad", "no grad", "sparse", "hook"])
def test_step_direct_refuses_what_its_kernel_cannot_do(case):
    """False, with nothing stepped (no state, the weight as it was), where step() must do it
    (a step hook: step() runs it)."""
    a, fa, *_ = direct_pair(16, amsgrad=case == "amsgrad")
    if case == "hook":
        fa.register_step_post_hook(lambda *args: None)
    other = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64 if case == "float64" else None))
    fa.add_param_group({"params": [other]})
    a.grad = torch.ones(16)
    other.grad = (torch.ones(4).to_sparse() if case == "sparse" else
                  None if case == "no grad" else torch.ones_like(other))
    before = a.detach().clone()
    assert not fa.step_direct([a, other])
    assert not fa.state and torch.equal(a, before)


@needs_lib
def test_trainer_steps_biases_without_optimizer_step(data, monkeypatch):
    """With FactoredAdam the per-unit update never calls torch.optim's step (its machinery cost
    more than the update); without the C kernel it does. (A spy on the instance: patching the
    class would outlive the test in the wrapper torch.optim binds to each class.)"""
    x, y = data
    for available, expect_calls in ((True, False), (False, True)):
        monkeypatch.setattr(fastsr, "available", lambda a=available: a)
        tr, calls = mlp_trainer(), []
        step = tr.optimizer.step
        tr.optimizer.step = lambda *args, c=calls, s=step: c.append(1) or s(*args)
        tr.train_epoch(x[:64], y[:64])
        assert bool(calls) == expect_calls
        assert all(float(s["step"]) == 2 for s in tr.optimizer.state.values())


# ---- the weight's int8 copy (FFDense.cache_int8_weight) ----

@needs_lib
def test_cached_weight_is_quantize_nearest_until_the_weight_changes():
    torch.manual_seed(0)
    unit = FFDense(40, 24)
    w = unit.weight.detach()
    unit.cache_int8_weight(w.abs().max().item())
    cached = unit.int8_weight()
    assert unit.int8_weight() is cached
    ref = quantize(w, "nearest")
    assert torch.equal(cached.q, ref.q) and torch.equal(cached.scale, ref.scale)
    with torch.no_grad():
        unit.weight.mul_(2)
    fresh = unit.int8_weight()
    assert fresh is not cached and torch.equal(fresh.q, ref.q)
    assert torch.equal(fresh.scale, ref.scale * 2)
    # per output unit: never the per-tensor copy
    unit.cache_int8_weight(unit.weight.detach().abs().max().item())
    assert unit.int8_weight(weight_channel=True).scale.shape == (24, 1)


@needs_lib
def test_load_state_dict_invalidates_the_cached_weight():
    torch.manual_seed(1)
    unit, other = FFDense(16, 8), FFDense(16, 8)
    unit.cache_int8_weight(unit.weight.detach().abs().max().item())
    unit.load_state_dict(other.state_dict())
    assert torch.equal(unit.int8_weight().q, quantize(other.weight.detach(), "nearest").q)


# ---- in the trainer ----

def mlp_trainer(optimizer="adam", look="chain", hidden=(48, 32), **ff) -> FFTrainer:
    cfg = TrainConfig(hidden=hidden, batch_size=32, seed=7, epochs=2, optimizer=optimizer,
                      weight_decay=1e-4 if optimizer == "adamw" else 0.0,
                      ff=FFConfig(algo="ff-int8", look_ahead=look, lambda_start=0.2, **ff))
    torch.manual_seed(7)
    return FFTrainer(create_model("mlp", hidden=hidden), cfg, 10)


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=192, limit_test=10)
    return to_float_images(d.train.images), d.train.labels


@needs_lib
@pytest.mark.parametrize("optimizer,look,ff", [
    ("adam", "chain", {}), ("adam", "none", {}), ("adamw", "collab", {}),
    ("adam", "chain", {"weight_channel": True}), ("adam", "chain", {"int8_kernel": "float-exact"}),
    ("adam", "none", {"int8_kernel": "reference"}), ("adam8", "chain", {}),
    ("adam8", "collab", {"int8_kernel": "float-exact"}),
])
def test_trainer_factored_equals_plain(data, optimizer, look, ff):
    """An epoch with the factored step gives the weights of forming every gradient (x86: to
    the bit, the cached int8 weights included, since the next forwards agree)."""
    x, y = data
    fast = mlp_trainer(optimizer, look, **ff)
    assert fast.factored and isinstance(fast.optimizer, FactoredStep)
    assert isinstance(fast.optimizer, Adam8 if optimizer == "adam8" else FactoredAdam)
    cfg = fast.cfg
    torch.manual_seed(7)
    plain = FFTrainer(create_model("mlp", hidden=cfg.hidden), cfg, 10, factored_adam=False)
    assert not plain.factored
    fast.train_epoch(x, y)
    plain.train_epoch(x, y)
    for (name, p), q in zip(fast.model.named_parameters(), plain.model.parameters()):
        if X86:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@needs_lib  # its first half: the factored step where the C kernel is built
def test_factored_only_where_it_applies(data, monkeypatch):
    assert not mlp_trainer("sgd").factored
    assert mlp_trainer("adam8").factored and isinstance(mlp_trainer("adam8").optimizer, Adam8)
    cfg = TrainConfig(hidden=(16,), ff=FFConfig(algo="ff-fp32"))
    assert not FFTrainer(create_model("mlp", hidden=(16,)), cfg, 10).factored
    monkeypatch.setattr(fastsr, "available", lambda: False)
    tr = mlp_trainer()
    assert not tr.factored and not isinstance(tr.optimizer, FactoredAdam)
    assert type(tr.optimizer) is type(make_optimizer(tr.model.parameters(), tr.cfg))


@needs_lib
def test_no_float_weight_gradient_is_formed(data, monkeypatch):
    """The dense weights' gradients never exist as tensors: .grad stays None at every step."""
    x, y = data
    tr = mlp_trainer()
    seen = []
    real = FactoredAdam.step_factored

    def spy(self, p, g_q, a_q):
        seen.append(p.grad is None)
        return real(self, p, g_q, a_q)

    monkeypatch.setattr(FactoredAdam, "step_factored", spy)
    tr.train_epoch(x[:64], y[:64])
    assert seen == [True] * 4  # 2 steps x 2 units


# ---- adam8 ----

def adam8_pair(shape, wd=0.0, block_bytes=None):
    gen = torch.Generator().manual_seed(sum(shape))
    p0 = torch.randn(shape, generator=gen) * 0.05
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    fa, ref = Adam8([a], lr=3e-3, weight_decay=wd, seed=3), Adam8([b], lr=3e-3, weight_decay=wd,
                                                                  seed=3)
    if block_bytes is not None:
        fa.block_bytes = block_bytes
    return a, fa, b, ref, gen


@needs_lib
@pytest.mark.parametrize("shape,block_bytes", [
    ((24, 40), None),      # one block
    ((70, 40), 4 * 40 * 33),  # 40 columns: blocks of 32 rows (256 / gcd(40, 256)), 3 of them
    ((9, 300), 4 * 300),   # 300 columns: 64-row multiples, so one block after all
    ((50, 512), 4 * 512 * 3),  # whole blocks of the state in every row: 3 rows a block
])
@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_adam8_factored_equals_plain(shape, block_bytes, wd):
    """Slices of the weight round their state with the noise of one call over the whole: the
    weight and the 8-bit state come out bit-equal to Adam8.step on the formed gradient."""
    a, fa, b, ref, gen = adam8_pair(shape, wd, block_bytes)
    for _ in range(4):
        g_q, a_q = factors(16, *shape, gen)
        amax = fa.step_factored(a, g_q, a_q)
        b.grad = int8_mm_scaled(g_q.q.t(), g_q.scale, a_q.q, a_q.scale)
        ref.step()
        assert a.grad is None and amax == b.detach().abs().max().item()
        assert torch.equal(a, b)
        for k in ("m", "m_scale", "r", "r_scale", "step"):
            assert torch.equal(fa.state[a][k], ref.state[b][k]), k
    assert torch.equal(fa.generator.get_state(), ref.generator.get_state())


@needs_lib
def test_adam8_factored_falls_back_where_it_cannot():
    a, fa, b, ref, gen = adam8_pair((8, 16))
    fa.fused = False  # the PyTorch path: the gradient is formed for step()
    g_q, a_q = factors(4, 8, 16, gen)
    assert fa.step_factored(a, g_q, a_q) is None
    assert torch.equal(a.grad, int8_mm_scaled(g_q.q.t(), g_q.scale, a_q.q, a_q.scale))
