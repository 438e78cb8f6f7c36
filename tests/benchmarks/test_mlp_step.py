"""benchmarks/mlp_step.py on random images: every algorithm timed, the ratios printed."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mlp_step.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600)


def test_prints_each_algorithm_and_the_ratios():
    res = run("--data-dir", "synthetic", "--limit-train", "96", "--rounds", "1",
              "--batch-sizes", "16,32", "--algos", "ff-int8,ff-int8-plain,bp-fp32")
    assert res.returncode == 0, res.stderr
    for bs in (16, 32):
        block = res.stdout.split(f"batch {bs}:")[1].split("batch")[0]
        rows = re.findall(r"(\S+)\s+([\d.]+) ms/step\s+([\d.]+) s per 60,000 images", block)
        assert [r[0] for r in rows] == ["ff-int8", "ff-int8-plain", "bp-fp32"]
        assert all(float(r[1]) > 0 for r in rows)
        ratios = re.findall(r"([\d.]+)x bp-fp32", block)
        assert len(ratios) == 3 and float(ratios[2]) == 1.0
        assert re.search(r"factored / plain ff-int8: [\d.]+", block)


def test_bad_flags_are_one_line_errors():
    res = run("--algos", "ff-int9")
    assert res.returncode == 2 and "--algos: unknown ff-int9" in res.stderr
    res = run("--batch-sizes", "32,x")
    assert res.returncode == 2 and "--batch-sizes" in res.stderr
    res = run("--data-dir", "/nonexistent/fashion")
    assert res.returncode != 0 and "/nonexistent/fashion" in res.stderr


def test_adam8_for_the_ff_algorithms():
    res = run("--data-dir", "synthetic", "--limit-train", "64", "--rounds", "1",
              "--batch-sizes", "32", "--algos", "ff-int8,ff-int8-plain", "--optimizer", "adam8")
    assert res.returncode == 0, res.stderr
    assert re.search(r"factored / plain ff-int8: [\d.]+", res.stdout)


def test_c_rows_against_int8_mm_rows():
    # ff-int8-mm forms the factored step's rows with int8_mm; both trained the same epochs on
    # the same data, so their weights must agree (where the CPU has no VNNI both use int8_mm)
    for opt in ("adam", "adam8"):
        res = run("--data-dir", "synthetic", "--limit-train", "64", "--rounds", "1",
                  "--batch-sizes", "32", "--algos", "ff-int8,ff-int8-mm", "--optimizer", opt)
        assert res.returncode == 0, res.stderr
        assert re.search(r"C rows / int8_mm rows: [\d.]+ \(same weights: yes\)", res.stdout), opt
