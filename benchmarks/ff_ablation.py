"""Issue 8: what closes FF-INT8's accuracy gap? Each lever at 10 epochs, several seeds.

    python benchmarks/ff_ablation.py run   [--levers a,b] [--algos ff-int8,ff-fp32] [--seeds 0,1,2]
                                           [--epochs 10] [--dataset mnist --data-dir DIR] [--out D]
    python benchmarks/ff_ablation.py table [--out D]
    python benchmarks/ff_ablation.py speed [--levers a,b] [--limit-train 8000] [--rounds 3]

run:   every (lever, algo, seed) is one `ffint8 train` in its own process, written to
       OUT/<dataset>/<lever>/<algo>/seed<k>; finished cells (metrics.json present) are skipped
       and a cell stopped mid-run goes on from its checkpoint, so a stopped ablation resumes.
       Each lever is a set of flags on top of the plain base: the paper's preset with
       look-ahead none (goodness prediction, uniform negatives).
       "default" is `ffint8 train` with no flags at all: the configuration this project ships;
       "default+..." levers add their flags to it instead of to the base. Prediction-only
       levers (skip-first) rescore the model of the lever they build on (RESCORED). The test
       set is scored after the last epoch only, unless --eval-every says otherwise.
table: mean and spread (sample standard deviation) of the final test accuracy per lever and algo,
       its gain over the base, and the mean training seconds per epoch relative to the base's
       (from the same runs: a rough figure on a shared machine; `speed` measures it properly).
speed: time per epoch of each lever against the base, epochs run alternately in one process
       (machine noise hits both alike); median of --rounds. The trainers stand at the middle
       epoch of a run, so look-ahead levers run with their lambda switched on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BASE = ["--preset", "paper", "--look-ahead", "none"]
# lever -> flags added to BASE ("default..." levers add theirs to the shipped defaults instead).
LEVERS: dict[str, list[str]] = {
    "base": [],
    "paper": ["--look-ahead", "collab"],
    "default": [],  # the shipped defaults: chain +0.2, cooldown, peer 0.03, predict-units auto
    "default-all": ["--predict-units", "all"],  # prediction only: see RESCORED
    "default-peer": ["--peer-weight", "0"],
    "default-peer-all": ["--peer-weight", "0", "--predict-units", "all"],  # sessions 3-7's default
    "softmax": ["--predict", "softmax"],
    "hard": ["--negatives", "hard"],
    "softmax+hard": ["--predict", "softmax", "--negatives", "hard"],
    "cooldown": ["--lr-schedule", "cooldown"],
    "cosine": ["--lr-schedule", "cosine"],
    "weight-decay": ["--weight-decay", "1e-5"],  # Adam's L2 term
    "adamw": ["--optimizer", "adamw", "--weight-decay", "0.01"],  # decoupled, AdamW's usual 0.01
    "peer": ["--peer-weight", "0.03"],
    "symba": ["--loss", "symba"],
    "collab-0.05": ["--look-ahead", "collab", "--lambda-step", "0.05"],
    "chain-0.05": ["--look-ahead", "chain", "--lambda-step", "0.05"],
    "chain-0.05-depth1": ["--look-ahead", "chain", "--lambda-step", "0.05", "--chain-depth", "1"],
    "chain-0.2": ["--look-ahead", "chain", "--lambda-step", "0.2"],
    "skip-first": ["--predict-units", "skip-first"],  # prediction only: see RESCORED
    "default+adam8": ["--optimizer", "adam8"],  # memory: Adam's state in 8 bits
    "default-peer+adam8": ["--peer-weight", "0", "--optimizer", "adam8"],
    "3x1000": ["--hidden", "1000,1000,1000"],
    "4x2000": ["--hidden", "2000,2000,2000,2000"],
}


# Levers that change only the prediction, not training (which is seeded and does not depend on
# it; tests/train/test_predict_units.py): their cells rescore the model of the lever named here
# with `ffint8 eval --predict-units` instead of training it again.
RESCORED = {"skip-first": "base", "default-all": "default", "default-peer-all": "default-peer"}


def lever_flags(lever: str) -> list[str]:
    if lever not in LEVERS:
        raise SystemExit(f"unknown lever {lever!r}; choose from: {', '.join(LEVERS)}")
    if lever.startswith("default"):  # the shipped defaults, plus what the lever adds
        return LEVERS[lever]
    return BASE + LEVERS[lever]


def cell_dir(out: Path, dataset: str, lever: str, algo: str, seed: int) -> Path:
    return out / dataset / lever / algo / f"seed{seed}"


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    data = ["--dataset", args.dataset] + (["--data-dir", args.data_dir] if args.data_dir else [])
    cells = [(lv, a, int(s)) for lv in args.levers.split(",") for a in args.algos.split(",")
             for s in args.seeds.split(",")]
    for lever, _, _ in cells:
        lever_flags(lever)  # unknown names fail before anything runs
    for n, (lever, algo, seed) in enumerate(cells, 1):
        d = cell_dir(out, args.dataset, lever, algo, seed)
        if (d / "metrics.json").is_file():
            print(f"[{n}/{len(cells)}] {lever} {algo} seed {seed}: done before, skipped")
            continue
        if lever in RESCORED:
            source = cell_dir(out, args.dataset, RESCORED[lever], algo, seed)
            print(f"[{n}/{len(cells)}] {lever} {algo} seed {seed}: rescore {source}", flush=True)
            rescore_cell(lever, source, d, args)
            continue
        # Only the final accuracy is tabulated: --eval-every spares the per-epoch test passes
        # (a quarter of a goodness-prediction run's time).
        cmd = [sys.executable, "-m", "ffint8", "train", *lever_flags(lever), *data,
               "--algo", algo, "--seed", str(seed), "--epochs", str(args.epochs),
               "--eval-every", str(args.eval_every or args.epochs),
               "--threads", str(args.threads), "--no-progress", "--out", str(d)]
        if (d / "checkpoint.pt").is_file():  # stopped mid-run: go on from its last epoch
            cmd = [sys.executable, "-m", "ffint8", "train", "--resume", str(d),
                   "--epochs", str(args.epochs), "--no-progress"]
        print(f"[{n}/{len(cells)}] {lever} {algo} seed {seed}: {' '.join(cmd[3:])}", flush=True)
        run_cell(cmd, d)


def rescore_flags(lever: str) -> list[str]:
    """What a RESCORED lever adds to the lever it rescores (its prediction flags, for `eval`)."""
    pairs = lambda flags: list(zip(flags[::2], flags[1::2]))  # noqa: E731  (flag, value) pairs
    source = pairs(LEVERS[RESCORED[lever]])
    return [t for pair in pairs(LEVERS[lever]) if pair not in source for t in pair]


def rescore_cell(lever: str, source: Path, d: Path, args: argparse.Namespace) -> None:
    """A prediction-only lever's cell d: the source cell's run, scored with the lever's flags."""
    if not (source / "metrics.json").is_file():
        print("    skipped: its source cell has not finished", flush=True)
        return
    cmd = [sys.executable, "-m", "ffint8", "eval", "--checkpoint", str(source / "model.pt"),
           *rescore_flags(lever)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"    failed (exit {res.returncode}): {res.stderr.strip()}", flush=True)
        return
    m = json.loads((source / "metrics.json").read_text())
    m.update(test_accuracy=json.loads(res.stdout)["test_accuracy"], rescored_from=str(source),
             rescore_flags=rescore_flags(lever))
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps(m, indent=2))
    print(f"    {100 * m['test_accuracy']:.2f}% (training as {source.parts[-3]})", flush=True)


