"""int8 x int8 -> int32 matrix multiply with exact integer accumulation, and its kernel choice.

Kernels (all exact; they differ only in speed):
- "int_mm": torch._int_mm, a real integer kernel (oneDNN VNNI/AMX on x86 CPUs that have them,
  cuBLASLt IMMA on CUDA). On x86 CPUs without VNNI, PyTorch's CPU path is a slow scalar loop
  (measured 20-30x slower than float32 on an AVX2-only EPYC), so "auto" does not pick it there.
- "vnni": this project's C kernel (ffint8.quant.fastsr.int8_mm): the AVX-512 VNNI rows (AMX
  tiles where they run) that also form the factored weight gradients, on one thread. As exact
  and as fast as int_mm on one thread for the MLP's GEMMs (AMD EPYC, session 20), without
  bringing oneDNN's int8 GEMM code into the process (3.7 MB less resident library code there,
  docs/measurement.md). Only where the C kernel was built with VNNI; "auto" picks it there when
  PyTorch runs on one thread, and int_mm on more (oneDNN's GEMM uses them).
- "float-exact": the int8 values in float32 through the float GEMM, in K-chunks of at most
  1024 terms, so every partial sum is an integer below 2^24 and therefore exact; chunks are summed
  in int32. The integer result is bit-identical to int_mm; it is the fallback for CPUs with no
  integer dot-product unit, and is reported as such, never as an int8 kernel.
- "reference": int64 matmul; slow, for tests and odd devices.

Reductions longer than MAX_EXACT_K (131,071 terms, where K * 128^2 would pass 2^31 - 1) are split
and summed in int64, so the result is int64 there.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

Kernel = Literal["auto", "int_mm", "vnni", "float-exact", "reference"]
KERNELS = ("auto", "int_mm", "vnni", "float-exact", "reference")
# Bounds for any int8 operand, -128 included (our quantiser stays in [-127, 127]).
MAX_EXACT_K = (2**31 - 1) // (128 * 128)  # 131,071 terms always fit in int32
FLOAT_EXACT_K = 2**24 // (128 * 128)  # 1,024 terms keep every float32 partial sum exact


@functools.lru_cache(maxsize=1)
def cpu_has_int8_dot() -> bool:
    """True if this CPU has an integer dot-product unit that oneDNN uses (VNNI, AMX, Arm dotprod)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def vnni_available(device: torch.device | str = "cpu") -> bool:
    """True where the "vnni" kernel runs: a CPU device and a C kernel built with AVX-512 VNNI."""
    return torch.device(device).type == "cpu" and _vnni_built()


@functools.lru_cache(maxsize=1)
def _vnni_built() -> bool:
    from ffint8.quant import fastsr

    return fastsr.vnni_rows()


def resolve_kernel(kernel: Kernel, device: torch.device | str = "cpu", vnni: bool = True) -> str:
    """The concrete kernel "auto" means on this device; other names are returned unchanged.

    "auto" on a CPU: vnni where it runs and PyTorch computes on one thread (oneDNN's int_mm
    would use more), else int_mm where the CPU has an int8 dot-product unit, else float-exact.
    vnni=False leaves vnni out of that choice (the int8 convolutions' own GEMMs, whose shapes
    oneDNN takes as they lie)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown int8 kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    if kernel == "vnni" and not vnni_available(device):
        raise ValueError("int8 kernel 'vnni' runs only on a CPU whose C kernel is built with "
                         "AVX-512 VNNI, which this device lacks; choose auto or int_mm")
    if kernel != "auto":
        return kernel
    if torch.device(device).type == "cuda":
        return "int_mm"
    if vnni and torch.get_num_threads() == 1 and vnni_available(device):
        return "vnni"
    return "int_mm" if cpu_has_int8_dot() else "float-exact"


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """t itself, or a row-major copy where a size-1 dim has another stride than a fresh tensor's.

    torch._int_mm on the CPU (2.13, oneDNN) reads layout from strides, even a size-1 dim's: a
    (1, n) view with strides (1, 1), as transposing an (n, 1) matrix gives, passes is_contiguous()
    and returns wrong sums. A probe of 2240 shapes and layouts on a Xeon with AMX found 368 wrong,
    each with a size-1 dim so laid out, and none without one, transposed views included
    (tests/quant/test_gemm.py)."""
    if 1 in t.shape and t.stride() != (t.shape[1], 1):
        return t.clone(memory_format=torch.contiguous_format)
    return t


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch._int_mm with the shape rules of its CUDA kernel met by zero padding (exact)."""
    a, b = _row_major(a), _row_major(b)
    m, k = a.shape
    n = b.shape[1]
    if a.device.type == "cuda":
        # cuBLASLt IMMA wants m > 16 and k, n multiples of 8.
        pm, pk, pn = max(17 - m, 0), (-k) % 8, (-n) % 8
        if pm or pk or pn:
            a = torch.nn.functional.pad(a, (0, pk, 0, pm))
            b = torch.nn.functional.pad(b, (0, pn, 0, pk))
            return torch._int_mm(a, b)[:m, :n]
    return torch._int_mm(a, b)


