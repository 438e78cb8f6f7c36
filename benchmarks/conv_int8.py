"""int8 vs float32 convolution time on every distinct conv shape of a CIFAR-style ResNet-18.

For each shape (batch 32, 32x32 inputs by default) and each op (forward, weight gradient, and
optionally input gradient) it times float32 (NCHW and channels_last) and each int8 kernel, in
round-robin order (every variant once per round, so load from other processes hits all alike),
and prints medians, the int8 / float32 speed ratio, and the sums over the network weighted by
how often each shape occurs. int8 times include packing the weight (it changes every step) but
not quantisation, except in the "+quant" column, which adds quantising both operands.

    PYTHONPATH=src python benchmarks/conv_int8.py --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ffint8.quant import quantize
from ffint8.quant.conv import (
    ConvSpec,
    int8_conv2d_input_scaled,
    int8_conv2d_scaled,
    int8_conv2d_weight_scaled,
    onednn_available,
)

CL = torch.channels_last


@dataclass(frozen=True)
class Shape:
    c_in: int
    c_out: int
    size: int  # input height = width
    k: int
    stride: int
    count: int  # how many convs of ResNet-18 have this shape

    @property
    def padding(self) -> int:
        return self.k // 2

    def __str__(self) -> str:
        return (f"{self.c_in:3d}->{self.c_out:3d} {self.size:2d}x{self.size:<2d} {self.k}x{self.k} "
                f"s{self.stride} x{self.count}")


def resnet18_shapes(width: int = 64, size: int = 32) -> list[Shape]:
    """CIFAR ResNet-18: 3x3 stem, four stages of two basic blocks, 1x1 downsample convs."""
    shapes = [Shape(3, width, size, 3, 1, 1)]
    c = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        out = width * 2**stage
        if stride == 1:
            shapes.append(Shape(c, out, size, 3, 1, 4))
        else:
            shapes.append(Shape(c, out, size, 3, 2, 1))  # first conv of the stage
            shapes.append(Shape(c, out, size, 1, 2, 1))  # downsample shortcut
            size //= 2
            shapes.append(Shape(out, out, size, 3, 1, 3))
        c = out
    return shapes


def _operands(s: Shape, batch: int, gen: torch.Generator):
    ho = (s.size + 2 * s.padding - s.k) // s.stride + 1
    x = torch.rand(batch, s.c_in, s.size, s.size, generator=gen).contiguous(memory_format=CL)
    w = torch.randn(s.c_out, s.c_in, s.k, s.k, generator=gen) / (s.c_in * s.k * s.k) ** 0.5
    g = torch.randn(batch, s.c_out, ho, ho, generator=gen).contiguous(memory_format=CL)
    return x, w, g


def _variants(s: Shape, batch: int, op: str, kernels: list[str], gen: torch.Generator
              ) -> dict[str, Callable[[], object]]:
    x, w, g = _operands(s, batch, gen)
    x_nchw, g_nchw = x.contiguous(), g.contiguous()
    spec = ConvSpec(s.stride, s.padding)
    conv_args = ([s.stride] * 2, [s.padding] * 2, [1, 1], False, [0, 0], 1)
    # int8 operands as the INT8 path holds them: x >= 0 (a ReLU output or an image), g signed
    xq = quantize(x.permute(0, 2, 3, 1), "stochastic", seed=1)  # NHWC memory, quantised in place
    xq_q = xq.q.permute(0, 3, 1, 2)
    wq = quantize(w)
    gq = quantize(g.permute(0, 2, 3, 1), "stochastic", seed=2)
    gq_q = gq.q.permute(0, 3, 1, 2)
    out: dict[str, Callable[[], object]] = {}
    if op == "forward":
        out["fp32"] = lambda: F.conv2d(x_nchw, w, None, s.stride, s.padding)
        out["fp32-cl"] = lambda: F.conv2d(x, w, None, s.stride, s.padding)
        for k in kernels:
            out[k] = lambda k=k: int8_conv2d_scaled(xq_q, xq.scale, wq.q, wq.scale, spec, k)
        if "onednn" in kernels:
            def with_quant():
                a = quantize(x.permute(0, 2, 3, 1), "stochastic", seed=3)
                b = quantize(w)
                return int8_conv2d_scaled(a.q.permute(0, 3, 1, 2), a.scale, b.q, b.scale, spec)
            out["onednn+quant"] = with_quant
    elif op == "weight":
        out["fp32"] = lambda: torch.ops.aten.convolution_backward(
            g_nchw, x_nchw, w, None, *conv_args, [False, True, False])
        out["fp32-cl"] = lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, *conv_args, [False, True, False])
        for k in kernels:
            out[k] = lambda k=k: int8_conv2d_weight_scaled(xq_q, xq.scale, gq_q, gq.scale,
                                                           tuple(w.shape), spec, k)
    else:
        out["fp32"] = lambda: torch.ops.aten.convolution_backward(
            g_nchw, x_nchw, w, None, *conv_args, [True, False, False])
        out["fp32-cl"] = lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, *conv_args, [True, False, False])
        for k in kernels:
            out[k] = lambda k=k: int8_conv2d_input_scaled(gq_q, gq.scale, wq.q, wq.scale,
                                                          tuple(x.shape), spec, k)
    return out


def time_round_robin(variants: dict[str, Callable[[], object]], repeats: int, stat: str = "median"
                     ) -> dict[str, float]:
    """Median (or min) seconds of each variant, timed one after another in each of `repeats`
    rounds."""
    for fn in variants.values():  # warm-up: allocations, oneDNN primitive creation
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    pick = statistics.median if stat == "median" else min
    return {name: pick(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="min is the steadier estimate on a machine shared with other jobs")
    ap.add_argument("--ops", default="forward,weight", help="comma list of forward,weight,input")
    ap.add_argument("--kernels", default="onednn,float-exact,im2col",
                    help="comma list of int8 kernels (reference is too slow to be useful)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels = [k for k in args.kernels.split(",") if k != "onednn" or onednn_available()]
    shapes = resnet18_shapes(size=args.size)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.size}x{args.size}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.stat} of {args.repeats}; ms per call; ratio = fp32 time / int8 time (best fp32 layout)")
    overall: dict[str, float] = {}  # best-fp32 and each int8 kernel, summed over the ops
    seen: dict[str, int] = {}  # how many ops timed it ("+quant" is timed for the forward only)
    ops = args.ops.split(",")
    for op in ops:
        totals: dict[str, float] = {}
        names: list[str] = []
        print(f"\n== {op} ==")
        for s in shapes:
            t = time_round_robin(_variants(s, args.batch, op, kernels, gen), args.repeats,
                                 args.stat)
            if not names:
                names = list(t)
                print(f"{'shape':32s}" + "".join(f"{n:>14s}" for n in names)
                      + "".join(f"{'x ' + n:>16s}" for n in names[2:]))
            best_fp32 = min(t["fp32"], t["fp32-cl"])
            ratios = "".join(f"{best_fp32 / t[n]:16.2f}" for n in names[2:])
            print(f"{str(s):32s}" + "".join(f"{1e3 * t[n]:14.2f}" for n in names) + ratios)
            for n in names:
                totals[n] = totals.get(n, 0.0) + s.count * t[n]
        totals["best-fp32"] = min(totals["fp32"], totals["fp32-cl"])
        print(f"{'ResNet-18 sum (weighted)':32s}" + "".join(f"{1e3 * totals[n]:14.2f}" for n in names)
              + "".join(f"{totals['best-fp32'] / totals[n]:16.2f}" for n in names[2:]))
        for n in ["best-fp32", *names[2:]]:
            overall[n] = overall.get(n, 0.0) + totals[n]
            seen[n] = seen.get(n, 0) + 1
    if len(ops) > 1:
        print(f"\n== {' + '.join(ops)}, summed over ResNet-18 (best fp32 layout per op) ==")
        for n in [k for k in overall if k != "best-fp32" and seen[k] == len(ops)]:
            print(f"{n:14s} int8 {1e3 * overall[n]:9.2f} ms  fp32 {1e3 * overall['best-fp32']:9.2f} ms"
                  f"  ratio {overall['best-fp32'] / overall[n]:.2f}")


if __name__ == "__main__":
    main()
