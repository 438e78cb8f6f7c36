"""Time of one optimiser step, and its state's bytes, for the optimisers `ffint8 train` offers.

    python benchmarks/optim_step.py [--hidden 1000,1000] [--in-features 784] [--rounds 7]
                                    [--steps 20] [--threads 1]

The parameters are the MLP's (in_features-hidden..., weights and biases) with random gradients.
Each round times --steps steps of every optimiser in turn (so machine noise hits them alike);
the table gives the median over rounds, the ratio to fused torch.optim.Adam, and the bytes of
optimiser state per parameter. adam8 runs its fused C kernel where it is built and its PyTorch
reference path (`fused=False`) for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ffint8.devices import flush_denormals
from ffint8.quant import fastsr
from ffint8.train.adam8 import Adam8


def make_params(in_features: int, hidden: list[int]) -> list[torch.nn.Parameter]:
    params, d = [], in_features
    for n in hidden:
        params += [torch.nn.Parameter(torch.randn(n, d) * 0.03), torch.nn.Parameter(torch.zeros(n))]
        d = n
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


OPTIMISERS = {
    "adam (fused)": lambda ps: torch.optim.Adam(ps, lr=3e-3, fused=True),
    "adam8 (C kernel)": lambda ps: Adam8(ps, lr=3e-3),
    "adam8 (PyTorch)": lambda ps: Adam8(ps, lr=3e-3, fused=False),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=3e-3, momentum=0.9),
}


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hidden", default="1000,1000")
    ap.add_argument("--in-features", type=int, default=784)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    flush_denormals()  # as ffint8 train does: denormals slow some CPUs many times
    torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    names = [n for n in OPTIMISERS if n != "adam8 (C kernel)" or fastsr.available()]
    runs = {}
    for name in names:
        params = make_params(args.in_features, hidden)
        opt = OPTIMISERS[name](params)
        opt.step()  # state allocated, kernel built
        runs[name] = (params, opt)
    n_params = sum(p.numel() for p in runs[names[0]][0])
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            _, opt = runs[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["adam (fused)"])
    print(f"{n_params / 1e6:.2f} M parameters, {args.threads} thread(s), median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'optimiser':18s} {'ms/step':>8s} {'x adam':>7s} {'state B/param':>14s}")
    for name in names:
        t = statistics.median(times[name])
        print(f"{name:18s} {1e3 * t:8.2f} {t / base:7.2f} "
              f"{state_bytes(runs[name][1]) / n_params:14.3f}")


if __name__ == "__main__":
    main()
