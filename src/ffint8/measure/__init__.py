"""Measuring training runs: peak memory, energy meters, operation counts, analytic footprints.

docs/measurement.md explains every figure, its unit and its limits.
"""

from ffint8.measure.arith import HOROWITZ_45NM_PJ, arithmetic_energy
from ffint8.measure.energy import (
    CpuTimeMeter,
    EnergyMeter,
    EnergyReading,
    Ina3221Meter,
    MeterConfig,
    NvmlMeter,
    RaplMeter,
    auto_meter,
    make_meter,
)
from ffint8.measure.footprint import Footprint, footprint
from ffint8.measure.memory import MemoryProbe, MemoryReport, current_rss_bytes, peak_rss_bytes
from ffint8.measure.opcount import OpCounts, epoch_ops, mlp_layers, run_ops, step_ops
from ffint8.measure.record import RunMeasurement

__all__ = [
    "HOROWITZ_45NM_PJ", "CpuTimeMeter", "EnergyMeter", "EnergyReading", "Footprint",
    "Ina3221Meter", "MemoryProbe", "MemoryReport", "MeterConfig", "NvmlMeter", "OpCounts",
    "RaplMeter", "RunMeasurement", "arithmetic_energy", "auto_meter", "current_rss_bytes",
    "epoch_ops", "footprint", "make_meter", "mlp_layers", "peak_rss_bytes", "run_ops", "step_ops",
]
