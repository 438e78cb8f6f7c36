"""The fused CPU quantiser (csrc/fastquant.c): built with the system C compiler on first use.
The same library holds adam8's fused step and a byte transpose for the int8 convolutions.

Plain PyTorch needs five or more passes over memory to quantise a tensor, and torch.rand costs a
few ns per element, more than the int8 GEMM the result feeds at FF's batch sizes. The C kernel does
max|x| in one pass and scale-round-store in another, with a counter-based hash as its random
source. The shared library is cached under $XDG_CACHE_HOME/ffint8 (or ~/.cache/ffint8), keyed by
source, machine and CPU flags. Where no compiler is found, or FFINT8_NO_CKERNEL=1 is set, every
caller falls back to the plain PyTorch path (same distribution, different random stream).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "fastquant.c"
_MASK32 = 0xFFFF_FFFF
_TINY = torch.finfo(torch.float32).tiny


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ffint8"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


# -fno-trapping-math lets gcc vectorise floorf; NaN checks work on bit patterns instead.
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
# Where the CPU has AVX-512, gcc still prefers 256-bit vectors; 512-bit ones made the rounding
# loops faster on the Xeon of session 11 (round to nearest 0.76x, stochastic rounding 0.56x the
# time; the memory-bound passes unchanged). The results do not depend on the width. Tried first
# on x86 only, and dropped if the compiler refuses it.
WIDE = ["-mprefer-vector-width=512"]


def _flag_sets() -> list[list[str]]:
    if platform.machine().lower() in ("x86_64", "amd64"):
        return [FLAGS + WIDE, FLAGS]
    return [FLAGS]


def _compile(out: Path) -> bool:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        for flags in _flag_sets():
            res = subprocess.run([cc, *flags, str(SOURCE), "-o", str(tmp_out)], capture_output=True)
            if res.returncode == 0:
                os.replace(tmp_out, out)  # atomic: a concurrent process sees all or nothing
                return True
    return False


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("FFINT8_NO_CKERNEL") == "1":
        return None
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + platform.machine().encode() + _cpu_flags().encode()
                         + repr(_flag_sets()).encode()).hexdigest()[:16]
    path = _cache_dir() / f"fastquant-{key}.so"
    try:
        if not path.exists() and not _compile(path):
            return None
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.ffq_absmax.restype = ctypes.c_float
    lib.ffq_absmax.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.ffq_quantize_nearest.restype = None
    lib.ffq_quantize_nearest.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
    ]
    lib.ffq_quantize_stochastic.restype = None
    lib.ffq_quantize_stochastic.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
        ctypes.c_uint32, ctypes.c_uint32,
    ]
    f, i64, u32, ptr = ctypes.c_float, ctypes.c_int64, ctypes.c_uint32, ctypes.c_void_p
    lib.ffq_quantize_rows_nearest.restype = None
    lib.ffq_quantize_rows_nearest.argtypes = [ptr, ptr, ptr, i64, i64, f]
    lib.ffq_adam8.restype = None
    lib.ffq_adam8.argtypes = [ptr, ptr, ptr, f, i64, ptr, ptr, ptr, ptr, i64, ptr,
                              f, f, f, f, f, f, f, ctypes.c_int, u32, u32, u32, u32, i64]
    lib.ffq_adam_i32.restype = ctypes.c_float
    lib.ffq_adam_i32.argtypes = [ptr, ptr, ptr, ptr, i64, f, f, f, f, f, f, f, f, f, f]
    lib.ffq_transpose_u8.restype = None
    lib.ffq_transpose_u8.argtypes = [ptr, ptr, i64, i64, i64]
    lib.ffq_dw_weight_i8.restype = ctypes.c_int
    lib.ffq_dw_weight_i8.argtypes = [ptr, ptr, ptr] + [i64] * 12
    return lib


def available() -> bool:
    """True when the fused C quantiser is built and loaded on this machine."""
    return _library() is not None


def _usable(x: torch.Tensor) -> ctypes.CDLL | None:
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        return None
    return _library()


def mix64(seed: int) -> int:
    """splitmix64 finaliser: turns consecutive seeds into unrelated 64-bit keys."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return z ^ (z >> 31)


