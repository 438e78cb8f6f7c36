"""Every convolution shape of the registered CNNs, exact through the int8 kernels that training
uses ("auto"), with two threads as training runs: oneDNN has returned wrong sums for shapes the
small random cases do not reach (a strided 1x1 forward with 8 or 24 input channels and two
threads; the weight gradient of a 1x1 conv on a 1x1 map)."""

import torch
import torch.nn.functional as F

from ffint8.measure.convshapes import conv_layers
from ffint8.models import create_model
from ffint8.quant.conv import ConvSpec, int8_conv2d, int8_conv2d_input, int8_conv2d_weight


def model_conv_shapes(widths=(0.125, 0.375)):
    shapes = set()
    for name in ("resnet18", "mobilenetv2", "efficientnet_b0"):
        for width in widths:
            units, _ = conv_layers(create_model(name, in_features=784, width=width))
            for u in units:
                shapes.update((c.in_channels, c.out_channels, c.kernel, c.in_size, c.out_size,
                               c.stride, c.groups) for c in u.convs)
    return sorted(shapes)


def spec_of(kernel, in_size, out_size, stride, groups) -> ConvSpec:
    pad = tuple(((o - 1) * s + k - i + 1) // 2 for i, o, k, s in zip(in_size, out_size, kernel, stride))
    return ConvSpec(stride, pad, groups)


def test_every_model_conv_shape_exact(two_torch_threads):
    shapes = model_conv_shapes()
    assert len(shapes) > 50
    gen = torch.Generator().manual_seed(0)
    wrong = []
    for ci, co, k, ins, outs, s, g in shapes:
        spec = spec_of(k, ins, outs, s, g)
        x = torch.randint(0, 128, (2, ci, *ins), generator=gen, dtype=torch.int8)  # ReLU-like
        xs = torch.randint(-127, 128, (2, ci, *ins), generator=gen, dtype=torch.int8)
        w = torch.randint(-127, 128, (co, ci // g, *k), generator=gen, dtype=torch.int8)
        conv = dict(stride=spec.stride, padding=spec.padding, groups=g)
        z = F.conv2d(x.double(), w.double(), **conv)
        assert tuple(z.shape[2:]) == tuple(outs)
        gz = torch.randint(-127, 128, z.shape, generator=gen, dtype=torch.int8)
        checks = {
            "forward": (int8_conv2d(x, w, spec), z),
            "forward signed": (int8_conv2d(xs, w, spec), F.conv2d(xs.double(), w.double(), **conv)),
            "weight": (int8_conv2d_weight(x, gz, tuple(w.shape), spec),
                       torch.nn.grad.conv2d_weight(x.double(), tuple(w.shape), gz.double(), **conv)),
            "input": (int8_conv2d_input(gz, w, tuple(x.shape), spec),
                      torch.nn.grad.conv2d_input(tuple(x.shape), w.double(), gz.double(), **conv)),
        }
        wrong += [(op, ci, co, k, ins, s, g) for op, (got, want) in checks.items()
                  if not torch.equal(got.double(), want)]
    assert not wrong, wrong[:10]
