"""Reproduce the paper's Table V on this machine: `ffint8 bench` with the paper's matrix.

    python benchmarks/table_v.py [--epochs 10] [--seeds 0] [--threads N] [--out runs/table_v]
                                 [--cifar-dir DIR] [--cnn-epochs 2] [--cnn-limit-train 10000]
                                 [--bp-flags "--lr 0.001 --lr-schedule constant"] [--dry-run]

MLP (784-1000-1000, batch 32) on Fashion-MNIST with all six algorithms and the same epochs for
each; then the CNNs (MobileNet-v2, EfficientNet-B0, ResNet-18) on CIFAR-10 with a stated budget
(--cnn-epochs on the first --cnn-limit-train images: far from the paper's, which trains to
convergence on a Jetson GPU) once they are registered models. Algorithms or models this
checkout does not have yet are named and left out, not silently dropped. Rerunning resumes: finished
cells are skipped. Prints table.md at the end (also in OUT/table.md, with results.csv, plots).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ffint8.cli import main as ffint8_main
from ffint8.models import list_models
from ffint8.train.config import ALGOS

ALL_ALGOS = ("bp-fp32", "bp-int8", "bp-ui8", "bp-gdai8", "ff-fp32", "ff-int8")
# The paper's CNNs, as substrings of the registry names they may get.
CNNS = {"MobileNet-v2": "mobilenet", "EfficientNet-B0": "efficientnet", "ResNet-18": "resnet"}


def available_algos() -> tuple[list[str], list[str]]:
    have = [a for a in ALL_ALGOS if a in ALGOS]
    return have, [a for a in ALL_ALGOS if a not in ALGOS]


def registered_cnns() -> tuple[list[str], list[str]]:
    names = list_models()
    found, missing = [], []
    for paper_name, key in CNNS.items():
        match = [n for n in names if key in n.replace("_", "").replace("-", "").lower()]
        if match:
            found.append(match[0])
        else:
            missing.append(paper_name)
    return found, missing


def cnn_algos(cnns: list[str], algos: list[str]) -> tuple[list[str], list[str]]:
    """The algorithms every CNN can train: the backprop baselines need model.linear_layers()
    (as ffint8.train.run checks); the others are left out with a note."""
    from ffint8.models import create_model

    bp_ok = all(hasattr(create_model(name, num_classes=10), "linear_layers") for name in cnns)
    keep = [a for a in algos if bp_ok or not a.startswith("bp-")]
    return keep, [a for a in algos if a not in keep]


def bench_argv(models: list[str], algos: list[str], dataset: str, epochs: int, args,
               out: Path, limit_train: int | None = None, data_dir: str | None = None) -> list[str]:
    argv = ["bench", "--models", ",".join(models), "--algos", ",".join(algos), "--dataset", dataset,
            "--epochs", str(epochs), "--seeds", args.seeds, "--out", str(out)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if limit_train:
        argv += ["--limit-train", str(limit_train)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    if args.bp_flags:
        argv += ["--bp-extra", args.bp_flags]
    return argv


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="MLP epochs, every algorithm (default 10)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (default: the usual one)")
    p.add_argument("--cifar-dir", default=None,
                   help="CIFAR-10 python batches (data_batch_1..5, test_batch): the CNN rows run "
                        "only with it")
    p.add_argument("--bp-flags", default="--lr 0.001 --lr-schedule constant",
                   help="flags of the backprop cells only (default: their tuned Adam 0.001, "
                        "constant rate; the FF cells keep the train defaults)")
    p.add_argument("--cnn-epochs", type=int, default=2)
    p.add_argument("--cnn-limit-train", type=int, default=10000)
    p.add_argument("--out", default="runs/table_v")
    p.add_argument("--dry-run", action="store_true", help="print the bench commands only")
    args = p.parse_args()

    algos, missing = available_algos()
    if missing:
        print(f"note: algorithms not in this checkout yet, left out: {', '.join(missing)}")
    runs = [("MLP on Fashion-MNIST", bench_argv(["mlp"], algos, "fashion-mnist", args.epochs, args,
                                                Path(args.out) / "mlp", data_dir=args.data_dir))]
    cnns, absent = registered_cnns()
    if absent:
        print(f"note: CNN models not registered yet ({', '.join(absent)}); their rows of Table V "
              f"are not run (registered: {', '.join(list_models())})")
    if cnns and not args.cifar_dir:
        print("note: the CNN rows need CIFAR-10 (--cifar-dir DIR); not run")
    elif cnns:
        print(f"CNN budget: {args.cnn_epochs} epochs on the first {args.cnn_limit_train} CIFAR-10 "
              "training images (the paper trains to convergence)")
        c_algos, dropped = cnn_algos(cnns, algos)
        if dropped:
            print(f"note: {', '.join(dropped)} cannot train the CNNs yet (no linear_layers); left out")
        runs.append(("CNNs on CIFAR-10", bench_argv(cnns, c_algos, "cifar10", args.cnn_epochs, args,
                                                    Path(args.out) / "cnn", args.cnn_limit_train,
                                                    args.cifar_dir)))
    rc = 0
    for title, argv in runs:
        print(f"\n== {title}: ffint8 {shlex.join(argv)}", flush=True)
        if args.dry_run:
            continue
        rc = max(rc, ffint8_main(argv))
        table = Path(argv[argv.index("--out") + 1]) / "table.md"
        if table.is_file():
            print("\n" + table.read_text())
    return rc


if __name__ == "__main__":
    sys.exit(main())
