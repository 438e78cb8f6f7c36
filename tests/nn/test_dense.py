"""The FF dense unit: float and INT8 forwards agree; the INT8 record keeps int8 tensors."""

import pytest
import torch

from ffint8.data import embed_label
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


def _embedded_each_label(x: torch.Tensor, c: int) -> torch.Tensor:
    """The C * B rows predict used to forward: x with label 0 embedded, then label 1, ..."""
    return embed_label(x.repeat(c, 1), torch.arange(c).repeat_interleave(x.shape[0]), c)


@pytest.mark.parametrize("weight_channel", [False, True])
@pytest.mark.parametrize("norm", ["rms", "l2"])
@pytest.mark.parametrize("d", [60, 1100])  # sums exact in float32 (D <= 1024), or int32 ones
def test_each_label_int8_equals_the_embedded_rows(norm, weight_channel, d):
    # Pixels in quarters: every row's sum of squares is exact in float32, so the norm (and the
    # per-row int8 scale) of the C embedded rows cannot differ in the last bit, and the shared
    # product must give the very same integers, hence the same floats.
    torch.manual_seed(0)
    unit = FFDense(d, 24)
    x = torch.randint(0, 5, (7, d)).float() / 4
    x[0] = 0.0  # an all-zero image: the label alone sets the row's scale
    want = unit.forward_record(_embedded_each_label(x, 10), norm, True, None, "auto",
                               weight_channel).y
    got = unit.forward_each_label(x, 10, norm, True, "auto", weight_channel)
    assert got.shape == (70, 24)
    assert torch.equal(got, want)


def test_each_label_float_matches_the_embedded_rows():
    torch.manual_seed(0)
    unit = FFDense(100, 50)
    x = torch.rand(9, 100)
    want = unit.forward_record(_embedded_each_label(x, 10), "rms", False).y
    got = unit.forward_each_label(x, 10, "rms", False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_each_label_leaves_the_images_alone():
    unit = FFDense(30, 8)
    x = torch.rand(4, 30)
    before = x.clone()
    unit.forward_each_label(x, 10, int8=True)
    assert torch.equal(x, before)
