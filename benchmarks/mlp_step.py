"""Issue 5's time figure in one process: FF-INT8 against BP-FP32 on the MLP, epochs alternating.

    python benchmarks/mlp_step.py [--batch-sizes 32,128] [--rounds 5] [--limit-train 6400]
                                  [--threads 1] [--algos ff-int8,ff-int8-plain,bp-fp32,bp-gdai8]
                                  (also ff-int8-mm, ff-int8-intmm, ff-int8-vnni)
                                  [--optimizer adam|adam8]

Each algorithm's trainer is built with the `ffint8 train` defaults (784-1000-1000, Adam 0.003,
chain look-ahead) and stands mid-run (lambda 0.2, so the chain's input gradients run, as in every
epoch after the first). Their epochs alternate, round after round, so machine noise hits all
alike; the figure is the ratio of medians. ff-int8-plain is ff-int8 forming every weight
gradient as a float32 tensor for torch.optim.Adam, as before the factored step (train/
factored.py); the two train to the same weights (bit-equal on x86). ff-int8-mm is ff-int8 with
the factored step's int32 rows formed by int8_mm, as on CPUs without AVX-512 VNNI, where
ff-int8 has the C kernel form them itself (the same weights). ff-int8-intmm and ff-int8-vnni
are ff-int8 with the forward and input-gradient GEMMs by torch._int_mm or by the C kernel's
VNNI rows (--int8-kernel int_mm or vnni; the same integers). --optimizer adam8 gives the
FF algorithms adam8 instead (factored and plain alike); the baselines keep Adam.
Prints ms per step and seconds per epoch for each, and each ratio to bp-fp32.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.devices import flush_denormals
from ffint8.errors import FFInt8Error
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer
from ffint8.train.run import build_model, make_trainer

KERNEL_VARIANTS = {"ff-int8-intmm": "int_mm", "ff-int8-vnni": "vnni"}
ALGOS = ("ff-int8", "ff-int8-plain", "ff-int8-mm", *KERNEL_VARIANTS, "bp-fp32", "bp-gdai8",
         "ff-fp32", "bp-int8", "bp-ui8")


def build(name: str, batch_size: int, optimizer: str = "adam"):
    algo = "ff-int8" if name.startswith("ff-int8-") else name
    opt = optimizer if algo.startswith("ff-") else "adam"  # the baselines keep Adam
    cfg = TrainConfig(batch_size=batch_size, seed=0, optimizer=opt,
                      ff=FFConfig(algo=algo, lambda_start=0.2,
                                  int8_kernel=KERNEL_VARIANTS.get(name, "auto")))
    torch.manual_seed(0)
    model = build_model(cfg, 784, 10)
    if name == "ff-int8-plain":
        return FFTrainer(model, cfg, 10, factored_adam=False)
    trainer = make_trainer(model, cfg, 10)
    if name == "ff-int8-mm":
        trainer.optimizer.vnni = False  # the row blocks from int8_mm
    return trainer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--limit-train", type=int, default=6400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--algos", default="ff-int8,ff-int8-plain,bp-fp32,bp-gdai8")
    p.add_argument("--optimizer", default="adam", choices=("adam", "adam8"),
                   help="the FF algorithms' optimiser (the backprop baselines keep Adam)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST's directory (default: the "
                   "Debian package's); 'synthetic' for random images")
    args = p.parse_args(argv)
    names = [a for a in args.algos.split(",") if a]
    bad = [a for a in names if a not in ALGOS]
    if bad or not names:
        p.error(f"--algos: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(ALGOS)}")
    if args.rounds < 1 or args.limit_train < 1:
        p.error("--rounds and --limit-train must be at least 1")
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error(f"--batch-sizes: not a comma-separated list of integers: {args.batch_sizes!r}")
    flush_denormals()  # as ffint8 train does
    torch.set_num_threads(args.threads)
    synthetic = args.data_dir == "synthetic"
    try:
        data = load_dataset("synthetic" if synthetic else "fashion-mnist",
                            None if synthetic else args.data_dir,
                            limit_train=args.limit_train, limit_test=1)
    except FFInt8Error as exc:
        raise SystemExit(f"mlp_step.py: {exc}") from None
    x, y = to_float_images(data.train.images), data.train.labels
    print(f"{len(x)} images per epoch, {args.threads} thread(s), {args.rounds} rounds, "
          f"epochs alternating; medians")
    for bs in sizes:
        trainers = {n: build(n, bs, args.optimizer) for n in names}
        for tr in trainers.values():
            tr.train_epoch(x[: 4 * bs], y[: 4 * bs])  # warm-up
        secs: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for n, tr in trainers.items():
                secs[n].append(tr.train_epoch(x, y)[1])
        steps = -(-len(x) // bs)
        med = {n: statistics.median(v) for n, v in secs.items()}
        print(f"batch {bs}:")
        for n in names:
            ratio = (f"  {med[n] / med['bp-fp32']:.2f}x bp-fp32" if "bp-fp32" in med else "")
            print(f"  {n:14s} {1000 * med[n] / steps:7.2f} ms/step  "
                  f"{med[n] * 60000 / len(x):6.1f} s per 60,000 images{ratio}", flush=True)
        if "ff-int8" in med and "ff-int8-plain" in med:
            print(f"  factored / plain ff-int8: {med['ff-int8'] / med['ff-int8-plain']:.2f}")
        if "ff-int8-vnni" in med and "ff-int8-intmm" in med:
            same = all(torch.equal(a.weight, b.weight) for a, b in
                       zip(trainers["ff-int8-vnni"].units, trainers["ff-int8-intmm"].units))
            print(f"  vnni / int_mm GEMMs: {med['ff-int8-vnni'] / med['ff-int8-intmm']:.2f} "
                  f"(same weights: {'yes' if same else 'NO'})")
        if "ff-int8" in med and "ff-int8-mm" in med:
            same = all(torch.equal(a.weight, b.weight) for a, b in
                       zip(trainers["ff-int8"].units, trainers["ff-int8-mm"].units))
            print(f"  C rows / int8_mm rows: {med['ff-int8'] / med['ff-int8-mm']:.2f} "
                  f"(same weights: {'yes' if same else 'NO'})")


if __name__ == "__main__":
    main()
