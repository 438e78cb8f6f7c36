"""INT8 numerics: symmetric quantisation, stochastic rounding, exact int8 GEMM and convolution."""

from ffint8.quant.conv import (
    CONV_KERNELS,
    ConvSpec,
    int8_conv2d,
    int8_conv2d_input,
    int8_conv2d_input_scaled,
    int8_conv2d_scaled,
    int8_conv2d_weight,
    int8_conv2d_weight_scaled,
    resolve_conv_kernel,
)
from ffint8.quant.gemm import KERNELS, MAX_EXACT_K, int8_mm, int8_mm_scaled, resolve_kernel
from ffint8.quant.quantize import QMAX, QTensor, absmax_scale, dequantize, quantize

__all__ = [
    "CONV_KERNELS", "ConvSpec", "int8_conv2d", "int8_conv2d_input", "int8_conv2d_input_scaled",
    "int8_conv2d_scaled", "int8_conv2d_weight", "int8_conv2d_weight_scaled", "resolve_conv_kernel",
    "KERNELS", "MAX_EXACT_K", "QMAX", "QTensor", "absmax_scale", "dequantize", "int8_mm",
    "int8_mm_scaled", "quantize", "resolve_kernel",
]
