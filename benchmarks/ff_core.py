"""Figures of the FF-INT8 core (issue: accuracy curves, int8 vs fp32 accuracy and speed).

    python benchmarks/ff_core.py accuracy [--epochs 10] [--looks none,collab,chain]
    python benchmarks/ff_core.py speed [--batch-sizes 32,256] [--rounds 3] [--limit-train 8000]
    python benchmarks/ff_core.py gemm [--batch-size 32]
    python benchmarks/ff_core.py predict [--rounds 5] [--limit-test 5000]
    python benchmarks/ff_core.py smoke

accuracy: full Fashion-MNIST; for each look-ahead mode trains ff-int8 and ff-fp32 with the same
          seed and prints test accuracy per epoch side by side, and the int8 - fp32 gap.
speed:    ff-int8 and ff-fp32 trainers on the same data, epochs run alternately in one process
          (so machine noise hits both alike); prints seconds per epoch and the int8/fp32 ratio.
gemm:     each int8 kernel against float32 on the MLP's GEMM shapes (alternating).
predict:  goodness prediction of the test set (every label scored), the first unit's product
          with the image shared by all labels against forwarding every embedded row, alternating.
smoke:    wall time of `ffint8 train --epochs 1 --limit-train 5000` in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.devices import flush_denormals
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig, preset_config
from ffint8.train.loop import FFTrainer
from ffint8.train.run import kernel_description, run_training


def accuracy(args: argparse.Namespace) -> None:
    results = {}
    for look in args.looks.split(","):
        for algo in args.algos.split(","):
            cfg = preset_config("paper", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                seed=args.seed, algo=algo, look_ahead=look,
                                lambda_step=args.lambda_step)
            with tempfile.TemporaryDirectory() as tmp:
                m = run_training(cfg, tmp, progress=False, log=lambda s: print("  " + s))
            results[(look, algo)] = m
            print(f"{algo:8s} {look:7s} final {100 * m['test_accuracy']:.2f}% "
                  f"train {m['train_seconds']:.0f}s", flush=True)
    print("\ntest accuracy (%) per epoch, full Fashion-MNIST, batch", args.batch_size)
    keys = list(results)
    print("epoch " + " ".join(f"{a}/{l:>7s}"[:18].rjust(18) for l, a in keys))
    for e in range(args.epochs):
        row = [100 * results[k]["epochs"][e]["test_accuracy"] for k in keys]
        print(f"{e + 1:5d} " + " ".join(f"{v:18.2f}" for v in row))
    print("\nint8 - fp32 gap at the last epoch (points):")
    for look in args.looks.split(","):
        if (look, "ff-int8") in results and (look, "ff-fp32") in results:
            gap = results[(look, "ff-int8")]["test_accuracy"] - results[(look, "ff-fp32")]["test_accuracy"]
            print(f"  {look:7s} {100 * gap:+.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{a}/{l}": m for (l, a), m in results.items()},
                                              indent=1))


def speed(args: argparse.Namespace) -> None:
    flush_denormals()  # as ffint8 train does: denormals slow some CPUs many times
    data = load_dataset("fashion-mnist", limit_train=args.limit_train, limit_test=1)
    x, y = to_float_images(data.train.images), data.train.labels
    torch.set_num_threads(args.threads)
    print(f"{args.limit_train} samples per epoch, {args.threads} threads, look-ahead {args.look}")
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        trainers = {}
        for algo in ("ff-int8", "ff-fp32"):
            cfg = TrainConfig(batch_size=bs, seed=0, ff=FFConfig(algo=algo, look_ahead=args.look,
                                                                 lambda_start=0.01))
            torch.manual_seed(0)
            trainers[algo] = FFTrainer(create_model("mlp"), cfg, 10)
            trainers[algo].train_epoch(x[: 8 * bs], y[: 8 * bs])  # warm-up
        times = {a: [] for a in trainers}
        for _ in range(args.rounds):
            for algo, tr in trainers.items():
                times[algo].append(tr.train_epoch(x, y)[1])
        med = {a: statistics.median(v) for a, v in times.items()}
        kernel = kernel_description(trainers["ff-int8"].cfg)
        print(f"batch {bs:4d}: ff-int8 {med['ff-int8']:.2f}s/epoch, ff-fp32 "
              f"{med['ff-fp32']:.2f}s/epoch, ratio int8/fp32 {med['ff-int8'] / med['ff-fp32']:.2f}"
              f"  (medians of {args.rounds} alternating epochs; int8 kernel: {kernel})", flush=True)


def gemm(args: argparse.Namespace) -> None:
    """Each int8 kernel against the float32 GEMM on the MLP's shapes, alternating, same threads."""
    from ffint8.quant.gemm import cpu_has_int8_dot, int8_mm

    flush_denormals()  # as ffint8 train does: denormals slow some CPUs many times
    torch.set_num_threads(args.threads)
    print(f"CPU int8 dot-product unit: {cpu_has_int8_dot()}; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.threads} threads")
    rows = 2 * args.batch_size  # positives and negatives
    shapes = {"forward 1": (rows, 784, 1000), "forward 2": (rows, 1000, 1000),
              "g_W 1": (1000, rows, 784), "g_W 2": (1000, rows, 1000)}
    for name, (m, k, n) in shapes.items():
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8)
        af, bf = a.float(), b.float()
        runs = {"float32": lambda af=af, bf=bf: torch.mm(af, bf)}
        for kern in ("int_mm", "float-exact"):
            runs[kern] = lambda kern=kern, a=a, b=b: int8_mm(a, b, kern)
        times = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, fn in runs.items():
                fn()
                start = time.perf_counter()
                for _ in range(args.reps):
                    fn()
                times[key].append((time.perf_counter() - start) / args.reps)
        med = {key: statistics.median(v) * 1e6 for key, v in times.items()}
        print(f"{name:9s} ({m}x{k}x{n}): float32 {med['float32']:8.0f} us | "
              + " | ".join(f"{key} {med[key]:8.0f} us ({med[key] / med['float32']:.2f}x)"
                           for key in ("int_mm", "float-exact")), flush=True)


