"""Arithmetic energy from operation counts: relative only.

Energy per operation at 45 nm, 0.9 V, from M. Horowitz, "Computing's energy problem (and what we
can do about it)", ISSCC 2014 (picojoules). It prices the arithmetic alone: memory traffic, which
dominates the energy of a real training step, control and data movement are left out, and the
process node is not that of any device we run on. Use it to compare algorithms with each other,
never as joules a device would draw.
"""

from __future__ import annotations

from ffint8.measure.energy import EnergyReading
from ffint8.measure.opcount import OpCounts

HOROWITZ_45NM_PJ = {
    "int8_add": 0.03, "int8_mul": 0.2,
    "int32_add": 0.1, "int32_mul": 3.1,
    "fp16_add": 0.4, "fp16_mul": 1.1,
    "fp32_add": 0.9, "fp32_mul": 3.7,
}
# Quantising one element to int8: a scale multiply and a rounding add, priced as fp32 (an
# assumption: the absmax comparison and the clamp are left out like every comparison).
QUANTIZE_PJ = HOROWITZ_45NM_PJ["fp32_mul"] + HOROWITZ_45NM_PJ["fp32_add"]
NOTE = "relative only: arithmetic at 45 nm (Horowitz, ISSCC 2014); memory traffic not included"


def arithmetic_energy(ops: OpCounts | dict) -> EnergyReading:
    """Joules of the counted arithmetic; rails: joules per kind of operation. measured=False."""
    if isinstance(ops, dict):
        ops = OpCounts(**{k: v for k, v in ops.items() if k in OpCounts.__dataclass_fields__})
    pj = {
        "int8_mul": ops.int8_mul * HOROWITZ_45NM_PJ["int8_mul"],
        "int32_add": ops.int32_add * HOROWITZ_45NM_PJ["int32_add"],
        "fp32_mul": ops.fp32_mul * HOROWITZ_45NM_PJ["fp32_mul"],
        "fp32_add": ops.fp32_add * HOROWITZ_45NM_PJ["fp32_add"],
        "quantize": ops.quantized * QUANTIZE_PJ,
    }
    rails = {k: v * 1e-12 for k, v in pj.items()}
    return EnergyReading(sum(rails.values()), None, "arithmetic-45nm", False, rails, NOTE)
