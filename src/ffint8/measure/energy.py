"""Energy meters: one interface (start, pause/resume, stop -> EnergyReading), several backends.

Backends, in the order auto_meter tries them:
- "ina3221": Jetson power monitors through sysfs. They give power, not energy, so a background
  thread samples every rail and integrates (trapezoids). hwmon driver (JetPack 5+):
  ina3221/*/hwmon/hwmon*/in{1,2,3}_input (bus mV), curr{1,2,3}_input (mA), in{n}_label;
  L4T iio driver (JetPack 4): ina3221x/*/iio:device*/in_power{0,1,2}_input (mW), rail_name_{n}.
- "nvml": nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded; Volta and newer),
  summed over the visible GPUs (nvidia-ml-py, imported only when tried).
- "rapl": Linux powercap counters intel-rapl:*/energy_uj (Intel, and AMD Zen on recent kernels),
  unwrapped with max_energy_range_uj by a thread that reads often enough to see every wrap.
- "cpu-time": an ESTIMATE: this process's CPU seconds x MeterConfig.watts_per_core.
Every hardware backend takes `root` (default "/") so tests run it on a fake sysfs tree.
An unknown energy is None, never 0 J.
"""

from __future__ import annotations

import glob
import importlib
import os
import time
from pathlib import Path

from ffint8.errors import ConfigError
from ffint8.measure.meter import (  # noqa: F401  (EnergyReading, BACKENDS: re-exported)
    BACKENDS,
    CounterMeter,
    EnergyMeter,
    EnergyReading,
    MeterConfig,
    MeterUnavailable,
    PowerMeter,
)

INA_HWMON = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
INA_IIO = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"
RAPL_ZONES = "sys/class/powercap/intel-rapl:*"


def _globs(root: str | os.PathLike, pattern: str) -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(os.path.join(glob.escape(str(root)), pattern)))]


def _number(path: Path) -> float:
    return float(path.read_text(encoding="ascii").strip())


class Ina3221Meter(PowerMeter):
    """Jetson INA3221 rails. The total is the board's input rail(s) (a label ending in "_IN",
    e.g. VDD_IN or POM_5V_IN), of which the other rails are parts; without one, their sum."""

    backend = "ina3221"

    def __init__(self, root: str | os.PathLike = "/", interval: float = 0.05) -> None:
        super().__init__(interval)
        self.channels: dict[str, tuple[str, ...]] = {}  # rail -> files
        for dev in _globs(root, INA_HWMON):
            for n in (1, 2, 3):  # in4-6 are shunt voltages and curr4 a sum: not rails
                label, volt, curr = (dev / f"in{n}_label", dev / f"in{n}_input", dev / f"curr{n}_input")
                if label.is_file() and volt.is_file() and curr.is_file():
                    self._add(label.read_text().strip(), (str(volt), str(curr)))
        for dev in _globs(root, INA_IIO):
            for n in (0, 1, 2):
                name, power = dev / f"rail_name_{n}", dev / f"in_power{n}_input"
                if name.is_file() and power.is_file():
                    self._add(name.read_text().strip(), (str(power),))
        try:
            self._power()
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f"INA3221 rails unreadable: {exc}") from None
        if not self.channels:
            raise MeterUnavailable("no INA3221 power rails under sysfs")

    def _add(self, name: str, files: tuple[str, ...]) -> None:
        name = name or f"rail{len(self.channels)}"
        while name in self.channels:
            name += "'"
        self.channels[name] = files

    def _power(self) -> dict[str, float]:
        out = {}
        for name, files in self.channels.items():
            if len(files) == 2:  # mV x mA
                out[name] = _number(Path(files[0])) * _number(Path(files[1])) / 1e6
            else:  # mW
                out[name] = _number(Path(files[0])) / 1e3
        return out

    def _total(self, rails: dict[str, float]) -> float:
        inputs = [v for k, v in rails.items() if k.upper().endswith("_IN")]
        return sum(inputs) if inputs else sum(rails.values())


