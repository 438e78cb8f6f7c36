"""Each FF unit's goodness prediction on its own, summed over units 1..l and over l..L, from a
checkpoint.

    PYTHONPATH=src python benchmarks/unit_accuracy.py RUN/checkpoint.pt [--limit-test 500]

Shows where in a network the label is read: a unit below chance (10% with 10 classes) gives the
wrong labels more goodness than the right one. Reads model.pt or checkpoint.pt; the test images
are the checkpoint's data set's (--data-dir where it is not the default).
"""

from __future__ import annotations

import argparse

import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.devices import flush_denormals
from ffint8.errors import FFInt8Error
from ffint8.train.loop import FFTrainer
from ffint8.train.run import load_checkpoint


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--limit-test", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    flush_denormals()
    torch.set_num_threads(args.threads)
    try:
        model, cfg, _ = load_checkpoint(args.checkpoint)
        if cfg.ff.backprop:
            raise SystemExit(f"unit_accuracy.py: {args.checkpoint} is a backprop model ({cfg.ff.algo})")
        data = load_dataset(cfg.dataset, args.data_dir or cfg.data_dir, limit_train=1,
                            limit_test=args.limit_test)
    except FFInt8Error as exc:
        raise SystemExit(f"unit_accuracy.py: {exc}") from None
    x, y = to_float_images(data.test.images), data.test.labels
    parts = FFTrainer(model, cfg, data.num_classes).goodness_per_unit(x)
    print(f"{cfg.model} ({cfg.ff.algo}), {len(y)} test images, chance "
          f"{100 / data.num_classes:.1f}%")
    def hits(scores: torch.Tensor) -> float:
        return 100 * (scores.argmax(1) == y).float().mean().item()

    n = len(parts)
    stacked = torch.stack(parts)
    below = torch.cumsum(stacked, 0)  # below[i]: units 1..i+1
    above = below[-1] - below + stacked  # above[i]: units i+1..n
    for i, part in enumerate(parts):
        print(f"unit {i + 1:3d}: alone {hits(part):5.1f}%   units 1..{i + 1}: "
              f"{hits(below[i]):5.1f}%   units {i + 1}..{n}: {hits(above[i]):5.1f}%")


if __name__ == "__main__":
    main()
