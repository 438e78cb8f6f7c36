"""benchmarks/cnn_ff.py speed on a small Fashion-MNIST-format directory the test writes: both
trainers timed, the ratio printed, on the device asked for."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffint8.data import write_idx

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cnn_ff.py"


def _fashion_dir(d: Path) -> Path:
    d.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("t10k", 10)):
        write_idx(d / f"{split}-images-idx3-ubyte",
                  torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte", (torch.arange(n) % 10).to(torch.uint8))
    return d


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")),
])
def test_speed_prints_rounds_and_the_ratio(tmp_path, device):
    data = _fashion_dir(tmp_path / "fashion")
    res = subprocess.run([sys.executable, str(SCRIPT), "speed", "--width", "0.125",
                          "--limit-train", "64", "--rounds", "1", "--look-ahead", "chain",
                          "--data-dir", str(data), "--device", device],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f", {device}" in res.stdout.splitlines()[0]
    m = re.search(r"round 1: ff-int8 ([\d.]+)s  ff-fp32 ([\d.]+)s  ratio ([\d.]+)", res.stdout)
    assert m, res.stdout
    i8, f32, ratio = (float(v) for v in m.groups())
    assert i8 > 0 and f32 > 0 and abs(ratio - i8 / f32) < 0.01 + 0.01 * ratio
    assert "median of per-round ratios" in res.stdout


def test_speed_on_a_missing_gpu_fails_naming_the_flag(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = subprocess.run([sys.executable, str(SCRIPT), "speed", "--device", "cuda",
                          "--data-dir", str(_fashion_dir(tmp_path / "f"))],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "cnn_ff.py: error: --device cuda" in res.stderr
    assert "Traceback" not in res.stderr