class RaplMeter(CounterMeter):
    """Linux powercap RAPL zones. Total: the "package-*" zones plus "dram" subzones (DRAM is
    not part of package energy); without packages, the sum of the top-level zones."""

    backend = "rapl"

    def __init__(self, root: str | os.PathLike = "/", interval: float = 1.0) -> None:
        super().__init__(interval)
        self.zones: dict[str, Path] = {}
        for zone in _globs(root, RAPL_ZONES):
            energy = zone / "energy_uj"
            if not energy.is_file():
                continue
            name = (zone / "name").read_text().strip() if (zone / "name").is_file() else zone.name
            parts = zone.name.split(":")
            if len(parts) > 2:  # a subzone: intel-rapl:0:2 -> "package-0/dram"
                parent = zone.parent / ":".join(parts[:2])
                pname = (parent / "name").read_text().strip() if (parent / "name").is_file() else parts[1]
                name = f"{pname}/{name}"
            self.zones[name] = energy
            span = zone / "max_energy_range_uj"
            self.ranges[name] = _number(span) / 1e6 if span.is_file() else None
        if not self.zones:
            raise MeterUnavailable("no RAPL zones under /sys/class/powercap")
        try:
            self._raw()
        except (OSError, ValueError) as exc:  # energy_uj is root-only on many kernels
            raise MeterUnavailable(f"RAPL counters unreadable: {exc}") from None

    def _raw(self) -> dict[str, float]:
        return {name: _number(path) / 1e6 for name, path in self.zones.items()}

    def _total(self, rails: dict[str, float]) -> float:
        top = {k: v for k, v in rails.items() if "/" not in k}
        packages = [v for k, v in top.items() if k.startswith("package")]
        if not packages:
            return sum(top.values())
        return sum(packages) + sum(v for k, v in rails.items() if k.endswith("/dram"))


class NvmlMeter(CounterMeter):
    """GPU energy from NVML (mJ counters since the driver loaded), one rail per GPU."""

    backend = "nvml"

    def __init__(self, module: str | object = "pynvml") -> None:
        super().__init__(None)
        try:
            self.nvml = importlib.import_module(module) if isinstance(module, str) else module
            self.nvml.nvmlInit()
            self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i)
                            for i in range(self.nvml.nvmlDeviceGetCount())]
            if not self.handles:
                raise MeterUnavailable("NVML sees no GPU")
            self._raw()  # raises where the GPU has no energy counter (before Volta)
        except MeterUnavailable:
            raise
        except Exception as exc:  # ImportError, NVMLError_* (NotSupported, NoPermission, ...)
            raise MeterUnavailable(f"NVML energy unavailable: {type(exc).__name__}: {exc}") from None
        self.ranges = dict.fromkeys(self._raw(), 2.0**64 / 1e3)

    def _raw(self) -> dict[str, float]:
        try:
            return {f"gpu{i}": self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3
                    for i, h in enumerate(self.handles)}
        except Exception as exc:  # an NVMLError is none of OSError/ValueError
            raise OSError(f"nvmlDeviceGetTotalEnergyConsumption: {exc}") from None

    def _close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


class CpuTimeMeter(CounterMeter):
    """ESTIMATE: joules = CPU seconds of this process (all threads) x watts per busy core.
    Leaves out idle, uncore, memory and other processes' power."""

    backend = "cpu-time"
    measured = False

    def __init__(self, watts_per_core: float = MeterConfig.watts_per_core) -> None:
        super().__init__(None)
        self.watts_per_core = watts_per_core
        self.note = f"estimate: process CPU seconds x {watts_per_core:g} W per busy core"

    def _raw(self) -> dict[str, float]:
        return {"cpu": time.process_time() * self.watts_per_core}


def make_meter(config: MeterConfig | None = None, nvml_module: str | object = "pynvml") -> EnergyMeter:
    """The meter config.backend names; "auto" tries ina3221, nvml, rapl, then the cpu-time
    estimate, which always works. A named backend that cannot run is a ConfigError."""
    config = config or MeterConfig()
    builders = {
        "ina3221": lambda: Ina3221Meter(config.root, config.sample_interval),
        "nvml": lambda: NvmlMeter(nvml_module),
        "rapl": lambda: RaplMeter(config.root, config.poll_interval),
        "cpu-time": lambda: CpuTimeMeter(config.watts_per_core),
    }
    if config.backend != "auto":
        try:
            return builders[config.backend]()
        except MeterUnavailable as exc:
            raise ConfigError(f"energy backend {config.backend!r} unavailable: {exc}") from None
    for name in ("ina3221", "nvml", "rapl"):
        try:
            return builders[name]()
        except MeterUnavailable:
            continue
    return builders["cpu-time"]()


def auto_meter(root: str | os.PathLike = "/", nvml_module: str | object = "pynvml",
               **config) -> EnergyMeter:
    """The first meter that works here (see make_meter); config: MeterConfig fields."""
    return make_meter(MeterConfig(root=str(root), **config), nvml_module)
