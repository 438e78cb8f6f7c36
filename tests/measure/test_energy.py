"""Energy meters on fake sysfs trees and a fake NVML: totals, rails, wrap-around, pauses, failures."""

import time
import types

import pytest

from ffint8.errors import ConfigError
from ffint8.measure.energy import (
    CpuTimeMeter,
    Ina3221Meter,
    MeterConfig,
    MeterUnavailable,
    NvmlMeter,
    RaplMeter,
    auto_meter,
    make_meter,
)

NO_NVML = "ffint8_no_such_nvml_module"


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def rapl_tree(root, package_uj=0, dram_uj=0, core_uj=0, span_uj=10**9):
    z = root / "sys/class/powercap"
    for name, sub, uj in (("intel-rapl:0", "package-0", package_uj),
                          ("intel-rapl:0:0", "core", core_uj), ("intel-rapl:0:1", "dram", dram_uj)):
        write(z / name / "name", sub)
        write(z / name / "energy_uj", uj)
        write(z / name / "max_energy_range_uj", span_uj)
    return z


def test_rapl_total_is_package_plus_dram_with_rails(tmp_path):
    z = rapl_tree(tmp_path, package_uj=1_000_000, dram_uj=500_000, core_uj=200_000)
    m = RaplMeter(tmp_path, interval=3600)
    m.clock = FakeClock()
    m.start()
    write(z / "intel-rapl:0/energy_uj", 4_000_000)  # +3 J
    write(z / "intel-rapl:0:1/energy_uj", 1_500_000)  # +1 J
    write(z / "intel-rapl:0:0/energy_uj", 2_200_000)  # +2 J, part of the package
    m.clock.t = 2.0
    r = m.stop()
    assert r.measured and r.backend == "rapl" and r.source == "rapl"
    assert r.rails == pytest.approx({"package-0": 3.0, "package-0/core": 2.0, "package-0/dram": 1.0})
    assert r.joules == pytest.approx(4.0)
    assert r.seconds == 2.0


def test_rapl_wraps_around_and_polls_catch_every_wrap(tmp_path):
    z = rapl_tree(tmp_path, package_uj=990_000_000)  # range 1000 J, 10 J before the wrap
    m = RaplMeter(tmp_path, interval=3600)
    m.start()
    for uj in (400_000_000, 900_000_000, 100_000_000):  # each read sees less than one wrap
        write(z / "intel-rapl:0/energy_uj", uj)
        m._read()  # what the polling thread does every poll_interval
    write(z / "intel-rapl:0/energy_uj", 150_000_000)
    r = m.stop()
    assert r.rails["package-0"] == pytest.approx(10 + 400 + 500 + 200 + 50)


def test_rapl_pause_leaves_a_stretch_out(tmp_path):
    z = rapl_tree(tmp_path)
    m = RaplMeter(tmp_path, interval=3600)
    m.clock = FakeClock()
    m.start()
    write(z / "intel-rapl:0/energy_uj", 1_000_000)
    m.clock.t = 1.0
    m.pause()
    write(z / "intel-rapl:0/energy_uj", 9_000_000)  # evaluation: 8 J not counted
    m.clock.t = 5.0
    m.resume()
    write(z / "intel-rapl:0/energy_uj", 10_000_000)
    m.clock.t = 6.0
    r = m.stop()
    assert r.joules == pytest.approx(2.0) and r.seconds == pytest.approx(2.0)


def test_a_failed_read_gives_none_never_zero(tmp_path):
    z = rapl_tree(tmp_path)
    m = RaplMeter(tmp_path, interval=3600)
    m.start()
    (z / "intel-rapl:0/energy_uj").unlink()
    r = m.stop()
    assert r.joules is None and "read failed" in r.note
    assert all(v is None for v in r.rails.values())


def test_rapl_unavailable_without_zones(tmp_path):
    (tmp_path / "sys/class/powercap").mkdir(parents=True)
    with pytest.raises(MeterUnavailable, match="no RAPL zones"):
        RaplMeter(tmp_path)


def test_rapl_unavailable_when_counters_cannot_be_read(tmp_path):
    z = rapl_tree(tmp_path)
    # energy_uj is root-only on many kernels; an unreadable value stands in for that here
    # (file modes do not stop root, who may run the tests).
    write(z / "intel-rapl:0/energy_uj", "")
    with pytest.raises(MeterUnavailable, match="unreadable"):
        RaplMeter(tmp_path)


def ina_hwmon(root, rails):
    d = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for n, (label, mv, ma) in enumerate(rails, 1):
        write(d / f"in{n}_label", label)
        write(d / f"in{n}_input", mv)
        write(d / f"curr{n}_input", ma)
    write(d / "in4_input", 12345)  # a shunt voltage (uV), not a rail
    write(d / "curr4_input", 999)  # the sum channel, not a rail
    return d


