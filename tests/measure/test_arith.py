"""Arithmetic energy from operation counts (Horowitz 45 nm table), relative only."""

import pytest

from ffint8.measure.arith import HOROWITZ_45NM_PJ, QUANTIZE_PJ, arithmetic_energy
from ffint8.measure.opcount import OpCounts, epoch_ops, mlp_layers


def test_prices_each_kind_of_operation():
    ops = OpCounts(int8_mul=10**12, int32_add=10**12, fp32_mul=10**12, fp32_add=10**12,
                   quantized=10**12)
    r = arithmetic_energy(ops)
    assert r.rails == pytest.approx({"int8_mul": 0.2, "int32_add": 0.1, "fp32_mul": 3.7,
                                     "fp32_add": 0.9, "quantize": 4.6})
    assert r.joules == pytest.approx(9.5)
    assert not r.measured and "relative only" in r.note and r.seconds is None
    assert arithmetic_energy(ops.to_dict()).joules == r.joules  # dicts from metrics.json too
    assert QUANTIZE_PJ == HOROWITZ_45NM_PJ["fp32_mul"] + HOROWITZ_45NM_PJ["fp32_add"]


def test_int8_ff_epoch_costs_less_arithmetic_than_fp32():
    layers = mlp_layers(784, (1000, 1000))
    int8 = arithmetic_energy(epoch_ops("ff-int8", layers, 32, 1000)).joules
    fp32 = arithmetic_energy(epoch_ops("ff-fp32", layers, 32, 1000)).joules
    assert int8 < 0.2 * fp32  # int8 MACs cost 0.3 pJ against 4.6 pJ
