"""ffint8.info: probes against fake /proc and /sys trees, collect_info and format_info."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from ffint8 import info
from ffint8.info import (
    INFO_KEYS,
    collect_info,
    cpu_flags,
    cpu_model,
    format_info,
    has_int8_dot,
    ina3221_available,
    int8_dot_flags,
    nvml_available,
    rapl_available,
)

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8 amx_tile
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes asimddp
CPU implementer\t: 0x41
Model\t\t: NVIDIA Jetson Orin Nano
"""


def _write(root: Path, rel: str, text: str = "1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cpuinfo_x86(tmp_path):
    _write(tmp_path, "proc/cpuinfo", X86_CPUINFO)
    assert "avx2" in cpu_flags(tmp_path)
    assert cpu_model(tmp_path) == "Intel(R) Xeon(R) Platinum 8480+"
    assert int8_dot_flags(tmp_path) == ["avx512_vnni", "amx_int8"]
    assert has_int8_dot(tmp_path) is True


def test_cpuinfo_arm(tmp_path):
    _write(tmp_path, "proc/cpuinfo", ARM_CPUINFO)
    assert cpu_model(tmp_path) == "NVIDIA Jetson Orin Nano"
    assert int8_dot_flags(tmp_path) == ["asimddp"]
    assert has_int8_dot(tmp_path) is True


def test_cpuinfo_without_dot_product(tmp_path):
    _write(tmp_path, "proc/cpuinfo", "model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n")
    assert int8_dot_flags(tmp_path) == []
    assert has_int8_dot(tmp_path) is False


def test_cpuinfo_missing(tmp_path):
    assert cpu_flags(tmp_path) == set()
    assert cpu_model(tmp_path) is None
    assert int8_dot_flags(tmp_path) == []
    assert has_int8_dot(tmp_path) is False


def test_has_int8_dot_on_real_root_matches_gemm():
    from ffint8.quant.gemm import cpu_has_int8_dot

    assert has_int8_dot("/") == cpu_has_int8_dot()


@pytest.mark.parametrize("rel", [
    "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_input",
    "sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power0_input",
])
def test_ina3221_found(tmp_path, rel):
    _write(tmp_path, rel, "5000\n")
    assert ina3221_available(tmp_path) is True


def test_ina3221_absent(tmp_path):
    _write(tmp_path, "sys/bus/i2c/drivers/other/1-0040/hwmon/hwmon0/in1_input")
    assert ina3221_available(tmp_path) is False
    assert ina3221_available(tmp_path / "does-not-exist") is False


def test_rapl_readable(tmp_path):
    _write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", "123456789\n")
    assert rapl_available(tmp_path) is True


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_rapl_unreadable_by_mode(tmp_path):
    path = _write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", "1\n")
    path.chmod(0)
    try:
        assert rapl_available(tmp_path) is False
    finally:
        path.chmod(0o600)


def test_rapl_unreadable(tmp_path):
    # A directory where the counter should be cannot be read by anyone, root included.
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").mkdir(parents=True)
    assert rapl_available(tmp_path) is False


def test_rapl_absent(tmp_path):
    assert rapl_available(tmp_path) is False


def test_nvml_probe(monkeypatch):
    calls = []
    ok = types.SimpleNamespace(nvmlInit=lambda: calls.append("init"),
                               nvmlShutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "fake_nvml_ok", ok)
    assert nvml_available("fake_nvml_ok") is True
    assert calls == ["init", "shutdown"]

    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "fake_nvml_bad", types.SimpleNamespace(nvmlInit=fail))
    assert nvml_available("fake_nvml_bad") is False
    assert nvml_available("no_such_module_ffint8_test") is False


def test_collect_info_on_fake_tree(tmp_path):
    _write(tmp_path, "proc/cpuinfo", ARM_CPUINFO)
    _write(tmp_path, "sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power0_input", "800\n")
    _write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", "42\n")
    got = collect_info(tmp_path)
    assert list(got) == list(INFO_KEYS)
    assert got["cpu_model"] == "NVIDIA Jetson Orin Nano"
    assert got["cpu_int8_flags"] == ["asimddp"] and got["cpu_int8_dot"] is True
    assert got["energy_ina3221"] is True and got["energy_rapl"] is True
    assert got["ffint8"] == __import__("ffint8").__version__
    assert got["int8_kernel_cpu"] in ("vnni", "int_mm", "float-exact")  # this machine's
    assert isinstance(got["fused_quantizer"], bool)
    assert isinstance(got["threads"], int) and got["threads"] >= 1


def test_collect_info_empty_tree(tmp_path):
    got = collect_info(tmp_path)
    assert set(got) == set(INFO_KEYS)
    assert got["cpu_model"] is None and got["cpu_int8_flags"] == []
    assert got["energy_ina3221"] is False and got["energy_rapl"] is False
    assert got["cuda_available"] in (True, False)
    if not got["cuda_available"]:
        assert got["int8_kernel_cuda"] is None and got["cuda_devices"] == []


def test_collect_info_real_root_never_raises():
    got = collect_info()
    assert set(got) == set(INFO_KEYS)
    assert got["torch"] is not None and got["python"] == sys.version.split()[0]


def test_collect_info_survives_failing_probes(tmp_path, monkeypatch):
    import torch

    from ffint8.quant import fastsr

    def boom(*args, **kwargs):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(fastsr, "available", boom)
    monkeypatch.setattr(torch.cuda, "is_available", boom)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", boom)
    monkeypatch.setattr(info, "cpu_model", boom)
    monkeypatch.setattr(info, "rapl_available", boom)
    got = collect_info(tmp_path)
    assert set(got) == set(INFO_KEYS)
    assert got["fused_quantizer"] is False
    assert got["cpu_model"] is None and got["torch_cpu_capability"] is None
    assert got["energy_rapl"] is False
    assert got["cuda_available"] is False and got["int8_kernel_cuda"] is None


def test_format_info_lists_every_key_aligned(tmp_path):
    got = collect_info(tmp_path)
    text = format_info(got)
    lines = text.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == list(INFO_KEYS)
    width = max(len(k) for k in INFO_KEYS) + 2  # "key:" padded, then one space
    assert all(len(line) > width and line[width - 1] == " " and line[width] != " " for line in lines)


def test_format_info_values():
    text = format_info({"a": True, "bb": False, "ccc": None, "d": [], "e": ["x", "y"], "f": 1.5})
    assert text.splitlines() == [
        "a:   yes", "bb:  no", "ccc: n/a", "d:   none", "e:   x, y", "f:   1.5",
    ]
    assert format_info({}) == ""
