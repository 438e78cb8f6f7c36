"""`ffint8 bench`: run a matrix of training runs, each in its own process, and tabulate it.

    ffint8 bench --models mlp --algos ff-int8,ff-fp32 --epochs 10 --seeds 0,1 --out runs/bench

writes OUT/cells/<cell>/ (each cell's run directory), OUT/results.csv, OUT/results.json,
OUT/table.md (beside the paper's Table V) and OUT/accuracy.png, OUT/bars.png.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from pathlib import Path

from ffint8.bench.matrix import BenchSpec, default_threads, run_matrix, validate
from ffint8.bench.plots import write_plots
from ffint8.bench.results import aggregate, collect_rows, write_results
from ffint8.bench.table import make_table
from ffint8.errors import ConfigError
from ffint8.fileio import write_text_atomic

__all__ = ["BenchSpec", "add_bench_parser", "report", "run_bench", "spec_from_args"]


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to the CLI's subparsers."""
    b = subparsers.add_parser("bench", help="run a matrix of models x algorithms x seeds, each in "
                                            "a fresh process; tables and plots beside the paper's")
    b.add_argument("--models", default="mlp", help="comma-separated registered models (default mlp)")
    from ffint8.train.config import ALGOS

    b.add_argument("--algos", default="ff-int8,ff-fp32",
                   help=f"comma-separated, of: {', '.join(ALGOS)} (default %(default)s)")
    b.add_argument("--epochs", type=int, default=10, help="epochs of every cell (default 10)")
    b.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    b.add_argument("--dataset", default="fashion-mnist")
    b.add_argument("--data-dir", default=None)
    b.add_argument("--limit-train", type=int, default=None)
    b.add_argument("--limit-test", type=int, default=None)
    b.add_argument("--threads", type=int, default=None,
                   help="torch threads of every cell (default: the CPUs this process may use)")
    b.add_argument("--extra", default="", metavar="FLAGS",
                   help='further `ffint8 train` flags for every cell, e.g. --extra="--hidden 500,500"')
    b.add_argument("--bp-extra", default="", metavar="FLAGS",
                   help="further flags for the backprop cells only, after --extra, e.g. "
                        '--bp-extra="--lr 0.001 --lr-schedule constant" (their tuned settings)')
    b.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell")
    b.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="run every cell with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 131072): "
                   "blocks that large get their own mapping, freed at once, so the training "
                   "memory no longer depends on the heap's layout (steady across runs); it "
                   "slows algorithms that allocate much, so take times from a run without it")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    b.add_argument("--out", required=True, help="bench directory; rerun to resume")
    return b


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    try:
        seeds = tuple(int(s) for s in _names(args.seeds))
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    return BenchSpec(models=_names(args.models), algos=_names(args.algos), epochs=args.epochs,
                     out=Path(args.out), seeds=seeds, dataset=args.dataset, data_dir=args.data_dir,
                     limit_train=args.limit_train, limit_test=args.limit_test,
                     threads=args.threads if args.threads is not None else default_threads(),
                     extra=BenchSpec.parse_extra(args.extra),
                     bp_extra=BenchSpec.parse_extra(args.bp_extra, "--bp-extra"), timeout=args.timeout,
                     mmap_threshold=args.mmap_threshold)


def report(spec: BenchSpec, plots: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Write results.csv, results.json, table.md and the plots from the cells on disk."""
    rows = collect_rows(spec)
    settings = {"models": list(spec.models), "algos": list(spec.algos), "epochs": spec.epochs,
                "seeds": list(spec.seeds), "dataset": spec.dataset, "limit_train": spec.limit_train,
                "limit_test": spec.limit_test, "threads": spec.threads, "extra": list(spec.extra),
                "bp_extra": list(spec.bp_extra), "mmap_threshold": spec.mmap_threshold,
                "machine": f"{platform.machine()} {platform.processor() or platform.platform()}"}
    out = Path(spec.out)
    jpath, cpath = write_results(rows, out, settings)
    agg = aggregate(rows)
    write_text_atomic(out / "table.md", make_table(rows, agg, settings))
    log(f"wrote {cpath}, {jpath}, {out / 'table.md'}")
    if plots:
        files, why = write_plots(agg, out)
        log(why if why else "wrote " + ", ".join(str(f) for f in files))
    return rows


def run_bench(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    """The `ffint8 bench` command: 0 when every cell finished, 1 when some failed."""
    spec = spec_from_args(args)
    validate(spec)
    try:
        Path(spec.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {spec.out}: cannot create the directory ({exc.strerror})") from None
    log(f"bench: {len(spec.cells())} cells ({', '.join(spec.models)} x {', '.join(spec.algos)} x "
        f"seeds {','.join(map(str, spec.seeds))}), {spec.epochs} epochs, {spec.threads} threads")
    outcomes = run_matrix(spec, log)
    report(spec, plots=not args.no_plots, log=log)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        log(f"{len(failed)} of {len(outcomes)} cells failed: " + ", ".join(o.cell.name for o in failed))
        return 1
    return 0