def run_cell(cmd: list[str], d: Path) -> dict | None:
    """Run one `ffint8 train` command writing to d (its output in d/log.txt); its metrics."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "log.txt", "a") as log:  # a resumed cell keeps its first part
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(f"    failed (exit {rc}); see {d / 'log.txt'}", flush=True)
        return None
    m = json.loads((d / "metrics.json").read_text())
    print(f"    {100 * m['test_accuracy']:.2f}%  {m['train_seconds'] / len(m['epochs']):.1f}s/epoch",
          flush=True)
    return m


def _collect(out: Path) -> dict[tuple[str, str, str], list[dict]]:
    found: dict[tuple[str, str, str], list[dict]] = {}
    for f in sorted(out.glob("*/*/*/seed*/metrics.json")):
        dataset, lever, algo = f.parts[-5], f.parts[-4], f.parts[-3]
        found.setdefault((dataset, lever, algo), []).append(json.loads(f.read_text()))
    return found


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):6.2f} ± {sd:4.2f}"


def table(args: argparse.Namespace) -> None:
    found = _collect(Path(args.out))
    if not found:
        raise SystemExit(f"no finished runs under {args.out}")
    order = {lever: i for i, lever in enumerate(LEVERS)}
    for dataset in sorted({k[0] for k in found}):
        print(f"\n{dataset}: final test accuracy (%), mean ± sd over seeds; gain over base; "
              "train s/epoch relative to base")
        if args.markdown:
            print("\n| lever | algo | seeds | accuracy % by seed | mean ± sd | gain over base |")
            print("| --- | --- | --- | --- | --- | --- |")
        else:
            print(f"{'lever':20s} {'algo':8s} {'n':>2s} {'accuracy':>14s} {'gain':>6s} {'time':>5s}"
                  f" {'epochs':>6s}")
        for (ds, lever, algo), ms in sorted(found.items(),
                                            key=lambda kv: (kv[0][2], order.get(kv[0][1], 99))):
            if ds != dataset:
                continue
            acc = [100 * m["test_accuracy"] for m in ms]
            sec = [m["train_seconds"] / len(m["epochs"]) for m in ms]
            base = found.get((dataset, "base", algo))
            gain = time = float("nan")
            if base:
                gain = statistics.mean(acc) - statistics.mean(100 * m["test_accuracy"] for m in base)
                time = statistics.mean(sec) / statistics.mean(
                    m["train_seconds"] / len(m["epochs"]) for m in base)
            if args.markdown:
                seeds = ", ".join(str(m["config"]["seed"]) for m in ms)
                print(f"| {lever} | {algo} | {seeds} | {', '.join(f'{a:.2f}' for a in acc)} | "
                      f"{_mean_sd(acc).strip()} | {gain:+.2f} |")
                continue
            print(f"{lever:20s} {algo:8s} {len(ms):2d} {_mean_sd(acc):>14s} {gain:+6.2f} "
                  f"{time:5.2f} {len(ms[0]['epochs']):6d}")


def speed(args: argparse.Namespace) -> None:
    """Each lever's seconds per epoch against the base's, alternating epochs in one process."""
    import torch

    from ffint8.cli import config_from_args, parse_args
    from ffint8.data import load_dataset, to_float_images
    from ffint8.devices import flush_denormals
    from ffint8.train.loop import FFTrainer
    from ffint8.train.run import build_model

    flush_denormals()  # as ffint8 train does: denormals slow some CPUs many times
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", limit_train=args.limit_train, limit_test=1)
    x, y = to_float_images(data.train.images), data.train.labels

    def trainer(lever: str) -> FFTrainer:
        cfg = config_from_args(parse_args(["train", *lever_flags(lever), "--algo", args.algo]))
        torch.manual_seed(0)
        tr = FFTrainer(build_model(cfg, x.shape[1], 10), cfg, 10)
        tr.train_epoch(x[:256], y[:256])  # warm-up
        # Time a mid-run epoch: at epoch 0 lambda is lambda_start (0 by default), which would
        # switch look-ahead off and time plain FF for every look-ahead lever.
        tr.epoch = cfg.epochs // 2
        assert cfg.ff.look_ahead == "none" or cfg.ff.lam(tr.epoch) > 0
        return tr

    base = trainer("base")
    print(f"{args.algo}, {args.limit_train} samples per epoch, {args.threads} threads, "
          f"median of {args.rounds} alternating epochs")
    for lever in args.levers.split(","):
        tr = trainer(lever)
        times: dict[str, list[float]] = {"base": [], lever: []}
        for _ in range(args.rounds):
            times["base"].append(base.train_epoch(x, y)[1])
            times[lever].append(tr.train_epoch(x, y)[1])
        b, t = statistics.median(times["base"]), statistics.median(times[lever])
        # the ratio of each round's neighbouring epochs, then their median: load that changes
        # between rounds cancels within a round
        r = statistics.median(tl / tb for tl, tb in zip(times[lever], times["base"]))
        print(f"{lever:20s} {t:7.2f}s/epoch  base {b:7.2f}s/epoch  ratio {r:5.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--levers", default=",".join(LEVERS))
    r.add_argument("--algos", default="ff-int8,ff-fp32")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--dataset", default="fashion-mnist")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--eval-every", type=int, default=None,
                   help="score the test set every N epochs (default: after the last only)")
    r.add_argument("--out", default="runs/ablation")
    t = sub.add_parser("table")
    t.add_argument("--out", default="runs/ablation")
    t.add_argument("--markdown", action="store_true", help="a markdown table (no time column)")
    s = sub.add_parser("speed")
    s.add_argument("--levers", default="default,paper,softmax,hard,softmax+hard,cooldown,chain-0.05")
    s.add_argument("--algo", default="ff-int8")
    s.add_argument("--limit-train", type=int, default=8000)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    {"run": run, "table": table, "speed": speed}[args.cmd](args)


if __name__ == "__main__":
    main()
