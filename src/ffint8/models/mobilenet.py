"""MobileNet-v2 as FF units: a 3x3 stem block, 17 inverted-residual blocks and the final 1x1
conv block (320 -> 1280), each one unit (19 in all).

CIFAR-style: the stem has stride 1 and the second stage stride 1 instead of 2 (32x32 inputs end
at 4x4, 28x28 ones at 4x4: 28 -> 14 -> 7 -> 4). With 10 classes and the classifier head:
2.24 M parameters, as the paper's Table II.
"""

from __future__ import annotations

from ffint8.models.registry import register_model
from ffint8.nn.blocks import ConvBlock, ConvNet, InvertedResidual, StemBlock, cnn_input, make_divisible

# (expansion t, channels c, blocks n, stride s of the first block) per stage, as the paper's
# Table 2 of MobileNet-v2, with the CIFAR stride change in the second stage
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


@register_model("mobilenetv2")
def mobilenetv2(in_features: int = 784, num_classes: int = 10,
                classifier: bool = False, readout: bool = False, width: float = 1.0,
                label_plane: bool = False, norm: str = "batch",
                image_shape: tuple[int, int, int] | None = None, **_: object) -> ConvNet:
    """width scales every layer's channels, the last one's 1280 included; see ffint8.nn.blocks
    for norm and label_plane."""
    shape = cnn_input("mobilenetv2", in_features, image_shape, width, readout)
    cin = make_divisible(32 * width)
    units = [StemBlock(shape, cin, num_classes, label_plane, norm, act="relu6")]
    for t, c, n, s in STAGES:
        cout = make_divisible(c * width)
        for i in range(n):
            units.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, norm=norm))
            cin = cout
    last = make_divisible(1280 * width)
    units.append(ConvBlock(cin, last, 1, norm=norm, act="relu6"))
    return ConvNet(units, last, num_classes, classifier)
