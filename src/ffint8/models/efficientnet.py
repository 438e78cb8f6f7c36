"""EfficientNet-B0 as FF units: a 3x3 stem block, 16 MBConv blocks (squeeze-excitation, SiLU)
and the final 1x1 conv block (320 -> 1280), each one unit (18 in all).

CIFAR-style stem (stride 1): 32x32 inputs end at 2x2, 28x28 ones at 2x2 (28 -> 14 -> 7 -> 4 -> 2).
No drop-connect or dropout. With 10 classes and the classifier head: 4.02 M parameters; 3.38 M
without squeeze-excitation (se=False), which is what the paper's Table II (3.39 M) matches: see
docs/cnn.md.
"""

from __future__ import annotations

from ffint8.models.registry import register_model
from ffint8.nn.blocks import ConvBlock, ConvNet, StemBlock, cnn_input, make_divisible, mbconv

# (expansion, kernel, stride of the first block, channels, blocks) per stage, EfficientNet-B0
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


@register_model("efficientnet_b0")
def efficientnet_b0(in_features: int = 784, num_classes: int = 10,
                    classifier: bool = False, readout: bool = False, width: float = 1.0,
                    label_plane: bool = False, norm: str = "batch",
                    image_shape: tuple[int, int, int] | None = None, se: bool = True,
                    **_: object) -> ConvNet:
    """width scales every layer's channels, the last one's 1280 included; se=False drops
    squeeze-excitation; see ffint8.nn.blocks for norm and label_plane."""
    shape = cnn_input("efficientnet_b0", in_features, image_shape, width, readout)
    cin = make_divisible(32 * width)
    units = [StemBlock(shape, cin, num_classes, label_plane, norm, act="silu")]
    for e, k, s, c, n in STAGES:
        cout = make_divisible(c * width)
        for i in range(n):
            units.append(mbconv(cin, cout, s if i == 0 else 1, e, k, 0.25 if se else 0.0, norm))
            cin = cout
    last = make_divisible(1280 * width)
    units.append(ConvBlock(cin, last, 1, norm=norm, act="silu"))
    return ConvNet(units, last, num_classes, classifier)
