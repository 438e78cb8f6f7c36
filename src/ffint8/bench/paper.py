"""The paper's Table V, for laying our figures beside it.

Source: "FF-INT8: Efficient Forward-Forward DNN Training on Edge Devices with INT8 Precision"
(Ma, Panda, Reda; DAC 2025), Table V: test accuracy, training time, energy and peak memory on
a Jetson Orin Nano; the MLP on MNIST, the CNNs on CIFAR-10 (as restated in PAPER.md section 4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PAPER = ('"FF-INT8: Efficient Forward-Forward DNN Training on Edge Devices with INT8 Precision" '
         "(DAC 2025), Table V")
PAPER_SETUP = "Jetson Orin Nano; MLP on MNIST, CNNs on CIFAR-10"


@dataclass(frozen=True)
class PaperFigures:
    accuracy: float  # test accuracy, %
    seconds: float  # training time
    joules: float  # training energy
    memory_mb: float  # peak memory


# (model, algo) -> figures; model names as the paper writes them, matched by canonical_model.
TABLE_V: dict[tuple[str, str], PaperFigures] = {
    ("mlp", "bp-fp32"): PaperFigures(94.5, 482, 2315, 248),
    ("mlp", "bp-gdai8"): PaperFigures(93.8, 345, 1345, 183),
    ("mlp", "ff-int8"): PaperFigures(94.3, 313, 1097, 141),
    ("mobilenetv2", "bp-fp32"): PaperFigures(91.5, 2371, 11593, 650),
    ("mobilenetv2", "bp-gdai8"): PaperFigures(90.9, 1791, 6528, 579),
    ("mobilenetv2", "ff-int8"): PaperFigures(91.1, 1704, 6174, 437),
    ("efficientnetb0", "bp-fp32"): PaperFigures(89.4, 2693, 13356, 861),
    ("efficientnetb0", "bp-gdai8"): PaperFigures(88.9, 2177, 8590, 692),
    ("efficientnetb0", "ff-int8"): PaperFigures(88.6, 2130, 8094, 505),
    ("resnet18", "bp-fp32"): PaperFigures(93.5, 3853, 18764, 1096),
    ("resnet18", "bp-gdai8"): PaperFigures(92.9, 2752, 10291, 894),
    ("resnet18", "ff-int8"): PaperFigures(93.1, 2698, 9927, 682),
}
PAPER_ALGOS = ("bp-fp32", "bp-gdai8", "ff-int8")  # the paper's column order
PAPER_MODELS = ("mlp", "mobilenetv2", "efficientnetb0", "resnet18")
DISPLAY = {"mlp": "MLP", "mobilenetv2": "MobileNet-v2", "efficientnetb0": "EfficientNet-B0",
           "resnet18": "ResNet-18"}


def canonical_model(name: str) -> str:
    """'MobileNet-v2', 'mobilenet_v2' -> 'mobilenetv2': how a registry name meets the paper's."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


# Data sets on which our figures are laid beside the paper's: its own, and Fashion-MNIST for
# the MLP (this project's default, the same shape as MNIST; harder, so lower accuracy).
COMPARABLE_DATASETS = {"mlp": ("mnist", "fashion-mnist"), "mobilenetv2": ("cifar10",),
                       "efficientnetb0": ("cifar10",), "resnet18": ("cifar10",)}


def paper_figures(model: str, algo: str, dataset: str | None = None) -> PaperFigures | None:
    """The paper's figures for model and algo; None when it has none, or when `dataset` is
    given and is not one to compare with (see COMPARABLE_DATASETS)."""
    key = canonical_model(model)
    if dataset is not None and dataset not in COMPARABLE_DATASETS.get(key, ()):
        return None
    return TABLE_V.get((key, algo))
