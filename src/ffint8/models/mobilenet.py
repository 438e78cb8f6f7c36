"""MobileNet-v2 as FF units: a 3x3 stem block, 17 inverted-residual blocks and the final 1x1
conv block (320 -> 1280), each one unit (19 in all).

CIFAR-style: the stem has stride 1 and the second stage stride 1 instead of 2 (32x32 inputs end
at 4x4, 28x28 ones at 4x4: 28 -> 14 -> 7 -> 4). With 10 classes and the classifier head:
2.24 M parameters, as the paper's Table II.

`mobilenetv2_s2` keeps the CIFAR stem (stride 1) but gives the second stage the original
network's stride 2: the same blocks and parameters, two units at full resolution instead of four,
28x28 inputs end at 2x2. FF trains it faster and better on Fashion-MNIST: with one-hot labels in
the first pixels, units at full resolution see the label in one corner of their map only, and
the CIFAR variant's first four stay at chance (docs/cnn.md).
"""

from __future__ import annotations

from ffint8.models.registry import register_model
from ffint8.nn.blocks import ConvBlock, ConvNet, InvertedResidual, StemBlock, cnn_input, make_divisible

# (expansion t, channels c, blocks n, stride s of the first block) per stage, as the paper's
# Table 2 of MobileNet-v2, with the CIFAR stride change in the second stage
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


# the original network's stride 2 in the second stage (mobilenetv2_s2)
STAGES_S2 = tuple((t, c, n, 2 if i == 1 else s) for i, (t, c, n, s) in enumerate(STAGES))


def _mobilenetv2(name: str, stages: tuple, in_features: int, num_classes: int, classifier: bool,
                 readout: bool, width: float, label_plane: bool, norm: str,
                 image_shape: tuple[int, int, int] | None) -> ConvNet:
    shape = cnn_input(name, in_features, image_shape, width, readout)
    cin = make_divisible(32 * width)
    units = [StemBlock(shape, cin, num_classes, label_plane, norm, act="relu6")]
    for t, c, n, s in stages:
        cout = make_divisible(c * width)
        for i in range(n):
            units.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, norm=norm))
            cin = cout
    last = make_divisible(1280 * width)
    units.append(ConvBlock(cin, last, 1, norm=norm, act="relu6"))
    return ConvNet(units, last, num_classes, classifier)


@register_model("mobilenetv2")
def mobilenetv2(in_features: int = 784, num_classes: int = 10,
                classifier: bool = False, readout: bool = False, width: float = 1.0,
                label_plane: bool = False, norm: str = "batch",
                image_shape: tuple[int, int, int] | None = None, **_: object) -> ConvNet:
    """width scales every layer's channels, the last one's 1280 included; see ffint8.nn.blocks
    for norm and label_plane."""
    return _mobilenetv2("mobilenetv2", STAGES, in_features, num_classes, classifier, readout,
                        width, label_plane, norm, image_shape)


@register_model("mobilenetv2_s2")
def mobilenetv2_s2(in_features: int = 784, num_classes: int = 10,
                   classifier: bool = False, readout: bool = False, width: float = 1.0,
                   label_plane: bool = False, norm: str = "batch",
                   image_shape: tuple[int, int, int] | None = None, **_: object) -> ConvNet:
    """mobilenetv2 with the original network's stride 2 in the second stage (module docstring)."""
    return _mobilenetv2("mobilenetv2_s2", STAGES_S2, in_features, num_classes, classifier,
                        readout, width, label_plane, norm, image_shape)
