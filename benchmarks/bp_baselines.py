"""Backprop baselines on Fashion-MNIST: test accuracy per epoch and seconds per epoch.

    python benchmarks/bp_baselines.py [--algos bp-fp32,bp-ui8,bp-gdai8,bp-int8] [--epochs 10]
        [--lr 0.001] [--batch-size 32] [--seed 0] [--threads 2] [--hidden 1000,1000]
        [--limit-train N] [--json results.json]

Each algorithm trains the MLP 784-1000-1000-10 from the same seed (same initial weights, same
batches) with Adam, one after the other in this process; a line is printed after every epoch, and
at the end a table of test accuracy per epoch and seconds per epoch, and each int8 algorithm's gap
to bp-fp32. Target (issue 4): bp-fp32 >= 88.5 % at 10 epochs, bp-ui8 and bp-gdai8 within 1.5
points of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ffint8.bp import BP_ALGOS, BPConfig, BPTrainer
from ffint8.data import load_dataset, to_float_images
from ffint8.devices import flush_denormals
from ffint8.models import create_model
from ffint8.quant import fastsr
from ffint8.quant.gemm import resolve_kernel
from ffint8.train.config import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--algos", default="bp-fp32,bp-ui8,bp-gdai8,bp-int8")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", default="1000,1000")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--search-period", type=int, default=BPConfig.search_period)
    p.add_argument("--json", default=None, help="write the results here (after every epoch)")
    args = p.parse_args()
    algos = args.algos.split(",")
    for a in algos:
        if a not in BP_ALGOS:
            p.error(f"unknown algorithm {a!r}; choose from {', '.join(BP_ALGOS)}")
    flush_denormals()  # as ffint8 train does: denormals slow some CPUs many times
    torch.set_num_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    data = load_dataset(args.dataset, args.data_dir, args.limit_train, seed=args.seed)
    x, y = to_float_images(data.train.images), data.train.labels
    xt, yt = to_float_images(data.test.images), data.test.labels
    cfg = TrainConfig(hidden=hidden, dataset=args.dataset, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, optimizer="adam", seed=args.seed,
                      lr_schedule="constant", threads=args.threads)  # as the recorded figures
    bp = BPConfig(search_period=args.search_period)
    print(f"{args.dataset}: {len(x)} train, {len(xt)} test; MLP {x.shape[1]}-"
          f"{'-'.join(map(str, hidden))}-{data.num_classes}; batch {args.batch_size}, Adam lr "
          f"{args.lr}, seed {args.seed}, {args.threads} threads; int8 GEMM kernel "
          f"{resolve_kernel('auto')}, fused C quantiser {fastsr.available()}", flush=True)
    results: dict[str, dict] = {}
    for algo in algos:
        torch.manual_seed(args.seed)
        model = create_model("mlp", in_features=x.shape[1], hidden=hidden,
                             num_classes=data.num_classes, classifier=True)
        trainer = BPTrainer(model, cfg, data.num_classes, algo=algo, bp=bp)
        rec = results[algo] = {"accuracy": [], "seconds": [], "train_loss": []}

        def on_epoch(log, algo=algo, rec=rec, trainer=trainer):
            rec["accuracy"].append(log.test_accuracy)
            rec["seconds"].append(log.seconds)
            rec["train_loss"].append(log.train_loss)
            extra = ""
            if trainer.layers and algo != "bp-int8":
                dev = ", ".join(f"{l.grad.deviation:.2e}" for l in trainer.layers)
                extra = f"  last deviation per layer: {dev}"
            print(f"{algo:9s} epoch {log.epoch:2d}  loss {log.train_loss:.4f}  "
                  f"test {100 * log.test_accuracy:6.2f}%  {log.seconds:6.1f} s{extra}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "results": results},
                                                      indent=2))

        start = time.perf_counter()
        trainer.fit(x, y, xt, yt, on_epoch=on_epoch)
        print(f"{algo}: {time.perf_counter() - start:.0f} s in all", flush=True)
    print_table(results, args.epochs)


def print_table(results: dict[str, dict], epochs: int) -> None:
    algos = list(results)
    print("\ntest accuracy (%) per epoch")
    print("epoch " + "".join(f"{a:>11s}" for a in algos))
    for e in range(epochs):
        cells = [results[a]["accuracy"][e] if e < len(results[a]["accuracy"]) else None for a in algos]
        print(f"{e + 1:5d} " + "".join(f"{100 * c:11.2f}" if c is not None else f"{'-':>11s}"
                                       for c in cells))
    print("mean s/epoch " + "".join(
        f"{sum(results[a]['seconds']) / max(len(results[a]['seconds']), 1):11.1f}" for a in algos))
    if "bp-fp32" in results and results["bp-fp32"]["accuracy"]:
        ref = results["bp-fp32"]["accuracy"]
        print("\ngap to bp-fp32 at the last common epoch (points):")
        for a in algos:
            acc = results[a]["accuracy"]
            n = min(len(acc), len(ref))
            if a != "bp-fp32" and n:
                print(f"  {a:9s} epoch {n}: {100 * (acc[n - 1] - ref[n - 1]):+.2f}")


if __name__ == "__main__":
    main()
