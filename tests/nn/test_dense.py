"""The FF dense unit: float and INT8 forwards agree; the INT8 record keeps int8 tensors."""

import torch

from ffint8.nn.dense import FFDense


def test_int8_forward_close_to_float():
    torch.manual_seed(0)
    unit = FFDense(100, 50)
    h = torch.rand(32, 100)
    f = unit.forward_record(h, int8=False)
    q = unit.forward_record(h, int8=True, seed=None)
    assert q.a_q.q.dtype == torch.int8 and q.w_q.q.dtype == torch.int8
    assert q.a is None and f.a_q is None
    err = (q.y - f.y).square().sum() / f.y.square().sum()
    assert err < 1e-3  # > 30 dB


def test_stochastic_forward_depends_on_seed_only():
    torch.manual_seed(0)
    unit = FFDense(64, 16)
    h = torch.rand(8, 64)
    a = unit.forward_record(h, int8=True, seed=1).y
    b = unit.forward_record(h, int8=True, seed=1).y
    c = unit.forward_record(h, int8=True, seed=2).y
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_unit_parameters_in_state_dict():
    unit = FFDense(3, 2)
    assert set(unit.state_dict()) == {"weight", "bias"}


def test_int8_inference_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    unit = FFDense(64, 16)
    h = torch.rand(8, 64)
    h[0] *= 50.0  # one loud sample must not change the others' quantisation
    together = unit.forward_record(h, int8=True, seed=None).y
    alone = torch.cat([unit.forward_record(h[i : i + 1], int8=True, seed=None).y for i in range(8)])
    assert torch.equal(together, alone)