def test_ina3221_hwmon_integrates_power_by_trapezoids(tmp_path):
    d = ina_hwmon(tmp_path, [("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 200),
                             ("VDD_SOC", 5000, 100)])
    m = Ina3221Meter(tmp_path, interval=3600)
    assert set(m.channels) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    m.clock = FakeClock()
    m.start()  # VDD_IN 5 W at t = 0
    m.clock.t = 2.0
    write(d / "curr1_input", 1800)  # 9 W at t = 2: 2 s x (5 + 9) / 2 = 14 J
    m._read()
    m.clock.t = 3.0  # 9 W until t = 3: + 9 J
    r = m.stop()
    assert r.rails["VDD_IN"] == pytest.approx(23.0)
    assert r.rails["VDD_CPU_GPU_CV"] == pytest.approx(3.0)
    assert r.joules == pytest.approx(23.0)  # the input rail alone: the others are parts of it
    assert r.seconds == 3.0 and r.measured


def test_ina3221_iio_layout_and_sum_without_an_input_rail(tmp_path):
    d = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (name, mw) in enumerate([("GPU", 2000), ("CPU", 1000)]):
        write(d / f"rail_name_{n}", name)
        write(d / f"in_power{n}_input", mw)
    m = Ina3221Meter(tmp_path, interval=3600)
    m.clock = FakeClock()
    m.start()
    m.clock.t = 4.0
    r = m.stop()
    assert r.rails == pytest.approx({"GPU": 8.0, "CPU": 4.0})
    assert r.joules == pytest.approx(12.0)


def test_ina3221_thread_samples_in_the_background(tmp_path):
    ina_hwmon(tmp_path, [("VDD_IN", 5000, 1000)])
    m = Ina3221Meter(tmp_path, interval=0.005)
    m.start()
    time.sleep(0.1)
    r = m.stop()
    assert r.joules == pytest.approx(5.0 * r.seconds, rel=0.05)


def fake_nvml(energies_mj, supported=True):
    state = {"e": list(energies_mj), "init": 0, "shutdown": 0}

    class NVMLError(Exception):
        pass

    def energy(h):
        if not supported:
            raise NVMLError("Not Supported")
        return state["e"][h]

    mod = types.SimpleNamespace(
        nvmlInit=lambda: state.__setitem__("init", state["init"] + 1),
        nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: len(state["e"]),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=energy)
    return mod, state


def test_nvml_sums_gpus_and_shuts_down():
    mod, state = fake_nvml([10_000, 50_000])
    m = NvmlMeter(mod)
    m.start()
    state["e"] = [13_500, 51_000]
    r = m.stop()
    assert r.rails == pytest.approx({"gpu0": 3.5, "gpu1": 1.0})
    assert r.joules == pytest.approx(4.5) and r.backend == "nvml"
    assert state["shutdown"] == 1


def test_nvml_unsupported_or_missing_is_unavailable():
    mod, _ = fake_nvml([1], supported=False)
    with pytest.raises(MeterUnavailable, match="NVML"):
        NvmlMeter(mod)
    with pytest.raises(MeterUnavailable):
        NvmlMeter(NO_NVML)


def test_cpu_time_estimate_is_marked_as_such():
    m = CpuTimeMeter(watts_per_core=10.0)
    m.start()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.05:
        pass
    r = m.stop()
    assert not r.measured and r.source == "estimate:cpu-time" and "10 W" in r.note
    assert 0.5 <= r.joules <= 2.0  # 10 W x about 0.05 CPU seconds (plus a little)


def test_auto_meter_order_and_fallback(tmp_path):
    assert auto_meter(tmp_path, nvml_module=NO_NVML).backend == "cpu-time"
    rapl_tree(tmp_path)
    assert auto_meter(tmp_path, nvml_module=NO_NVML).backend == "rapl"
    mod, _ = fake_nvml([0])
    assert auto_meter(tmp_path, nvml_module=mod).backend == "nvml"
    ina_hwmon(tmp_path, [("VDD_IN", 5000, 100)])
    assert auto_meter(tmp_path, nvml_module=mod).backend == "ina3221"


def test_named_backend_and_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="'rapl' unavailable"):
        make_meter(MeterConfig(backend="rapl", root=str(tmp_path)))
    with pytest.raises(ConfigError, match="invalid energy backend"):
        MeterConfig(backend="wattmeter")
    with pytest.raises(ConfigError, match="watts_per_core"):
        MeterConfig(watts_per_core=0)
    assert make_meter(MeterConfig(backend="cpu-time", watts_per_core=3)).watts_per_core == 3


def test_start_twice_raises(tmp_path):
    m = CpuTimeMeter()
    m.start()
    with pytest.raises(RuntimeError, match="already started"):
        m.start()
    m.stop()
