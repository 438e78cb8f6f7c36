"""Paper Table I: does naive INT8 backprop degrade with depth while FF-INT8 does not?

    python benchmarks/table_i.py [--dataset fashion-mnist | --dataset mnist --data-dir DIR]
                                 [--epochs 5] [--algos bp-fp32,bp-int8,ff-int8] [--out D]

MLPs with 0, 1, 2 and 3 hidden layers of 500 units, each trained by every algorithm with the
same data, batches (32) and seed (FF with the paper's settings, --preset paper), one
`ffint8 train` process per cell, written to OUT/<dataset>/<algo>/h<depth>; finished cells are
skipped, so a stopped table resumes. FF needs at least one hidden layer, so its depth-0 cell is
empty. Prints our accuracy beside the paper's (MNIST, its own epoch budget, which the paper does
not state).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ff_ablation import run_cell

# Paper Table I (MNIST MLP, test accuracy %): hidden layers -> (BP-FP32, BP-INT8).
PAPER = {0: (89.5, 88.7), 1: (93.4, 73.8), 2: (94.5, 62.4), 3: (94.3, 65.2)}
LR = {"bp": 0.001, "ff": 0.003}  # Adam; each family at the rate its own tuning chose


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--depths", default="0,1,2,3")
    p.add_argument("--algos", default="bp-fp32,bp-int8,ff-int8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/table_i")
    a = p.parse_args()
    depths = [int(d) for d in a.depths.split(",")]
    algos = a.algos.split(",")
    data = ["--dataset", a.dataset] + (["--data-dir", a.data_dir] if a.data_dir else [])
    acc: dict[tuple[str, int], float] = {}
    for depth in depths:
        for algo in algos:
            if algo.startswith("ff-") and depth == 0:
                continue
            d = Path(a.out) / a.dataset / algo / f"h{depth}"
            hidden = ",".join([str(a.width)] * depth) or "none"
            if not (d / "metrics.json").is_file():
                cmd = [sys.executable, "-m", "ffint8", "train", *data, "--algo", algo,
                       "--hidden", hidden, "--epochs", str(a.epochs), "--seed", str(a.seed),
                       "--lr", str(LR[algo[:2]]),
                       *(["--preset", "paper"] if algo[:2] == "ff" else ["--lr-schedule", "constant"]),
                       "--threads",
                       str(a.threads), "--no-progress", "--out", str(d)]
                print(f"{algo} hidden {hidden}: {' '.join(cmd[3:])}", flush=True)
                if run_cell(cmd, d) is None:
                    continue
            acc[(algo, depth)] = 100 * json.loads((d / "metrics.json").read_text())["test_accuracy"]
    print(f"\nTable I: test accuracy (%) after {a.epochs} epochs on {a.dataset}, hidden layers of "
          f"{a.width}; the paper's figures are MNIST")
    print(f"{'hidden':>6s} " + " ".join(f"{x:>8s}" for x in algos)
          + f" {'paper BP-FP32':>14s} {'paper BP-INT8':>14s}")
    for depth in depths:
        cells = [f"{acc[(x, depth)]:8.2f}" if (x, depth) in acc else f"{'-':>8s}" for x in algos]
        print(f"{depth:6d} " + " ".join(cells) + f" {PAPER[depth][0]:14.1f} {PAPER[depth][1]:14.1f}")


if __name__ == "__main__":
    main()
