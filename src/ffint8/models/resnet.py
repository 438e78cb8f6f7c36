"""ResNet-18 as FF units: a 3x3 stem block, then 8 basic blocks, each one unit (9 in all).

CIFAR-style stem (3x3 conv, stride 1, no max-pool): 32x32 inputs end at 4x4, 28x28 ones at 4x4
too (28 -> 14 -> 7 -> 4). With 10 classes and the classifier head: 11.17 M parameters (the
paper's Table II: 11.19 M).
"""

from __future__ import annotations

from ffint8.models.registry import register_model
from ffint8.nn.blocks import BasicBlock, ConvNet, StemBlock, cnn_input, make_divisible

# (channels, blocks, stride of the first block) per stage
STAGES = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))


@register_model("resnet18")
def resnet18(in_features: int = 784, num_classes: int = 10,
             classifier: bool = False, readout: bool = False, width: float = 1.0,
             label_plane: bool = False, norm: str = "batch",
             image_shape: tuple[int, int, int] | None = None, **_: object) -> ConvNet:
    """width scales every stage's channels; see
    ffint8.nn.blocks for norm and label_plane."""
    shape = cnn_input("resnet18", in_features, image_shape, width, readout)
    cin = make_divisible(64 * width)
    units = [StemBlock(shape, cin, num_classes, label_plane, norm)]
    for channels, blocks, stride in STAGES:
        cout = make_divisible(channels * width)
        for i in range(blocks):
            units.append(BasicBlock(cin, cout, stride if i == 0 else 1, norm))
            cin = cout
    return ConvNet(units, cin, num_classes, classifier)
