"""The FF MLP: a stack of FF dense units (784-1000-1000 by default, 1.79 M parameters)."""

from __future__ import annotations

from torch import nn

from ffint8.models.registry import register_model
from ffint8.nn.dense import FFDense


class FFMLP(nn.Module):
    """FF units in order; units[l] takes the previous unit's output (normalised inside)."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (1000, 1000),
                 num_classes: int = 10) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.in_features = in_features
        self.num_classes = num_classes
        self.units = nn.ModuleList(FFDense(a, b) for a, b in zip(sizes[:-1], sizes[1:]))


@register_model("mlp")
def mlp(in_features: int = 784, hidden: tuple[int, ...] = (1000, 1000), num_classes: int = 10,
        **_: object) -> FFMLP:
    return FFMLP(in_features, tuple(hidden), num_classes)
