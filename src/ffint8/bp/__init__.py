"""Backprop baselines: bp-fp32, bp-int8 (naive), bp-ui8 (Zhu et al. 2020), bp-gdai8 (approximation).

    clip.py     pure functions: clipped quantisation, cosine distance, clip search, lr factor
    grad.py     per-layer gradient quantisers (one per int8 algorithm) and their state
    linear.py   Int8Layer (one quantised layer) and the int8 linear autograd Function (forward and
                both backward GEMMs in int8)
    conv.py     the int8 convolution autograd Function, the CNNs' layers
    trainer.py  BPTrainer, with FFTrainer's interface
See docs/baselines.md.
"""

from ffint8.bp.config import BP_ALGOS, BPConfig
from ffint8.bp.conv import Int8ConvFunction
from ffint8.bp.linear import Int8Layer, Int8LinearFunction, int8_linear_inference
from ffint8.bp.trainer import BPTrainer

__all__ = ["BP_ALGOS", "BPConfig", "BPTrainer", "Int8ConvFunction", "Int8Layer",
           "Int8LinearFunction", "int8_linear_inference"]
