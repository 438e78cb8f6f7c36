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
import threading
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


def _compile(out: Path, extra: tuple[str, ...] = ()) -> bool:
    """Builds csrc/fastquant.c into out with the first flag set the compiler takes, and extra
    (a test builds with -DFFQ_PORTABLE, the code without its AVX-512 loops)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        for flags in _flag_sets():
            res = subprocess.run([cc, *flags, *extra, str(SOURCE), "-o", str(tmp_out)],
                                 capture_output=True)
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
    return declare(lib)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """lib (a build of csrc/fastquant.c) with its functions' C signatures set, for ctypes."""
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
    lib.ffq_adam8.restype = ctypes.c_float
    lib.ffq_adam8.argtypes = [ptr, ptr, ptr, f, i64, ptr, ptr, ptr, ptr, i64,
                              f, f, f, f, f, f, f, ctypes.c_int, u32, u32, u32, u32, i64, f]
    lib.ffq_factored_scratch.restype = i64
    lib.ffq_factored_scratch.argtypes = [i64, i64, i64, i64]
    lib.ffq_use_amx.restype = ctypes.c_int
    lib.ffq_use_amx.argtypes = [ctypes.c_int]
    lib.ffq_adam_i32_factored.restype = ctypes.c_float
    lib.ffq_adam_i32_factored.argtypes = [ptr, ptr, ptr, i64, i64, ptr, ptr, i64,
                                          f, f, f, f, f, f, f, f, f, i64, ptr]
    lib.ffq_adam8_factored.restype = ctypes.c_float
    lib.ffq_adam8_factored.argtypes = [ptr, i64, i64, ptr, ptr, i64, f, ptr, ptr, ptr, ptr, i64,
                                       f, f, f, f, f, f, f, ctypes.c_int, u32, u32, u32, u32,
                                       i64, ptr]
    lib.ffq_adam_i32.restype = ctypes.c_float
    lib.ffq_adam_i32.argtypes = [ptr, ptr, ptr, ptr, i64, f, f, f, f, f, f, f, f, f, f]
    lib.ffq_adam_f32.restype = ctypes.c_float
    lib.ffq_adam_f32.argtypes = [ptr, ptr, ptr, ptr, i64, f, f, f, f, f, f, f, f, f]
    lib.ffq_transpose_u8.restype = None
    lib.ffq_transpose_u8.argtypes = [ptr, ptr, i64, i64, i64]
    lib.ffq_dw_weight_i8.restype = ctypes.c_int
    lib.ffq_dw_weight_i8.argtypes = [ptr, ptr, ptr] + [i64] * 12
    lib.ffq_row_norms.restype = ctypes.c_float
    lib.ffq_row_norms.argtypes = [ptr, i64, i64, ctypes.c_int, f, ptr]
    lib.ffq_quantize_rows_div_sr.restype = None
    lib.ffq_quantize_rows_div_sr.argtypes = [ptr, ptr, ptr, i64, i64, f, f, u32, u32]
    lib.ffq_dense_epilogue.restype = None
    lib.ffq_dense_epilogue.argtypes = [ptr, i64, i64, f, f, ptr, ptr, ptr, ptr]
    lib.ffq_ff_unit_grad.restype = ctypes.c_float
    lib.ffq_ff_unit_grad.argtypes = [ptr, i64, i64, ptr, ptr, ptr, f, ptr, ptr, ptr, ptr]
    lib.ffq_input_grad.restype = None
    lib.ffq_input_grad.argtypes = [ptr, i64, i64, f, f, ptr, ptr, f, f, ptr]
    lib.ffq_bn_act_forward.restype = ctypes.c_int
    lib.ffq_bn_act_forward.argtypes = [ptr, ptr, i64, i64, i64, ptr, ptr, f, ptr, ptr, ptr,
                                       ctypes.c_int, ctypes.c_int]
    lib.ffq_bn_act_backward.restype = ctypes.c_int
    lib.ffq_bn_act_backward.argtypes = [ptr, ptr, ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr,
                                        ptr, ctypes.c_int, ctypes.c_int]
    lib.ffq_int8_mm_scratch.restype = i64
    lib.ffq_int8_mm_scratch.argtypes = [i64, i64, i64, ctypes.c_int, i64]
    lib.ffq_int8_mm.restype = ctypes.c_int
    lib.ffq_int8_mm.argtypes = [ptr, i64, ptr, i64, ctypes.c_int, i64, i64, i64, ptr, ptr]
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


