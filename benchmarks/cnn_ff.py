"""Issue 3: FF-INT8 on the CNNs. Epoch time of ff-int8 against ff-fp32, and the look-ahead ablation.

    python benchmarks/cnn_ff.py speed    [--model resnet18] [--width 1] [--look-ahead collab]
                                         [--limit-train 256] [--rounds 3] [--threads 1]
    python benchmarks/cnn_ff.py ablation [--model resnet18] [--width 0.25] [--looks none,collab,chain]
                                         [--epochs 5] [--limit-train 10000] [--lambda-step 0.05]
                                         [--out runs/cnn_ablation]
    both also take --device cpu|cuda|cuda:N|auto and --data-dir DIR (Fashion-MNIST's files)

speed:    one ff-int8 and one ff-fp32 trainer of the same model, same data and seed; epochs over
          --limit-train samples run alternately in one process (machine noise hits both alike);
          prints each round and the median ratio int8 / fp32 of seconds per epoch.
ablation: one `ffint8 train` per look-ahead reading, each in its own process (resumable: a
          finished run, metrics.json present, is skipped), then a table of test accuracy per epoch
          (full test set unless --limit-test): does plain FF (none) stall where look-ahead does not?
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def speed(args: argparse.Namespace) -> None:
    import torch

    from ffint8.data import load_dataset, to_float_images
    from ffint8.devices import describe_device, flush_denormals, resolve_device
    from ffint8.train.config import FFConfig, TrainConfig
    from ffint8.train.loop import FFTrainer
    from ffint8.train.run import build_model

    flush_denormals()  # as ffint8 train does: denormals slow some CPUs many times
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset("fashion-mnist", args.data_dir, limit_train=args.limit_train, limit_test=1)
    x, y = to_float_images(data.train.images), data.train.labels

    peer = {} if args.peer_weight is None else {"peer_weight": args.peer_weight}

    def trainer(algo: str) -> FFTrainer:
        cfg = TrainConfig(model=args.model, width=args.width, batch_size=args.batch_size,
                          ff=FFConfig(algo=algo, look_ahead=args.look_ahead,
                                      lambda_start=args.lambda_start, **peer))
        torch.manual_seed(0)
        tr = FFTrainer(build_model(cfg, x.shape[1], 10).to(device), cfg, 10)
        tr.train_epoch(x[: 2 * args.batch_size], y[: 2 * args.batch_size])  # warm-up
        return tr

    trainers = {a: trainer(a) for a in ("ff-int8", "ff-fp32")}
    print(f"{args.model} width {args.width}, look-ahead {args.look_ahead} (lambda "
          f"{args.lambda_start}), peer {trainers['ff-int8'].cfg.ff.peer_weight}, {len(x)} "
          f"samples per epoch, batch {args.batch_size}, {args.threads} threads, "
          f"{describe_device(device)}, {args.rounds} "
          "rounds of alternating epochs", flush=True)
    times: dict[str, list[float]] = {a: [] for a in trainers}
    for r in range(args.rounds):
        for algo, tr in trainers.items():
            times[algo].append(tr.train_epoch(x, y)[1])
        # three decimals: the ratio must follow from the printed times even for short epochs
        print(f"round {r + 1}: ff-int8 {times['ff-int8'][-1]:.3f}s  ff-fp32 "
              f"{times['ff-fp32'][-1]:.3f}s  ratio {times['ff-int8'][-1] / times['ff-fp32'][-1]:.3f}",
              flush=True)
    i8, f32 = statistics.median(times["ff-int8"]), statistics.median(times["ff-fp32"])
    # and the median of each round's ratio: load that changes between rounds cancels within one
    per_round = statistics.median(a / b for a, b in zip(times["ff-int8"], times["ff-fp32"]))
    print(f"median: ff-int8 {i8:.2f}s/epoch, ff-fp32 {f32:.2f}s/epoch, ratio {i8 / f32:.3f}; "
          f"median of per-round ratios {per_round:.3f}")


def ablation(args: argparse.Namespace) -> None:
    out = Path(args.out)
    budget = ["--model", args.model, "--width", str(args.width), "--epochs", str(args.epochs),
              "--limit-train", str(args.limit_train), "--algo", args.algo,
              "--lambda-step", str(args.lambda_step), "--seed", str(args.seed),
              "--threads", str(args.threads), "--device", args.device, "--no-progress"]
    if args.limit_test:
        budget += ["--limit-test", str(args.limit_test)]
    if args.data_dir:
        budget += ["--data-dir", args.data_dir]
    looks = args.looks.split(",")
    for look in looks:
        d = out / args.model / look
        if (d / "metrics.json").is_file():
            print(f"{look}: done before, skipped", flush=True)
            continue
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "ffint8", "train", *budget, "--look-ahead", look, "--out", str(d)]
        print(f"{look}: {' '.join(cmd[3:])}", flush=True)
        with open(d / "log.txt", "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                print(f"    failed; see {d / 'log.txt'}", flush=True)
    runs = {look: json.loads((out / args.model / look / "metrics.json").read_text())
            for look in looks if (out / args.model / look / "metrics.json").is_file()}
    if not runs:
        raise SystemExit(f"no finished runs under {out / args.model}")
    print(f"\n{args.model}: test accuracy (%) per epoch, seconds per epoch in brackets")
    print("epoch  " + "  ".join(f"{look:>16s}" for look in runs))
    for e in range(max(len(m["epochs"]) for m in runs.values())):
        cells = []
        for m in runs.values():
            ep = m["epochs"][e] if e < len(m["epochs"]) else None
            cells.append(f"{100 * ep['test_accuracy']:7.2f} ({ep['seconds']:5.0f}s)" if ep else " " * 16)
        print(f"{e + 1:5d}  " + "  ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--look-ahead", default="collab")
    s.add_argument("--lambda-start", type=float, default=0.1,
                   help="lambda during the timed epochs (0 would switch look-ahead off)")
    s.add_argument("--limit-train", type=int, default=256)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--peer-weight", type=float, default=None,
                   help="peer normalisation weight (default: ffint8 train's); 0 compares with "
                        "sessions before it became a default")
    a = sub.add_parser("ablation")
    a.add_argument("--looks", default="none,collab,chain")
    a.add_argument("--algo", default="ff-int8")
    a.add_argument("--epochs", type=int, default=5)
    a.add_argument("--limit-train", type=int, default=10000)
    a.add_argument("--limit-test", type=int, default=None)
    a.add_argument("--lambda-step", type=float, default=0.05)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="runs/cnn_ablation")
    for q in (s, a):
        q.add_argument("--model", default="resnet18")
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
        q.add_argument("--data-dir", default=None, help="Fashion-MNIST's directory (default: "
                       "the Debian package's)")
    s.add_argument("--width", type=float, default=1.0)
    s.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--width", type=float, default=0.25)
    args = p.parse_args()
    from ffint8.errors import FFInt8Error

    try:
        {"speed": speed, "ablation": ablation}[args.cmd](args)
    except FFInt8Error as exc:  # a bad flag or data file: one line, as ffint8's own errors
        raise SystemExit(f"cnn_ff.py: error: {exc}") from None


if __name__ == "__main__":
    main()