def predict(args: argparse.Namespace) -> None:
    """Goodness prediction as predict_scores does it (the first unit shares the image's product
    across labels) against the C * B embedded rows through every unit, alternating rounds."""
    from ffint8.data import embed_label
    from ffint8.nn import functional as FF
    from ffint8.train.ff import forward_records

    flush_denormals()  # as ffint8 train does: denormals slow some CPUs many times
    data = load_dataset("fashion-mnist", limit_train=1, limit_test=args.limit_test)
    x = to_float_images(data.test.images)
    torch.set_num_threads(args.threads)
    bs, c = TrainConfig.eval_batch_size, 10
    print(f"{x.shape[0]} test images, batch {bs}, {args.threads} threads, MLP 784-1000-1000")
    for algo in ("ff-int8", "ff-fp32"):
        cfg = TrainConfig(seed=0, ff=FFConfig(algo=algo))
        torch.manual_seed(0)
        tr = FFTrainer(create_model("mlp"), cfg, c)

        @torch.no_grad()
        def every_row(xb, ff=cfg.ff, tr=tr):
            xs = embed_label(xb.repeat(c, 1), torch.arange(c).repeat_interleave(xb.shape[0]), c)
            recs = forward_records(tr.units, xs, ff, seeds=None)
            return sum(FF.goodness(r.y, ff.goodness) for r in recs).reshape(c, -1).t()

        runs = {"shared": tr.predict_scores, "every row": every_row}
        times = {k: [] for k in runs}
        agree = 0.0
        for _ in range(args.rounds):
            for key, fn in runs.items():
                start = time.perf_counter()
                preds = torch.cat([fn(x[i : i + bs]).argmax(1) for i in range(0, len(x), bs)])
                times[key].append(time.perf_counter() - start)
                if key == "shared":
                    shared = preds
                else:
                    agree = float((preds == shared).float().mean())
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{algo}: shared {med['shared']:.2f}s, every row {med['every row']:.2f}s, ratio "
              f"{med['shared'] / med['every row']:.2f} (medians of {args.rounds}); "
              f"same prediction on {100 * agree:.2f}% of images", flush=True)


def smoke(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ffint8", "train", "--epochs", "1", "--limit-train", "5000",
               "--out", tmp, "--no-progress"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"`ffint8 train --epochs 1 --limit-train 5000`: {time.perf_counter() - start:.1f}s "
              "wall, process start and evaluation on the full test set included")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--epochs", type=int, default=10)
    a.add_argument("--looks", default="none,collab,chain")
    a.add_argument("--algos", default="ff-int8,ff-fp32")
    a.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    a.add_argument("--lr", type=float, default=TrainConfig.lr)
    a.add_argument("--lambda-step", type=float, default=FFConfig.lambda_step)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json", default=None, help="also write all metrics to this file")
    s = sub.add_parser("speed")
    s.add_argument("--batch-sizes", default="32,256")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--limit-train", type=int, default=8000)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--look", default="collab")
    g = sub.add_parser("gemm")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--rounds", type=int, default=5)
    g.add_argument("--reps", type=int, default=5)
    r = sub.add_parser("predict")
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument("--limit-test", type=int, default=5000)
    r.add_argument("--threads", type=int, default=1)
    sub.add_parser("smoke")
    args = p.parse_args()
    {"accuracy": accuracy, "speed": speed, "gemm": gemm, "predict": predict,
     "smoke": smoke}[args.cmd](args)


if __name__ == "__main__":
    main()