def quantize_stochastic_with_absmax(x: torch.Tensor, amax: float, seed: int
                                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """quantize_per_tensor(x, seed) for an x whose max|x| (as ffq_absmax gives it) the caller
    already has, as ff_unit_grad returns it."""
    lib = _usable(x)
    return None if lib is None else _quantize_with_absmax(lib, x, amax, seed)


def _scale_of(amax: float) -> float:
    """The per-tensor scale for max|x| = amax: amax / 127, 1 for an all-zero x, NaN for NaN."""
    if amax == 0:
        return 1.0
    # NaN stays NaN; the floor keeps 1 / scale finite in float32 (as absmax_scale does)
    return max(amax / 127.0, _TINY) if amax == amax else amax


def _quantize_with_absmax(lib: ctypes.CDLL, x: torch.Tensor, amax: float,
                          seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.numel()
    scale = _scale_of(amax)
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


def adam8_step(p: torch.Tensor, g: torch.Tensor, state: dict, block: int, b1: float,
               b2: float, step_size: float, root_c2: float, eps: float, wd: float,
               keys: tuple[int, int, int, int] | None, *, g_scale: float | None = None) -> bool:
    """ffint8.train.adam8's update of one parameter in one fused pass (state: its "m", "m_scale",
    "r", "r_scale"); keys: four 32-bit keys of the stochastic rounding, None to round to
    nearest. False (nothing done) where the C kernel is unavailable or does not fit.
    g: p's float32 gradient; or, with g_scale, an int32 accumulator whose values times g_scale
    are the gradient (train/factored.py)."""
    step = adam8_bind(p, state, block, b1, b2, step_size, root_c2, eps, wd, keys)
    if step is None or not _adam8_gradient_fits(g, p.numel(), g_scale is not None):
        return False
    step(0, g, g_scale)
    return True


def _adam8_gradient_fits(g: torch.Tensor, n: int, exact: bool) -> bool:
    if exact:
        return (g.device.type == "cpu" and g.dtype == torch.int32 and g.is_contiguous()
                and g.numel() == n)
    return _usable(g) is not None and g.numel() == n


def _adam8_state(state: dict) -> tuple[torch.Tensor, ...]:
    return state["m"], state["m_scale"], state["r"], state["r_scale"]


def _adam8_state_fits(p: torch.Tensor, state: dict, block: int) -> ctypes.CDLL | None:
    """The C library where the adam8 kernels can step p with this state: uint8 codes padded to
    whole blocks and a float32 scale a block, contiguous on the CPU; None otherwise."""
    lib = _usable(p)
    blocks = -(-p.numel() // block)
    sizes = (blocks * block, blocks) * 2  # codes (padded to whole blocks) and scales
    types = (torch.uint8, torch.float32) * 2
    if (lib is None or block > MAX_ADAM8_BLOCK
            or not all(t.is_contiguous() and t.device.type == "cpu" and t.dtype == d
                       and t.numel() >= k for t, d, k in zip(_adam8_state(state), types, sizes))):
        return None
    return lib


def adam8_bind(p: torch.Tensor, state: dict, block: int, b1: float, b2: float,
               step_size: float, root_c2: float, eps: float, wd: float,
               keys: tuple[int, int, int, int] | None):
    """adam8_step's kernel bound to one parameter, its state and one step's constants, checked
    once: step(start, g, g_scale=None, amax=0.0) then updates the slice of p's values
    start:start + n, n = g.numel() (start a multiple of block; the slice ends on a block or at
    p's end), rounding as one call over all of p would, and returns max(amax, max|slice| after
    the step), NaN once a value is NaN or Inf (so that a loop over slices can chain it). For a
    loop over row blocks (Adam8.step_factored), where the checks and the arguments' conversion
    cost more than a block's update (40 us a call, session 14). None where the kernel is
    unavailable or p's state does not fit; step raises ValueError for a slice or gradient that
    does not."""
    lib = _adam8_state_fits(p, state, block)
    if lib is None:
        return None
    total = p.numel()
    pp, mp, msp, rp, rsp = (t.data_ptr() for t in (p, *_adam8_state(state)))
    # scalars rounded to float32 (by ctypes) as PyTorch rounds a Python float for a float32 tensor
    tail = (block, 1 - b1, b2, 1 - b2, step_size, root_c2, eps, wd, int(keys is not None),
            *(keys or (0, 0, 0, 0)))
    kernel = lib.ffq_adam8

    def step(start: int, g: torch.Tensor, g_scale: float | None = None,
             amax: float = 0.0) -> float:
        n = g.numel()
        end = start + n
        exact = g_scale is not None
        if (start % block or start < 0 or end > total or (end % block and end != total)
                or not _adam8_gradient_fits(g, n, exact)):
            raise ValueError(f"adam8: values {start}:{end} of a {total}-value parameter (blocks "
                             f"of {block}) or their {g.dtype} gradient do not fit the kernel")
        b0 = start // block
        return kernel(pp + 4 * start, None if exact else g.data_ptr(), g.data_ptr() if exact else None,
               g_scale if exact else 1.0, n, mp + start, msp + 4 * b0, rp + start, rsp + 4 * b0,
               *tail, start, amax)

    return step


def vnni_rows() -> bool:
    """True where the C kernel forms a factored weight gradient's rows itself (built with
    AVX-512 VNNI): adam_int32_factored and adam8_factored run."""
    lib = _library()
    return lib is not None and lib.ffq_factored_scratch(1, 1, 1, 1) > 0


VNNI_MM_MAX_K = (2**31 - 1) // (128 * 128)  # gemm.MAX_EXACT_K: the true sums fit in int32


def _vnni_layout(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int] | None:
    """(b's row stride, nt) where ffq_int8_mm reads the int8 CPU operands a (M, K), b (K, N) as
    they lie: a's rows contiguous, b row-major (nt 0) or the transpose of a row-major (N, K)
    matrix (nt 1); None where they need a copy first."""
    def rows(t: torch.Tensor) -> bool:  # unit stride along dim 1 and rows that do not overlap
        return t.stride(1) == 1 and t.stride(0) >= t.shape[1]

    if rows(b):
        return b.stride(0), 0
    if b.stride(0) == 1 and b.stride(1) >= b.shape[0]:
        return b.stride(1), 1
    return None


def int8_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None
            ) -> torch.Tensor | None:
    """The exact int32 product a @ b of int8 CPU matrices a (M, K) and b (K, N), K at most
    VNNI_MM_MAX_K, by the C kernel's VNNI rows (one thread); into out (a contiguous int32 (M, N)
    tensor) where given. None where this build has no VNNI loop (vnni_rows() is False): its
    scratch size is then 0, which is the check made here, so no second C call is spent on it."""
    lib = _library()
    if lib is None:
        return None
    (m, k), n = a.shape, b.shape[1]
    if k > VNNI_MM_MAX_K:
        raise ValueError(f"int8_mm: K = {k} is past {VNNI_MM_MAX_K}, where int32 sums can overflow")
    if a.stride(1) != 1 or a.stride(0) < k:
        a = a.contiguous()
    layout = _vnni_layout(a, b)
    if layout is None:
        b = b.contiguous()
        layout = b.stride(0), 0
    lda = max(a.stride(0), k)
    ldb, nt = layout
    nbytes = lib.ffq_int8_mm_scratch(m, k, n, nt, ldb if nt else lda)
    if nbytes == 0:  # no VNNI loop in this build
        return None
    if out is None:
        out = torch.empty(m, n, dtype=torch.int32)
    if m == 0 or n == 0:
        return out
    scratch = _workspace(nbytes)
    lib.ffq_int8_mm(a.data_ptr(), lda, b.data_ptr(), ldb, nt, m, k, n, out.data_ptr(),
                    scratch.data_ptr())
    return out


_WORKSPACE = threading.local()


def _workspace(nbytes: int) -> torch.Tensor:
    """This thread's scratch of at least nbytes, kept between calls (grown, never shrunk), so
    that a training step does not allocate and free a megabyte per GEMM."""
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.numel() < nbytes:
        _WORKSPACE.buf = buf = None  # the old one goes before the new one comes
        buf = _WORKSPACE.buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf


def amx_rows(enable: bool | None = None) -> bool:
    """True where the C kernel forms those rows by AMX tile multiplies (a CPU with AMX-INT8, a
    build that targets it, and Linux granting the tile state), else by VNNI dot products: the
    same integers either way. enable: switch AMX off (False) or back on (True) for this
    process, as the tests do to compare the two; None only asks."""
    lib = _library()
    if lib is None:
        return False
    return bool(lib.ffq_use_amx(-1 if enable is None else int(enable)))


def factored_scratch(p: torch.Tensor, k: int, rows: int) -> int:
    """Bytes of scratch adam8_factored or adam_int32_factored needs to step the 2-D weight p from
    k factor rows, `rows` rows at a time; 0 where they cannot (no C kernel, or one built without
    AVX-512 VNNI)."""
    lib = _usable(p)
    if lib is None or p.dim() != 2:
        return 0
    return lib.ffq_factored_scratch(p.shape[0], p.shape[1], k, rows)


def _factors_fit(p: torch.Tensor, g_q: torch.Tensor, a_q: torch.Tensor, rows: int,
                 scratch: torch.Tensor) -> bool:
    """The factored kernels' rules: int8 contiguous factors (K, N) and (K, D) of the (N, D) p,
    rows >= 1, a uint8 scratch of factored_scratch bytes (which is 0 where they cannot run)."""
    if p.dim() != 2 or g_q.dim() != 2 or rows < 1:
        return False
    (n, d), k = p.shape, g_q.shape[0]
    need = factored_scratch(p, k, rows)
    return (need > 0 and g_q.shape == (k, n) and a_q.shape == (k, d)
            and all(t.device.type == "cpu" and t.dtype == torch.int8 and t.is_contiguous()
                    for t in (g_q, a_q))
            and scratch.dtype == torch.uint8 and scratch.is_contiguous()
            and scratch.numel() >= need)


def adam8_factored(p: torch.Tensor, g_q: torch.Tensor, a_q: torch.Tensor, g_scale: float,
                   state: dict, block: int, b1: float, b2: float, step_size: float,
                   root_c2: float, eps: float, wd: float, keys: tuple[int, int, int, int] | None,
                   rows: int, scratch: torch.Tensor) -> float | None:
    """adam8_step for the (N, D) weight p whose gradient is g_scale * g_q^T a_q (g_q (K, N),
    a_q (K, D) int8), its int32 rows formed `rows` at a time in scratch (a uint8 tensor of
    factored_scratch bytes) by the C kernel's VNNI loop and stepped at once: no
    accumulator tensor, no int8 GEMM call per row block. rows: a multiple of block / gcd(D,
    block). Returns max|p| after the step (NaN for a value not finite); None (nothing done)
    where the kernel cannot: the caller then forms the rows with int8_mm, the same update."""
    lib = _adam8_state_fits(p, state, block)
    if (lib is None or not _factors_fit(p, g_q, a_q, rows, scratch)
            or (rows * p.shape[1]) % block):
        return None
    (n, d), k = p.shape, g_q.shape[0]
    return lib.ffq_adam8_factored(
        p.data_ptr(), n, d, g_q.data_ptr(), a_q.data_ptr(), k, g_scale,
        *(t.data_ptr() for t in _adam8_state(state)), block, 1 - b1, b2, 1 - b2, step_size, root_c2, eps,
        wd, int(keys is not None), *(keys or (0, 0, 0, 0)), rows, scratch.data_ptr())


def _adam_constants(lr: float, b1: float, b2: float, step: float, wd: float,
                    decoupled: bool) -> tuple[float, ...]:
    """(w1, b2, w2, neg_step, root_c2) and (l2, decay) as PyTorch's fused kernel forms them: in
    double, then rounded to float32 (by ctypes)."""
    step_size = lr / (1 - b1**step)
    root_c2 = math.sqrt(1 - b2**step)
    l2 = 0.0 if decoupled else wd
    decay = 1 - lr * wd if decoupled and wd != 0 else 1.0
    return (1 - b1, b2, 1 - b2, -step_size, root_c2), (l2, decay)


def _adam_fits(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
               dtype: torch.dtype) -> ctypes.CDLL | None:
    lib = _usable(p)
    if (lib is None or _usable(m) is None or _usable(v) is None or g.dtype != dtype
            or g.device.type != "cpu" or not g.is_contiguous()
            or not p.numel() == m.numel() == v.numel() == g.numel()):
        return None
    return lib


def adam_int32(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, acc: torch.Tensor,
               g_scale: float, lr: float, b1: float, b2: float, step: float, eps: float,
               wd: float, decoupled: bool, amax: float = 0.0) -> float | None:
    """One torch.optim.Adam step (decoupled: AdamW's weight decay) of the float32 parameters p
    with moments m, v and gradient acc * g_scale, acc an int32 accumulator of p's size, in one
    pass (csrc/fastquant.c, ffq_adam_i32). step: the step count after this step. Returns
    max(amax, max|p| after the step), NaN once a value is NaN or Inf; None (nothing done) where
    the C kernel is unavailable or a tensor does not fit."""
    lib = _adam_fits(p, m, v, acc, torch.int32)
    if lib is None:
        return None
    moments, (l2, decay) = _adam_constants(lr, b1, b2, step, wd, decoupled)
    return lib.ffq_adam_i32(p.data_ptr(), m.data_ptr(), v.data_ptr(), acc.data_ptr(), p.numel(),
                            g_scale, *moments, eps, l2, decay, amax)


def adam_int32_factored(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g_q: torch.Tensor,
                        a_q: torch.Tensor, g_scale: float, lr: float, b1: float, b2: float,
                        step: float, eps: float, wd: float, decoupled: bool, rows: int,
                        scratch: torch.Tensor) -> float | None:
    """adam_int32 for the (N, D) weight p whose gradient is g_scale * g_q^T a_q (g_q (K, N),
    a_q (K, D) int8), its int32 rows formed `rows` at a time in scratch (factored_scratch bytes)
    by the C kernel's VNNI loop: no accumulator tensor, no int8 GEMM call. rows * D must be a
    multiple of 64, so that the update is one call's over all of p. Returns max|p| after the
    step (NaN for a value not finite); None (nothing done) where the kernel cannot."""
    lib = _adam_fits(p, m, v, p, torch.float32)
    if (lib is None or not _factors_fit(p, g_q, a_q, rows, scratch)
            or (rows * p.shape[1]) % 64):
        return None
    moments, (l2, decay) = _adam_constants(lr, b1, b2, step, wd, decoupled)
    (n, d), k = p.shape, g_q.shape[0]
    return lib.ffq_adam_i32_factored(p.data_ptr(), m.data_ptr(), v.data_ptr(), n, d,
                                     g_q.data_ptr(), a_q.data_ptr(), k, g_scale, *moments, eps,
                                     l2, decay, rows, scratch.data_ptr())


def adam_float(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lr: float,
               b1: float, b2: float, step: float, eps: float, wd: float, decoupled: bool
               ) -> float | None:
    """adam_int32 for a float32 gradient g of p's size (ffq_adam_f32): the same step, the same
    operations. Returns max|p| after the step, or None (nothing done) where it does not fit."""
    lib = _adam_fits(p, m, v, g, torch.float32)
    if lib is None:
        return None
    moments, (l2, decay) = _adam_constants(lr, b1, b2, step, wd, decoupled)
    return lib.ffq_adam_f32(p.data_ptr(), m.data_ptr(), v.data_ptr(), g.data_ptr(), p.numel(),
                            *moments, eps, l2, decay, 0.0)


# ---- the FF-INT8 dense unit's step, fused (csrc/fastquant.c; ffint8.nn.dense, ffint8.train.ff).
# Each returns None where the C kernel is unavailable or an operand does not fit; the caller then
# takes the PyTorch path, which computes the same values (row and column sums in another order).

def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _all_usable(*xs: torch.Tensor | None) -> ctypes.CDLL | None:
    libs = [_usable(x) for x in xs if x is not None]
    return None if not libs or any(lib is None for lib in libs) else libs[0]


def normalize_quantize(h: torch.Tensor, l2: bool, eps: float, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """ffint8.nn.functional.normalize of h (B, D), then quantize_per_tensor(a, seed) of the
    result, without forming a: (r (B, 1), q (B, D) int8, scale 0-d float32)."""
    lib = _usable(h)
    if lib is None or h.dim() != 2:
        return None
    rows, cols = h.shape
    r = torch.empty(rows, 1)
    amax = lib.ffq_row_norms(h.data_ptr(), rows, cols, int(l2), eps, r.data_ptr()) if rows else 0.0
    scale = _scale_of(amax)
    q = torch.empty(rows, cols, dtype=torch.int8)
    if scale != scale:
        q.zero_()
    elif h.numel():
        key = mix64(seed)
        lib.ffq_quantize_rows_div_sr(h.data_ptr(), r.data_ptr(), q.data_ptr(), rows, cols, eps,
                                     1.0 / scale, key & _MASK32, key >> 32)
    return r, q, torch.tensor(scale, dtype=torch.float32)


def dense_epilogue(acc: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """y = relu(acc * (a_scale * w_scale) + bias) for the int32 accumulator acc (B, N) and 0-d
    scales, with each row's sum of y^2 (B,) and each column's sum of y (N,)."""
    lib = _usable(bias)
    if (lib is None or acc.dtype != torch.int32 or acc.device.type != "cpu"
            or not acc.is_contiguous() or acc.dim() != 2 or bias.shape != acc.shape[1:]
            or a_scale.dim() != 0 or w_scale.dim() != 0):
        return None
    rows, cols = acc.shape
    y, sumsq, colsum = torch.empty(rows, cols), torch.empty(rows), torch.empty(cols)
    lib.ffq_dense_epilogue(acc.data_ptr(), rows, cols, float(a_scale), float(w_scale),
                           bias.data_ptr(), y.data_ptr(), sumsq.data_ptr(), colsum.data_ptr())
    return y, sumsq, colsum


def ff_unit_grad(y: torch.Tensor, crow: torch.Tensor, pcol: torch.Tensor | None,
                 sig: torch.Tensor | None, lam: float, down: bool):
    """A dense unit's dL/dz from its ReLU output y (B, N): gz = crow[:, None] * y + mask * pcol
    + lam * mask * sig, mask = y > 0 (pcol (N,) and sig (B, N) optional), and, if down, what
    passes on to the unit below, mask * sig + (gz's first two terms). Returns (gz, max|gz|,
    down or None, its max|.|, the column sums of gz (N,)), or None."""
    lib = _all_usable(y, crow, pcol, sig)
    if (lib is None or y.dim() != 2 or crow.shape != y.shape[:1]
            or (pcol is not None and pcol.shape != y.shape[1:])
            or (sig is not None and sig.shape != y.shape)):
        return None
    rows, cols = y.shape
    gz, bias = torch.empty(rows, cols), torch.empty(cols)
    out = torch.empty(rows, cols) if down else None
    amax_down = ctypes.c_float(0.0)
    amax = lib.ffq_ff_unit_grad(y.data_ptr(), rows, cols, crow.data_ptr(), _ptr(pcol), _ptr(sig),
                                lam, gz.data_ptr(), _ptr(out), bias.data_ptr(),
                                ctypes.addressof(amax_down))
    return gz, amax, out, amax_down.value, bias


def input_grad(acc: torch.Tensor, s_scale: torch.Tensor, w_scale: torch.Tensor, h: torch.Tensor,
               r: torch.Tensor, m: int, eps: float) -> torch.Tensor | None:
    """ffint8.nn.functional.normalize_backward(acc * (s_scale * w_scale), h, r) for the int32
    accumulator acc (B, D) of dL/da, h (B, D) the unit's input and r (B, 1) its norm; m = D
    for rms, 1 for l2."""
    lib = _all_usable(h, r)
    if (lib is None or acc.dtype != torch.int32 or acc.device.type != "cpu"
            or not acc.is_contiguous() or acc.shape != h.shape or h.dim() != 2
            or r.numel() != h.shape[0] or s_scale.dim() != 0 or w_scale.dim() != 0):
        return None
    out = torch.empty(h.shape)
    lib.ffq_input_grad(acc.data_ptr(), h.shape[0], h.shape[1], float(s_scale), float(w_scale),
                       h.data_ptr(), r.data_ptr(), float(m), eps, out.data_ptr())
    return out


BN_ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}  # ffq_bn_act_forward's act codes
BN_MAX_CHANNELS = 4096  # in csrc/fastquant.c: a channels-last map's limit


def bn_layout(x: torch.Tensor) -> int | None:
    """0 for a contiguous NCHW float32 CPU map, 1 for a channels-last one, None otherwise."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return None
    if x.is_contiguous():
        return 0
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] <= BN_MAX_CHANNELS:
        return 1
    return None


def bn_act_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                   act: str | None) -> tuple[torch.Tensor, ...] | None:
    """Batch norm in training mode then the activation (None, "relu", "relu6"), in two passes
    over the (N, C, H, W) float32 map x, contiguous or channels-last: (y in x's layout, the
    batch's mean, biased variance and 1 / sqrt(var + eps), each (C,)). None where the C kernel
    does not fit (another layout, dtype or device, another activation)."""
    lib, layout = _all_usable(weight, bias), bn_layout(x)
    if (lib is None or layout is None or act not in BN_ACTIVATIONS
            or weight.shape != x.shape[1:2] or bias.shape != x.shape[1:2]):
        return None
    n, c, h, w = x.shape
    y = torch.empty_like(x)  # x's layout
    mean, var, invstd = torch.empty(c), torch.empty(c), torch.empty(c)
    lib.ffq_bn_act_forward(x.data_ptr(), y.data_ptr(), n, c, h * w, weight.data_ptr(),
                           bias.data_ptr(), eps, mean.data_ptr(), var.data_ptr(),
                           invstd.data_ptr(), BN_ACTIVATIONS[act], layout)
    return y, mean, var, invstd


def bn_act_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    mean: torch.Tensor, invstd: torch.Tensor, act: str | None, input_grad: bool
                    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """bn_act_forward's gradients from g = dL/dy (any layout: taken into x's): (dL/dx in x's
    layout, or None unless input_grad; dL/dweight; dL/dbias). x, weight, bias, mean, invstd:
    those the forward took and gave."""
    lib, layout = _all_usable(weight, bias, mean, invstd), bn_layout(x)
    if lib is None or layout is None or g.shape != x.shape or act not in BN_ACTIVATIONS:
        raise ValueError("bn_act_backward: operands that bn_act_forward would not have taken")
    g = g.contiguous(memory_format=torch.channels_last if layout else torch.contiguous_format)
    n, c, h, w = x.shape
    dx = torch.empty_like(x) if input_grad else None
    dw, db = torch.empty(c), torch.empty(c)
    lib.ffq_bn_act_backward(g.data_ptr(), x.data_ptr(), _ptr(dx), n, c, h * w, weight.data_ptr(),
                            bias.data_ptr(), mean.data_ptr(), invstd.data_ptr(), dw.data_ptr(),
                            db.data_ptr(), BN_ACTIVATIONS[act], layout)
    return dx, dw, db