def quantize_per_tensor(
    x: torch.Tensor, seed: int | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fused per-tensor quantisation of a contiguous CPU float32 tensor, or None if unavailable.

    seed None: round to nearest; else stochastic rounding keyed by the 64-bit seed.
    Returns (q int8 of x's shape, scale 0-d float32). A NaN or Inf in x gives a NaN scale.
    """
    lib = _usable(x)
    if lib is None:
        return None
    amax = lib.ffq_absmax(x.data_ptr(), x.numel()) if x.numel() else 0.0
    return _quantize_with_absmax(lib, x, amax, seed)


def absmax(x: torch.Tensor) -> float | None:
    """max|x| of a contiguous CPU float32 tensor in one C pass (NaN if any value is NaN or Inf),
    or None where the C kernel is unavailable or x does not fit it."""
    lib = _usable(x)
    if lib is None:
        return None
    return lib.ffq_absmax(x.data_ptr(), x.numel()) if x.numel() else 0.0


def quantize_nearest_with_absmax(x: torch.Tensor, amax: float
                                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """quantize_per_tensor(x, None) for an x whose max|x| (as ffq_absmax gives it: NaN for a
    NaN or Inf) the caller already has, as adam_int32 returns it: one pass instead of two."""
    lib = _usable(x)
    return None if lib is None else _quantize_with_absmax(lib, x, amax, None)


def _quantize_with_absmax(lib: ctypes.CDLL, x: torch.Tensor, amax: float,
                          seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.numel()
    if amax == 0:
        scale = 1.0
    else:  # NaN stays NaN; the floor keeps 1 / scale finite in float32 (as absmax_scale does)
        scale = max(amax / 127.0, _TINY) if amax == amax else amax
    q = torch.empty(x.shape, dtype=torch.int8)
    if scale != scale:  # NaN: nothing meaningful to round
        q.zero_()
    elif seed is None:
        lib.ffq_quantize_nearest(x.data_ptr(), q.data_ptr(), n, 1.0 / scale)
    else:
        key = mix64(seed)
        lib.ffq_quantize_stochastic(
            x.data_ptr(), q.data_ptr(), n, 1.0 / scale, key & _MASK32, key >> 32
        )
    return q, torch.tensor(scale, dtype=torch.float32)


def quantize_rows_nearest(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fused round-to-nearest quantisation of a contiguous 2-D CPU float32 tensor with one scale
    per row, or None if unavailable. Returns (q int8 of x's shape, scale (rows, 1) float32): the
    values of the PyTorch path (ties to even); a row with a NaN or Inf gets a NaN scale."""
    lib = _usable(x)
    if lib is None or x.dim() != 2:
        return None
    q = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.empty(x.shape[0], 1, dtype=torch.float32)
    if x.numel():
        lib.ffq_quantize_rows_nearest(x.data_ptr(), q.data_ptr(), scale.data_ptr(), x.shape[0],
                                      x.shape[1], _TINY)
    else:
        scale.fill_(1.0)  # as absmax_scale gives an empty row
    return q, scale


def transpose_bytes(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor | None:
    """The 1-byte CPU tensor x, read as contiguous (batch, rows, cols), copied out as a
    contiguous (batch, cols, rows) tensor (returned flat), or None where the C kernel is
    unavailable or x does not fit (then the caller copies with PyTorch)."""
    if (x.device.type != "cpu" or x.element_size() != 1 or not x.is_contiguous()
            or rows <= 0 or cols <= 0 or x.numel() % (rows * cols) or sys.byteorder != "little"):
        return None
    lib = _library()
    if lib is None:
        return None
    out = torch.empty(x.numel(), dtype=x.dtype)
    lib.ffq_transpose_u8(x.data_ptr(), out.data_ptr(), x.numel() // (rows * cols), rows, cols)
    return out


MAX_DW_TAPS, DW_LANES = 49, 16  # FFQ_DW_MAX_TAPS, FFQ_DW_LANES in csrc/fastquant.c


def depthwise_weight_grad(x: torch.Tensor, g: torch.Tensor, kernel_size: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor | None:
    """Exact weight gradient of a depthwise convolution (groups = channels, one filter each):
    x int8 (N, C, H, W), g int8 (N, C, Ho, Wo) -> int64 (C, 1, kh, kw); None where the C kernel
    is unavailable or the operands do not fit it (then the caller takes another kernel).
    Channels-last operands are read in place; others are copied to that layout once."""
    kh, kw = kernel_size
    if (x.device.type != "cpu" or g.device.type != "cpu" or x.dtype != torch.int8
            or g.dtype != torch.int8 or x.dim() != 4 or g.dim() != 4
            or g.shape[:2] != x.shape[:2] or kh * kw > MAX_DW_TAPS
            or g.shape[2] * g.shape[3] * 128 * 128 >= 2**31):  # one image's sum must fit int32
        return None
    lib = _library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    ho, wo = g.shape[2:]
    xl = x.permute(0, 2, 3, 1).contiguous()  # a view when x is channels_last
    gl = g.permute(0, 2, 3, 1).contiguous()
    cp = -(-c // DW_LANES) * DW_LANES
    if cp != c:  # zero channels up to whole vectors: the kernel's odd-width tail is scalar
        xl, gl = torch.nn.functional.pad(xl, (0, cp - c)), torch.nn.functional.pad(gl, (0, cp - c))
    out = torch.empty((cp, 1, kh, kw), dtype=torch.int64)
    rc = lib.ffq_dw_weight_i8(xl.data_ptr(), gl.data_ptr(), out.data_ptr(), n, h, w, cp, ho, wo,
                              kh, kw, stride[0], stride[1], padding[0], padding[1])
    return out[:c] if rc == 0 else None


MAX_ADAM8_BLOCK = 1024  # FFQ_MAX_BLOCK in csrc/fastquant.c


def adam8_step(p: torch.Tensor, g: torch.Tensor, state: dict, block: int, table: torch.Tensor,
               b1: float, b2: float, step_size: float, root_c2: float, eps: float, wd: float,
               keys: tuple[int, int, int, int] | None, *, g_scale: float | None = None,
               start: int = 0) -> bool:
    """ffint8.train.adam8's update of one parameter in one fused pass (state: its "m", "m_scale",
    "r", "r_scale"); keys: four 32-bit keys of the stochastic rounding, None to round to
    nearest. False (nothing done) where the C kernel is unavailable or does not fit.

    g: p's float32 gradient; or, with g_scale, an int32 accumulator whose values times g_scale
    are the gradient (train/factored.py). start: p is the contiguous slice of its tensor that
    begins at value `start` (a multiple of block), the state the whole tensor's: its slices
    round as one call over the whole tensor would."""
    lib = _usable(p)
    exact = g_scale is not None
    if exact:
        fits = (g.device.type == "cpu" and g.dtype == torch.int32 and g.is_contiguous()
                and g.numel() == p.numel())
    else:
        fits = _usable(g) is not None
    if lib is None or not fits or block > MAX_ADAM8_BLOCK or start % block or start < 0:
        return False
    tensors = (state["m"], state["m_scale"], state["r"], state["r_scale"], table)
    if not all(t.is_contiguous() and t.device.type == "cpu" for t in tensors):
        return False
    end = start + p.numel()
    if end > state["m"].numel() or (end % block and end <= state["m"].numel() - block):
        return False  # past the state, or a slice that ends inside a block not the last
    k = keys or (0, 0, 0, 0)
    b0 = start // block
    # scalars rounded to float32 as PyTorch rounds a Python float for a float32 tensor
    lib.ffq_adam8(p.data_ptr(), None if exact else g.data_ptr(), g.data_ptr() if exact else None,
                  g_scale if exact else 1.0, p.numel(), state["m"][start:].data_ptr(),
                  state["m_scale"][b0:].data_ptr(), state["r"][start:].data_ptr(),
                  state["r_scale"][b0:].data_ptr(), block, table.data_ptr(), 1 - b1, b2, 1 - b2,
                  step_size, root_c2, eps, wd, int(keys is not None), *k, start)
    return True


def adam_int32(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, acc: torch.Tensor,
               g_scale: float, lr: float, b1: float, b2: float, step: float, eps: float,
               wd: float, decoupled: bool, amax: float = 0.0) -> float | None:
    """One torch.optim.Adam step (decoupled: AdamW's weight decay) of the float32 parameters p
    with moments m, v and gradient acc * g_scale, acc an int32 accumulator of p's size, in one
    pass (csrc/fastquant.c, ffq_adam_i32). step: the step count after this step. Returns
    max(amax, max|p| after the step), NaN once a value is NaN or Inf; None (nothing done) where
    the C kernel is unavailable or a tensor does not fit."""
    lib = _usable(p)
    if (lib is None or _usable(m) is None or _usable(v) is None or acc.dtype != torch.int32
            or acc.device.type != "cpu" or not acc.is_contiguous()
            or not p.numel() == m.numel() == v.numel() == acc.numel()):
        return None
    # the constants as PyTorch's fused kernel forms them: in double, then rounded to float32
    step_size = lr / (1 - b1**step)
    root_c2 = math.sqrt(1 - b2**step)
    l2 = 0.0 if decoupled else wd
    decay = 1 - lr * wd if decoupled and wd != 0 else 1.0
    return lib.ffq_adam_i32(p.data_ptr(), m.data_ptr(), v.data_ptr(), acc.data_ptr(), p.numel(),
                            g_scale, 1 - b1, b2, 1 - b2, -step_size, root_c2, eps, l2, decay,
                            amax)
