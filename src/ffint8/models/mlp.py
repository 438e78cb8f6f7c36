"""The MLP: a stack of FF dense units (784-1000-1000 by default, 1.79 M parameters).

The same definition serves backprop: with classifier=True it also holds a linear classifier
head, and forward(x) is the plain network relu(W_l h + b_l) ... -> logits (no normalisation
between layers, as a backprop MLP has none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ffint8.models.registry import register_model
from ffint8.nn.dense import FFDense
from ffint8.train.config import scored_units

# (x (B, D), weight (N, D), bias (N,)) -> (B, N): F.linear or a quantised replacement.
LinearOp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FFMLP(nn.Module):
    """FF units in order; units[l] takes the previous unit's output (normalised inside)."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (1000, 1000),
                 num_classes: int = 10, classifier: bool = False, readout: bool = False) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.in_features = in_features
        self.num_classes = num_classes
        self.units = nn.ModuleList(FFDense(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes) if classifier else None
        # FF softmax readout on the normalised activities of the units it reads (all but the
        # first when there are several, as in Hinton's FF code): trained by its own loss only.
        self.readout_units = scored_units(len(hidden), "skip-first")
        width = sum(hidden[i] for i in self.readout_units)
        self.readout = nn.Linear(width, num_classes) if readout else None

    def linear_layers(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(weight, bias) of every linear map of the backprop network, input to output."""
        layers = [(u.weight, u.bias) for u in self.units]
        if self.head is not None:
            layers.append((self.head.weight, self.head.bias))
        return layers

    def forward(self, x: torch.Tensor, ops: Sequence[LinearOp] | None = None) -> torch.Tensor:
        """Backprop forward: (B, D) images -> (B, C) logits. ops: one linear op per layer
        (default F.linear), so a baseline can swap in its quantised GEMMs layer by layer."""
        if self.head is None:
            raise RuntimeError("this MLP was built without a classifier head (classifier=False)")
        layers = self.linear_layers()
        ops = ops if ops is not None else [F.linear] * len(layers)
        h = x
        for i, ((w, b), op) in enumerate(zip(layers, ops)):
            h = op(h, w, b)
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h


@register_model("mlp")
def mlp(in_features: int = 784, hidden: tuple[int, ...] = (1000, 1000), num_classes: int = 10,
        classifier: bool = False, readout: bool = False, **_: object) -> FFMLP:
    return FFMLP(in_features, tuple(hidden), num_classes, classifier, readout)
