"""benchmarks/ff_ablation.py end to end on a small MNIST-format directory the test writes: cells
trained and rescored, skipped when done, and tabulated (issue 8 asks for MNIST via --data-dir)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from ffint8.data import write_idx
from ffint8.train.run import evaluate_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ff_ablation.py"


def _mnist_dir(d: Path) -> Path:
    """Ten classes, each a bright 4x4 patch at its own place plus noise: learnable in an epoch."""
    d.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 300), ("t10k", 60)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=gen, dtype=torch.uint8)
        for i, c in enumerate(labels.tolist()):
            images[i, 2 + 2 * c : 6 + 2 * c, 4:8] = 250
        write_idx(d / f"{split}-images-idx3-ubyte", images)
        write_idx(d / f"{split}-labels-idx1-ubyte", labels.to(torch.uint8))
    return d


def _run(*args: str) -> str:
    res = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_run_rescore_skip_and_table_on_mnist(tmp_path):
    data, out = _mnist_dir(tmp_path / "mnist"), tmp_path / "ablation"
    common = ["--algos", "ff-int8", "--seeds", "0", "--epochs", "1", "--dataset", "mnist",
              "--data-dir", str(data), "--threads", "1", "--out", str(out)]
    levers = ["default", "default-peer", "default-peer-all"]
    # default-peer-all rescores default-peer's model (prediction only), so it comes after it
    _run("run", "--levers", ",".join(levers), *common)
    cells = {lv: out / "mnist" / lv / "ff-int8" / "seed0" for lv in levers}
    m = {lv: json.loads((d / "metrics.json").read_text()) for lv, d in cells.items()}
    assert m["default"]["config"]["ff"]["peer_weight"] == 0.03  # the shipped defaults
    assert m["default-peer"]["config"]["ff"]["peer_weight"] == 0.0
    rescored = m["default-peer-all"]
    assert not (cells["default-peer-all"] / "model.pt").exists()  # rescored, not trained
    assert rescored["rescored_from"] == str(cells["default-peer"])
    assert rescored["rescore_flags"] == ["--predict-units", "all"]  # eval takes no --peer-weight
    want = evaluate_checkpoint(cells["default-peer"] / "model.pt", data_dir=str(data),
                               predict_units="all")
    assert rescored["test_accuracy"] == want["test_accuracy"]

    again = _run("run", "--levers", ",".join(levers), *common)
    assert again.count("done before, skipped") == 3

    table = _run("table", "--out", str(out))
    assert "mnist:" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.split()[1:2] == ["ff-int8"]}
    assert set(rows) == set(levers)
    # lever, algo, n, mean, ±, sd, gain, time, epochs
    assert float(rows["default"][3]) == round(100 * m["default"]["test_accuracy"], 2)
