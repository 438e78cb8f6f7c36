"""What this machine offers ffint8: versions, CPU int8 support, kernels, CUDA and energy meters.

`collect_info()` gathers a flat dict (see INFO_KEYS); `format_info()` turns it into aligned
"key: value" lines for `ffint8 info`. Every probe that reads the file system takes `root`
(default "/") so tests can point it at a fake tree, and no probe raises: a probe that fails
reports False, None or an empty list.

The int8 GEMM kernel entries come from `resolve_kernel` and so always describe the real machine,
also when `root` points elsewhere; `cpu_int8_dot` follows `root` (on "/" it is exactly what the
kernel chooser sees, `cpu_has_int8_dot()`).
"""

from __future__ import annotations

import glob
import importlib
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
INA3221_PATTERNS = (
    "sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_input",
    "sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power*_input",
)
RAPL_PATTERN = "sys/class/powercap/intel-rapl:*/energy_uj"
INFO_KEYS = (
    "ffint8", "python", "platform", "machine", "torch", "torch_cpu_capability", "cpu_model",
    "cpu_int8_dot", "cpu_int8_flags", "int8_kernel_cpu", "int8_kernel_cuda", "fused_quantizer",
    "threads", "cpu_count", "cuda_available", "cuda_devices", "cuda_capability",
    "cuda_memory_gib", "energy_ina3221", "energy_nvml", "energy_rapl",
)


def _safe(probe: Callable[[], Any], default: Any = None) -> Any:
    """probe(), or `default` if it raises anything."""
    try:
        return probe()
    except Exception:  # a probe must never take `ffint8 info` down
        return default


def _read_text(root: str | os.PathLike, rel: str) -> str | None:
    """Text of root/rel, or None if it cannot be read."""
    try:
        return (Path(root) / rel).read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def _globs(root: str | os.PathLike, pattern: str) -> list[str]:
    """Paths under root matching a root-relative glob pattern (sorted)."""
    return sorted(glob.glob(os.path.join(glob.escape(str(root)), pattern)))


def _readable(path: str) -> bool:
    """True if path is a file that opens and reads."""
    try:
        with open(path, "rb") as f:
            f.read(64)
        return True
    except OSError:
        return False


def cpu_flags(root: str | os.PathLike = "/") -> set[str]:
    """CPU feature flags from root/proc/cpuinfo ("flags" on x86, "Features" on Arm); empty if none."""
    text = _read_text(root, "proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(root: str | os.PathLike = "/") -> str | None:
    """The CPU's model name from root/proc/cpuinfo, or None where it does not say."""
    text = _read_text(root, "proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return None


def int8_dot_flags(root: str | os.PathLike = "/") -> list[str]:
    """Which integer dot-product flags (VNNI, AMX, Arm dotprod) the CPU has, in INT8_DOT_FLAGS order."""
    flags = cpu_flags(root)
    return [f for f in INT8_DOT_FLAGS if f in flags]


def has_int8_dot(root: str | os.PathLike = "/") -> bool:
    """True if the CPU has an int8 dot-product unit; on "/" this is gemm.cpu_has_int8_dot()."""
    if os.path.abspath(root) == os.path.abspath("/"):
        from ffint8.quant.gemm import cpu_has_int8_dot

        return _safe(cpu_has_int8_dot, False)
    return bool(int8_dot_flags(root))


def ina3221_available(root: str | os.PathLike = "/") -> bool:
    """True if a Jetson INA3221 power monitor exposes a readable input (hwmon or iio driver)."""
    return any(_readable(p) for pat in INA3221_PATTERNS for p in _globs(root, pat))


def rapl_available(root: str | os.PathLike = "/") -> bool:
    """True if a Linux RAPL energy counter (intel-rapl:*/energy_uj) is readable by this user."""
    return any(_readable(p) for p in _globs(root, RAPL_PATTERN))


def nvml_available(module: str = "pynvml") -> bool:
    """True if NVML's Python binding (pynvml / nvidia-ml-py) imports and nvmlInit succeeds.

    NVML reads no files we could fake, so instead of `root` this takes the module name.
    """
    try:
        nvml = importlib.import_module(module)
        nvml.nvmlInit()
    except Exception:
        return False
    _safe(nvml.nvmlShutdown)
    return True


def _torch_info() -> dict[str, Any]:
    """torch version, CPU capability, thread count and the int8 kernel "auto" resolves to."""
    import torch

    from ffint8.quant.gemm import resolve_kernel

    cuda = _safe(torch.cuda.is_available, False)
    return {
        "torch": torch.__version__,
        "torch_cpu_capability": _safe(torch.backends.cpu.get_cpu_capability),
        "int8_kernel_cpu": _safe(lambda: resolve_kernel("auto", "cpu")),
        "int8_kernel_cuda": _safe(lambda: resolve_kernel("auto", "cuda")) if cuda else None,
        "threads": _safe(torch.get_num_threads),
    }


def _cuda_info() -> dict[str, Any]:
    """CUDA availability and, per device, its name, compute capability and memory in GiB."""
    import torch

    info: dict[str, Any] = {"cuda_available": False, "cuda_devices": [], "cuda_capability": [],
                            "cuda_memory_gib": []}
    if not torch.cuda.is_available():
        return info
    info["cuda_available"] = True
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        info["cuda_devices"].append(props.name)
        info["cuda_capability"].append(f"{props.major}.{props.minor}")
        info["cuda_memory_gib"].append(round(props.total_memory / 2**30, 1))
    return info


def _fused_quantizer() -> bool:
    """True if the fused C quantiser is built and loads (builds it on first call)."""
    from ffint8.quant import fastsr

    return bool(fastsr.available())


def collect_info(root: str | os.PathLike = "/") -> dict[str, Any]:
    """Everything `ffint8 info` reports, as a flat dict with the keys INFO_KEYS; never raises."""
    from ffint8 import __version__

    info: dict[str, Any] = dict.fromkeys(INFO_KEYS)
    info.update(
        ffint8=__version__,
        python=sys.version.split()[0],
        platform=_safe(platform.platform),
        machine=_safe(platform.machine),
        cpu_model=_safe(lambda: cpu_model(root)),
        cpu_int8_dot=_safe(lambda: has_int8_dot(root), False),
        cpu_int8_flags=_safe(lambda: int8_dot_flags(root), []),
        fused_quantizer=_safe(_fused_quantizer, False),
        cpu_count=_safe(os.cpu_count),
        cuda_available=False, cuda_devices=[], cuda_capability=[], cuda_memory_gib=[],
        energy_ina3221=_safe(lambda: ina3221_available(root), False),
        energy_nvml=_safe(nvml_available, False),
        energy_rapl=_safe(lambda: rapl_available(root), False),
    )
    info.update(_safe(_torch_info, {}))
    info.update(_safe(_cuda_info, {}))
    return info


def _show(value: Any) -> str:
    """One value as text: yes/no for bools, n/a for None, comma-separated lists ("none" if empty)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "none"
    return str(value)


def format_info(info: dict[str, Any]) -> str:
    """Aligned "key: value" lines, one per entry of `info`, in its order."""
    if not info:
        return ""
    width = max(len(str(k)) for k in info) + 1
    return "\n".join(f"{str(k) + ':':<{width}} {_show(v)}" for k, v in info.items())
