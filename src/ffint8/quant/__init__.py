"""INT8 numerics: symmetric quantisation, stochastic rounding, exact int8 GEMM."""

from ffint8.quant.gemm import KERNELS, MAX_EXACT_K, int8_mm, int8_mm_scaled, resolve_kernel
from ffint8.quant.quantize import QMAX, QTensor, absmax_scale, dequantize, quantize

__all__ = [
    "KERNELS", "MAX_EXACT_K", "QMAX", "QTensor", "absmax_scale", "dequantize", "int8_mm",
    "int8_mm_scaled", "quantize", "resolve_kernel",
]
