"""The bench matrix: models x algorithms x seeds, each cell one `ffint8 train` in a fresh process.

A fresh process per cell is what makes peak memory comparable (a process's high-water mark never
goes down) and keeps one cell's crash from taking the others down. Cells write into
OUT/cells/<name>; a cell whose metrics.json exists is finished and skipped on a rerun.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ffint8
from ffint8.errors import ConfigError
from ffint8.fileio import write_text_atomic

# Flags the bench sets for every cell; --extra may not set them.
OWN_FLAGS = ("--model", "--algo", "--seed", "--epochs", "--dataset", "--data-dir", "--limit-train",
             "--limit-test", "--threads", "--out", "--resume", "--no-progress")
STDERR_TAIL = 2000  # characters of a failed cell's stderr kept in its record


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# glibc's largest M_MMAP_THRESHOLD on 64-bit machines (DEFAULT_MMAP_THRESHOLD_MAX)
MAX_MMAP_THRESHOLD = 32 * 2**20


@dataclass(frozen=True)
class BenchSpec:
    """What `ffint8 bench` runs; validated on construction."""

    models: tuple[str, ...]
    algos: tuple[str, ...]
    epochs: int
    out: Path
    seeds: tuple[int, ...] = (0,)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    threads: int = 1
    extra: tuple[str, ...] = ()
    bp_extra: tuple[str, ...] = ()  # after extra, for the backprop cells only (their own lr, ...)
    timeout: float | None = None  # seconds per cell
    mmap_threshold: int | None = None  # glibc's MALLOC_MMAP_THRESHOLD_ for every cell, bytes

    def __post_init__(self) -> None:
        for flag, items in (("--models", self.models), ("--algos", self.algos), ("--seeds", self.seeds)):
            if not items:
                raise ConfigError(f"{flag} must name at least one value")
            if len(set(items)) != len(items):
                raise ConfigError(f"{flag} lists a value twice: {','.join(map(str, items))}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.mmap_threshold is not None and not 0 < self.mmap_threshold <= MAX_MMAP_THRESHOLD:
            raise ConfigError(f"--mmap-threshold must be 1 to {MAX_MMAP_THRESHOLD} bytes (glibc's "
                              f"largest), got {self.mmap_threshold}")
        for flag, tokens in (("--extra", self.extra), ("--bp-extra", self.bp_extra)):
            for token in tokens:
                if token.split("=", 1)[0] in OWN_FLAGS:
                    raise ConfigError(f"{flag} may not set {token.split('=', 1)[0]}: the bench sets "
                                      "it for every cell (use the bench's own flag)")

    @classmethod
    def parse_extra(cls, text: str, flag: str = "--extra") -> tuple[str, ...]:
        try:
            return tuple(shlex.split(text or ""))
        except ValueError as exc:
            raise ConfigError(f"{flag} {text!r}: {exc}") from None

    def extra_for(self, algo: str) -> tuple[str, ...]:
        """The further `ffint8 train` flags of a cell of algo: extra, then bp_extra for bp-*."""
        return self.extra + (self.bp_extra if algo.startswith("bp-") else ())

    def cells(self) -> list[Cell]:
        return [Cell(m, self.dataset, a, s) for m in self.models for a in self.algos for s in self.seeds]


@dataclass(frozen=True)
class Cell:
    model: str
    dataset: str
    algo: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}_{self.dataset}_{self.algo}_s{self.seed}"

    def directory(self, spec: BenchSpec) -> Path:
        return Path(spec.out) / "cells" / self.name

    def train_argv(self, spec: BenchSpec) -> list[str]:
        """The `ffint8 train` arguments of this cell."""
        argv = ["train", "--model", self.model, "--algo", self.algo, "--dataset", self.dataset,
                "--epochs", str(spec.epochs), "--seed", str(self.seed)]
        if spec.data_dir is not None:
            argv += ["--data-dir", spec.data_dir]
        if spec.limit_train is not None:
            argv += ["--limit-train", str(spec.limit_train)]
        if spec.limit_test is not None:
            argv += ["--limit-test", str(spec.limit_test)]
        return [*argv, *spec.extra_for(self.algo), "--out", str(self.directory(spec)), "--no-progress",
                "--threads", str(spec.threads)]


def validate(spec: BenchSpec) -> None:
    """Check every name and every cell's full configuration before anything runs."""
    from ffint8.data import DATASETS
    from ffint8.models import list_models
    from ffint8.train.config import ALGOS

    unknown = [m for m in spec.models if m not in list_models()]
    if unknown:
        raise ConfigError(f"--models: unknown model {unknown[0]!r}; choose from: {', '.join(list_models())}")
    unknown = [a for a in spec.algos if a not in ALGOS]
    if unknown:
        raise ConfigError(f"--algos: unknown algorithm {unknown[0]!r}; choose from: {', '.join(ALGOS)}")
    if spec.dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset {spec.dataset!r}; choose from: {', '.join(DATASETS)}")
    from ffint8 import cli

    for cell in spec.cells():
        argv = cell.train_argv(spec)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = cli.parse_args(argv)  # presets and config files as `ffint8 train` reads them
        except SystemExit:
            why = (err.getvalue().strip().splitlines() or ["invalid arguments"])[-1]
            flags = "--extra" + (" / --bp-extra" if spec.bp_extra else "")
            raise ConfigError(f"{flags} {shlex.join(spec.extra_for(cell.algo))!r}: {why}") from None
        try:
            cli.check_model_options(args, argv)
            cli.config_from_args(args)
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.name}: {exc}") from None


