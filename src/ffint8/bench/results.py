"""Bench results: one row per cell from its metrics.json (or error.json), as CSV and JSON, and
the mean over seeds per (model, dataset, algo)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from ffint8.bench.matrix import BenchSpec, Cell
from ffint8.fileio import atomic_path, write_text_atomic

OPS_KEYS = ("int8_mul", "int32_add", "fp32_mul", "fp32_add", "quantized")
# accuracy: test accuracy after the last epoch, a fraction (as in metrics.json); ops: per epoch.
ROW_FIELDS = ("model", "dataset", "algo", "seed", "status", "accuracy", "epochs", "train_seconds",
              "seconds_per_epoch", "peak_rss_mb", "train_memory_mb", "train_file_mb", "energy_j",
              "energy_source", "arith_energy_j", "ops", "error")
# train_file_mb: the file-backed part of train_memory_mb (library code first run in the loop;
# ffint8.measure.memory.MemoryReport.file_growth)
MEASURED = ("peak_rss_mb", "train_memory_mb", "train_file_mb", "energy_j", "energy_source",
            "arith_energy_j")
NUMERIC = ("accuracy", "train_seconds", "seconds_per_epoch", "peak_rss_mb", "train_memory_mb",
           "train_file_mb", "energy_j", "arith_energy_j")


def _measured(metrics: dict, key: str):
    """A measurement figure at the top level of metrics.json or under "measurement"; None if
    the run did not record it."""
    if key in metrics:
        return metrics[key]
    return (metrics.get("measurement") or {}).get(key)


def cell_row(spec: BenchSpec, cell: Cell) -> dict:
    """The results row of one cell: status "ok", "failed" or "missing" (not run yet)."""
    row: dict = dict.fromkeys(ROW_FIELDS)
    row.update(model=cell.model, dataset=cell.dataset, algo=cell.algo, seed=cell.seed,
               status="missing", cell=cell.name, accuracy_per_epoch=None)
    d = cell.directory(spec)
    if (d / "metrics.json").is_file():
        try:
            m = json.loads((d / "metrics.json").read_text())
            epochs = m["epochs"]
            row.update(status="ok", accuracy=m["test_accuracy"], epochs=len(epochs),
                       train_seconds=m["train_seconds"],
                       seconds_per_epoch=m["train_seconds"] / max(len(epochs), 1),
                       accuracy_per_epoch=[e["test_accuracy"] for e in epochs])
        except (ValueError, KeyError, TypeError) as exc:
            row.update(status="failed", error=f"{d / 'metrics.json'} unreadable: {exc!r}")
            return row
        for key in MEASURED:
            row[key] = _measured(m, key)
        ops = _measured(m, "ops")
        row["ops"] = ops.get("per_epoch", ops) if isinstance(ops, dict) else None
    elif (d / "error.json").is_file():
        try:
            err = json.loads((d / "error.json").read_text())["error"]
        except (ValueError, KeyError, TypeError):
            err = f"{d / 'error.json'} unreadable"
        row.update(status="failed", error=err)
    return row


def collect_rows(spec: BenchSpec) -> list[dict]:
    return [cell_row(spec, c) for c in spec.cells()]


def write_results(rows: list[dict], out: Path, settings: dict) -> tuple[Path, Path]:
    """OUT/results.json ({"settings", "rows"}) and OUT/results.csv (ops flattened to ops_*)."""
    out = Path(out)
    jpath, cpath = out / "results.json", out / "results.csv"
    write_text_atomic(jpath, json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    columns = [f for f in ROW_FIELDS if f != "ops"] + [f"ops_{k}" for k in OPS_KEYS]
    with atomic_path(cpath) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            flat = {k: ("" if r.get(k) is None else r[k]) for k in columns if not k.startswith("ops_")}
            ops = r.get("ops") or {}
            flat.update({f"ops_{k}": ops.get(k, "") for k in OPS_KEYS})
            w.writerow(flat)
    return jpath, cpath


def _mean(values: list) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(vals) if vals and len(vals) == len(values) else None


def aggregate(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """Mean over the seeds that finished, per (model, dataset, algo). A figure any finished
    seed lacks is None (no mean of a partial set). accuracy_std: over seeds (None for one)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["model"], r["dataset"], r["algo"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        agg = {k: _mean([r[k] for r in rs]) for k in NUMERIC}
        accs = [r["accuracy"] for r in rs]
        agg["accuracy_std"] = statistics.stdev(accs) if len(accs) > 1 else None
        agg["seeds"] = len(rs)
        agg["energy_source"] = ", ".join(sorted({str(r["energy_source"]) for r in rs
                                                 if r["energy_source"] is not None})) or None
        curves = [r["accuracy_per_epoch"] for r in rs if r["accuracy_per_epoch"]]
        n = min((len(c) for c in curves), default=0)
        agg["accuracy_per_epoch"] = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        out[key] = agg
    return out
