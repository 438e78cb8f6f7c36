"""Depthwise weight gradient: fastquant.c's loop against oneDNN's grouped convolution and float32.

For every distinct depthwise convolution of MobileNet-v2 and EfficientNet-B0 (at the given width,
on 28x28 Fashion-MNIST images, FF's 2 x batch rows), it times, in round-robin order:
- "c-loop": int8_conv2d_weight_scaled as training runs it (the C loop, where it is built);
- "onednn": the same gradient through oneDNN's grouped convolution, the path before the loop;
- "fp32-cl": float32's own weight gradient (channels_last),
and prints medians in ms, the ratios, and sums weighted by how often each shape occurs.

    PYTHONPATH=src python benchmarks/depthwise_weight.py --width 0.25 --batch 32 --threads 1
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import torch
from conv_int8 import time_round_robin

from ffint8.measure.convshapes import conv_layers
from ffint8.measure.counts import Conv
from ffint8.models import create_model
from ffint8.quant import fastsr, quantize
from ffint8.quant.conv import ConvSpec, _onednn_weight, int8_conv2d_weight_scaled, onednn_available

CL = torch.channels_last


def depthwise_convs(model: str, width: float) -> Counter:
    """(Conv, count) of the model's depthwise convolutions on 28x28 single-channel images."""
    with torch.device("meta"):
        net = create_model(model, in_features=784, num_classes=10, width=width)
    units, _ = conv_layers(net)
    return Counter(c for u in units for c in u.convs
                   if c.groups > 1 and c.groups == c.in_channels == c.out_channels)


def _variants(c: Conv, rows: int, gen: torch.Generator) -> dict[str, Callable[[], object]]:
    k, s = c.kernel, c.stride
    spec = ConvSpec(s, (k[0] // 2, k[1] // 2), c.groups)
    w_shape = (c.out_channels, 1, *k)
    x = torch.rand(rows, c.in_channels, *c.in_size, generator=gen).contiguous(memory_format=CL)
    g = torch.randn(rows, c.out_channels, *c.out_size, generator=gen).contiguous(memory_format=CL)
    w = torch.randn(w_shape, generator=gen)
    xq = quantize(x.permute(0, 2, 3, 1), "stochastic", seed=1)  # as the FF units hold them
    gq = quantize(g.permute(0, 2, 3, 1), "stochastic", seed=2)
    xq_q, gq_q = xq.q.permute(0, 3, 1, 2), gq.q.permute(0, 3, 1, 2)
    conv_args = (list(s), list(spec.padding), [1, 1], False, [0, 0], c.groups)
    out: dict[str, Callable[[], object]] = {
        "fp32-cl": lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, *conv_args, [False, True, False]),
        "c-loop": lambda: int8_conv2d_weight_scaled(xq_q, xq.scale, gq_q, gq.scale, w_shape,
                                                    spec, "onednn"),
    }
    if onednn_available():
        gs = gq.scale.expand(c.out_channels).contiguous()
        out["onednn"] = lambda: _onednn_weight(xq_q, gq_q, w_shape, spec, None, float(xq.scale),
                                               gs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenetv2,efficientnet_b0")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32, help="images; FF runs 2x rows (pos + neg)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not fastsr.available():
        raise SystemExit("the C kernels are not built here (no C compiler, or FFINT8_NO_CKERNEL=1)")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = 2 * args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {rows} rows, "
          f"width {args.width}, median of {args.repeats}; ms per call")
    for model in args.models.split(","):
        print(f"\n== {model} ==")
        totals: Counter = Counter()
        names: list[str] = []
        for c, count in sorted(depthwise_convs(model, args.width).items(),
                               key=lambda kv: (-kv[0].in_size[0], kv[0].in_channels)):
            t = time_round_robin(_variants(c, rows, gen), args.repeats)
            names = names or list(t)
            label = (f"{c.in_channels:4d}ch {c.in_size[0]:2d}x{c.in_size[1]:<2d} "
                     f"{c.kernel[0]}x{c.kernel[1]} s{c.stride[0]} x{count}")
            print(f"{label:28s}" + "".join(f" {n} {1e3 * t[n]:8.2f}" for n in names))
            for n in names:
                totals[n] += count * t[n]
        print(f"{'sum (weighted)':28s}" + "".join(f" {n} {1e3 * totals[n]:8.2f}" for n in names))
        for n in names:
            if n != "c-loop":
                print(f"c-loop / {n}: {totals['c-loop'] / totals[n]:.2f}")


if __name__ == "__main__":
    main()
