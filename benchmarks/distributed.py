"""Figures of issue 7: data-parallel, layer-pipelined and federated FF-INT8 on one machine.

    python benchmarks/distributed.py ddp      [--limit-train 10000] [--epochs 3]
    python benchmarks/distributed.py pipeline [--limit-train 10000] [--epochs 2]
    python benchmarks/distributed.py stale    [--limit-train 10000] [--epochs 2]
    python benchmarks/distributed.py fleet    [--limit-train 20000] [--rounds 10] [--local-epochs 1]
    python benchmarks/distributed.py all      (all four, with the defaults above)

ddp:      `ffint8 train` in one process with batch 64 (1 and 2 threads) against `torchrun
          --nproc-per-node 2 ... --distributed` with batch 32 per rank (effective 64, 1 thread
          each), float and int8 gradient exchange; test accuracy per epoch and seconds per epoch.
pipeline: one process (1 and 2 threads) against `--distributed pipeline` on 2 ranks (rank r
          trains unit r), look-ahead none and collab; seconds per epoch and accuracy.
stale:    the pipeline's collab with stale updates (rank 0 one update behind) against the exact
          schedule, in one process (threads): the accuracy cost of keeping the pipeline full.
fleet:    `ffint8 fleet simulate`, 4 clients, IID and label split, test accuracy per round.

All on Fashion-MNIST (full test set), MLP 784-1000-1000, ff-int8, seed 0. Every configuration
runs in a fresh process; the table is printed at the end of each part.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WORLD = 2


def _run(cmd: list[str], out: Path) -> dict:
    """Run one configuration; its metrics.json."""
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    m["process_seconds"] = time.time() - start
    return m


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(out: Path, args: argparse.Namespace, extra: list[str], ranks: int = 1) -> list[str]:
    # the paper's settings (collab, lambda +0.001, constant rate), as the recorded figures used
    base = ["-m", "ffint8", "train", "--preset", "paper", "--dataset", "fashion-mnist",
            "--limit-train", str(args.limit_train), "--epochs", str(args.epochs), "--out", str(out),
            "--no-progress", *extra]
    if ranks == 1:
        return [sys.executable, *base]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-port", str(_free_port()), *base]


def table(rows: dict[str, dict], epochs: int) -> None:
    print(f"{'configuration':44s} " + " ".join(f"ep{e + 1} acc%  s/ep" for e in range(epochs)))
    for name, m in rows.items():
        cells = [f"{100 * e['test_accuracy']:7.2f} {e['seconds']:5.1f}" for e in m["epochs"]]
        print(f"{name:44s} " + "  ".join(cells))


def ddp(args: argparse.Namespace, tmp: Path) -> dict:
    b = args.batch_size
    runs = {
        f"1 process, batch {b * WORLD}, 1 thread": (1, ["--batch-size", str(b * WORLD), "--threads", "1"]),
        f"1 process, batch {b * WORLD}, 2 threads": (1, ["--batch-size", str(b * WORLD), "--threads", "2"]),
        f"DDP {WORLD} ranks x batch {b}, float grads": (WORLD, ["--distributed", "--batch-size", str(b)]),
        f"DDP {WORLD} ranks x batch {b}, int8 grads": (WORLD, ["--distributed", "--grad-int8",
                                                             "--batch-size", str(b)]),
    }
    if args.fp32_check:
        runs[f"ff-fp32 1 process, batch {b * WORLD}, 1 thread"] = (
            1, ["--algo", "ff-fp32", "--batch-size", str(b * WORLD), "--threads", "1"])
        runs[f"ff-fp32 DDP {WORLD} ranks x batch {b}"] = (
            WORLD, ["--algo", "ff-fp32", "--distributed", "--batch-size", str(b)])
    results = {}
    for name, (ranks, extra) in runs.items():
        out = tmp / f"ddp{len(results)}"
        results[name] = _run(train_cmd(out, args, extra, ranks), out)
        print(f"  done: {name}", flush=True)
    print(f"\nDDP vs one process, same effective batch {b * WORLD}: Fashion-MNIST, first "
          f"{args.limit_train} training samples, {args.epochs} epochs, ff-int8 collab")
    table(results, args.epochs)
    return results


def pipeline(args: argparse.Namespace, tmp: Path) -> dict:
    results = {}
    for look in ("none", "collab"):
        for name, (ranks, extra) in {
            f"{look}: 1 process, 1 thread": (1, ["--threads", "1"]),
            f"{look}: 1 process, 2 threads": (1, ["--threads", "2"]),
            f"{look}: pipeline, {WORLD} ranks (1 thread each)": (WORLD, ["--distributed", "pipeline"]),
        }.items():
            out = tmp / f"pipe{len(results)}"
            results[name] = _run(train_cmd(out, args, ["--look-ahead", look, *extra], ranks), out)
            print(f"  done: {name}", flush=True)
    print(f"\nlayer pipeline vs one process: Fashion-MNIST, first {args.limit_train} training "
          f"samples, batch 32, {args.epochs} epochs, ff-int8")
    table(results, args.epochs)
    return results


def stale(args: argparse.Namespace, tmp: Path) -> dict:
    """Exact collab against stale collab, stages as threads of this process (same data)."""
    from ffint8.data import load_dataset, to_float_images
    from ffint8.dist.pipeline import ThreadedPipeline
    from ffint8.models import create_model
    from ffint8.train.config import preset_config
    from ffint8.train.loop import FFTrainer

    torch.set_num_threads(1)
    d = load_dataset("fashion-mnist", limit_train=args.limit_train)
    x, y = to_float_images(d.train.images), d.train.labels
    xt, yt = to_float_images(d.test.images), d.test.labels
    cfg = preset_config("paper", epochs=args.epochs, lambda_start=0.05)
    results = {}
    for name, is_stale in (("collab, exact (waits for later goodness)", False),
                           ("collab, stale (rank 0 one update behind)", True)):
        torch.manual_seed(0)
        model = create_model("mlp")
        pipe = ThreadedPipeline(model, cfg, 10, stale=is_stale)
        epochs = []
        for _ in range(args.epochs):
            loss, seconds = pipe.train_epoch(x, y)
            epochs.append({"train_loss": loss, "seconds": seconds,
                           "test_accuracy": FFTrainer(model, cfg, 10).evaluate(xt, yt)})
        results[name] = {"epochs": epochs}
        print(f"  done: {name}", flush=True)
    print(f"\nstale vs exact collab (lambda from 0.05), 2 stages as threads: first "
          f"{args.limit_train} training samples, batch 32, {args.epochs} epochs")
    table(results, args.epochs)
    return results


def fleet(args: argparse.Namespace, tmp: Path) -> dict:
    results = {}
    for partition in ("iid", "label"):
        out = tmp / f"fleet-{partition}"
        cmd = [sys.executable, "-m", "ffint8", "fleet", "simulate", "--clients", str(args.clients),
               "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs),
               "--partition", partition, "--dataset", "fashion-mnist", "--limit-train",
               str(args.limit_train_fleet), "--engine", args.engine, "--threads", "1",
               "--look-ahead", "collab", "--lambda-step", "0.001", "--lr-schedule", "constant",
               "--out", str(out)]
        results[partition] = _run(cmd, out)
        print(f"  done: {partition}", flush=True)
    print(f"\nfederated FF-INT8: {args.clients} clients, first {args.limit_train_fleet} training "
          f"samples split among them, {args.rounds} rounds x {args.local_epochs} local epoch(s), "
          f"FedAvg, {args.engine} engine")
    print("round " + " ".join(f"{p:>12s}" for p in results))
    for r in range(args.rounds + 1):
        print(f"{r:5d} " + " ".join(f"{100 * m['per_round'][r]['test_accuracy']:11.2f}%"
                                    for m in results.values()))
    for p, m in results.items():
        print(f"{p}: {m['wall_seconds']:.0f}s wall; classes per client "
              f"{[sum(c > 0 for c in cc) for cc in m['client_class_counts']]}")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("part", choices=("ddp", "pipeline", "stale", "fleet", "all"))
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=None, help="default: 3 (ddp), 2 (pipeline)")
    p.add_argument("--batch-size", type=int, default=32, help="ddp: per rank")
    p.add_argument("--fp32-check", action="store_true", help="ddp: also ff-fp32, 1 process vs DDP")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--limit-train-fleet", type=int, default=20000)
    p.add_argument("--engine", default="loopback", help="fleet: loopback or ray")
    p.add_argument("--json", default=None, help="also write all results to this file")
    args = p.parse_args()
    parts = ["ddp", "pipeline", "stale", "fleet"] if args.part == "all" else [args.part]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            a = argparse.Namespace(**vars(args))
            if a.epochs is None:
                a.epochs = 3 if part == "ddp" else 2
            results[part] = globals()[part](a, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
