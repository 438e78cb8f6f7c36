"""benchmarks/unit_accuracy.py on a tiny trained MLP: one line per unit, accuracies that parse."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "unit_accuracy.py"


def test_one_line_per_unit(tmp_path):
    out = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "ffint8", "train", "--dataset", "synthetic",
                            "--hidden", "32,16,8", "--epochs", "1", "--limit-train", "64",
                            "--limit-test", "20", "--threads", "1", "--no-progress",
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    res = subprocess.run([sys.executable, str(SCRIPT), str(out / "checkpoint.pt"),
                          "--limit-test", "20"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = re.findall(r"unit\s+(\d+): alone\s+([\d.]+)%\s+units 1..(\d+):\s+([\d.]+)%", res.stdout)
    assert [int(r[0]) for r in rows] == [1, 2, 3] == [int(r[2]) for r in rows]
    assert all(0 <= float(r[1]) <= 100 and 0 <= float(r[3]) <= 100 for r in rows)
    assert rows[0][1] == rows[0][3]  # unit 1 alone is the sum of units 1..1


def test_missing_checkpoint_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.pt")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "nope.pt" in res.stderr and "Traceback" not in res.stderr