def child_env(threads: int, mmap_threshold: int | None = None) -> dict[str, str]:
    """The environment of a cell: this ffint8 importable, math libraries held to `threads`;
    mmap_threshold: glibc's malloc then gives every block of that many bytes or more its own
    mapping, returned to the system when freed (MALLOC_MMAP_THRESHOLD_; other C libraries
    ignore it)."""
    env = dict(os.environ)
    src = str(Path(ffint8.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    return env


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: str  # "done", "skipped" (finished before), "failed"
    seconds: float
    error: str | None = None


def run_cell(spec: BenchSpec, cell: Cell) -> CellOutcome:
    """Run one cell unless its metrics.json exists; a failure is written to error.json."""
    out = cell.directory(spec)
    if (out / "metrics.json").is_file():
        return CellOutcome(cell, "skipped", 0.0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "error.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ffint8", *cell.train_argv(spec)]
    start = time.perf_counter()
    with open(out / "stdout.txt", "w") as so, open(out / "stderr.txt", "w") as se:
        try:
            rc = subprocess.run(cmd, stdout=so, stderr=se, env=child_env(spec.threads, spec.mmap_threshold),
                                timeout=spec.timeout).returncode
            why = f"exit status {rc}"
        except subprocess.TimeoutExpired:
            rc, why = -1, f"timed out after {spec.timeout:g}s"
    seconds = time.perf_counter() - start
    if rc == 0 and (out / "metrics.json").is_file():
        return CellOutcome(cell, "done", seconds)
    tail = (out / "stderr.txt").read_text(errors="replace")[-STDERR_TAIL:]
    error = f"{why}: {tail.strip() or '(no stderr)'}"
    write_text_atomic(out / "error.json", json.dumps(
        {"cell": cell.name, "returncode": rc, "error": error, "command": shlex.join(cmd)}, indent=2) + "\n")
    return CellOutcome(cell, "failed", seconds, error)


def run_matrix(spec: BenchSpec, log: Callable[[str], None] = print) -> list[CellOutcome]:
    """Every cell in order, with a progress line before and after each."""
    cells = spec.cells()
    outcomes = []
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.name}"
        if (cell.directory(spec) / "metrics.json").is_file():
            log(f"{head}: finished before, skipped")
            outcomes.append(CellOutcome(cell, "skipped", 0.0))
            continue
        log(f"{head}: running")
        r = run_cell(spec, cell)
        if r.status == "failed":
            last = (r.error or "").strip().splitlines()[-1:] or [""]
            log(f"{head}: FAILED after {r.seconds:.1f}s ({last[0][:200]}); see "
                f"{cell.directory(spec) / 'stderr.txt'}")
        else:
            m = json.loads((cell.directory(spec) / "metrics.json").read_text())
            log(f"{head}: done in {r.seconds:.1f}s, test accuracy {100 * m['test_accuracy']:.2f}%, "
                f"training {m['train_seconds']:.1f}s")
        outcomes.append(r)
    return outcomes