def _vnni(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    from ffint8.quant import fastsr

    res = fastsr.int8_mm(a, b, out)
    if res is None:  # resolve_kernel refuses "vnni" where it cannot run
        raise RuntimeError("int8 kernel 'vnni': the C kernel has no VNNI loop on this machine")
    return res


def _float_exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    k = a.shape[1]
    if k <= FLOAT_EXACT_K:
        return torch.mm(a.float(), b.float()).to(torch.int32)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32, device=a.device)
    for s in range(0, k, FLOAT_EXACT_K):
        out += torch.mm(a[:, s : s + FLOAT_EXACT_K].float(), b[s : s + FLOAT_EXACT_K].float()).to(
            torch.int32
        )
    return out


def _reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a.long(), b.long()).to(torch.int32)


_IMPL = {"int_mm": _int_mm, "vnni": _vnni, "float-exact": _float_exact, "reference": _reference}


def _check_operands(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_mm takes int8 operands, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_mm shapes do not chain: {tuple(a.shape)} @ {tuple(b.shape)}")


def int8_mm(a: torch.Tensor, b: torch.Tensor, kernel: Kernel = "auto",
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact a @ b for int8 a (M, K) and b (K, N).

    Returns (M, N) int32, or int64 when K > MAX_EXACT_K (split so no int32 sum can overflow).
    out: a contiguous int32 (M, N) tensor to hold the result (K <= MAX_EXACT_K), returned; the
    CPU's int_mm writes into it directly, the other kernels copy their result there.
    """
    _check_operands(a, b)
    name = resolve_kernel(kernel, a.device)
    impl = _IMPL[name]
    k = a.shape[1]
    if out is not None:
        if (out.dtype != torch.int32 or tuple(out.shape) != (a.shape[0], b.shape[1])
                or not out.is_contiguous() or out.device != a.device or k > MAX_EXACT_K):
            raise ValueError(f"int8_mm: out must be a contiguous int32 {a.shape[0]} x "
                             f"{b.shape[1]} tensor on {a.device} (and K <= {MAX_EXACT_K}), got "
                             f"{out.dtype} {tuple(out.shape)}")
        if name == "int_mm" and a.device.type == "cpu":
            return torch._int_mm(_row_major(a), _row_major(b), out=out)
        if name == "vnni":
            return _vnni(a, b, out)
        return out.copy_(impl(a, b))
    if k <= MAX_EXACT_K:
        return impl(a, b)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64, device=a.device)
    for s in range(0, k, MAX_EXACT_K):
        out += impl(a[:, s : s + MAX_EXACT_K], b[s : s + MAX_EXACT_K]).long()
    return out


def int8_mm_scaled(
    a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
    kernel: Kernel = "auto",
) -> torch.Tensor:
    """(a * a_scale) @ (b * b_scale) as float32, from the exact integer product.

    Scales are 0-d (per tensor), or (M, 1) for a and (1, N) for b (per row / per column).
    """
    _check_operands(a, b)
    if resolve_kernel(kernel, a.device) == "float-exact" and a.shape[1] <= FLOAT_EXACT_K:
        # The float32 product already holds the exact integer accumulator: no int32 round trip.
        return torch.mm(a.float(), b.float()).mul_(a_scale * b_scale)
    acc = int8_mm(a, b, kernel)  # (M, N) int32 accumulator
    return acc.float().mul_(a_scale * b_scale)
