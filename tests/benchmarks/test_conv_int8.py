"""benchmarks/conv_int8.py on a tiny batch: every ResNet-18 shape timed, and the sums printed."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "conv_int8.py"


def test_prints_every_shape_and_the_summed_ratio():
    res = subprocess.run([sys.executable, str(SCRIPT), "--batch", "1", "--size", "8",
                          "--repeats", "1", "--threads", "1", "--kernels", "float-exact"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.count("ResNet-18 sum (weighted)") == 2  # forward and weight
    assert len(re.findall(r"^\s*\d+->\s*\d+ ", out, re.M)) == 2 * 11  # 11 distinct shapes per op
    summed = re.search(r"forward \+ weight, summed.*\nfloat-exact\s+int8\s+([\d.]+) ms\s+fp32\s+"
                       r"([\d.]+) ms\s+ratio ([\d.]+)", out)
    assert summed, out
    i8, f32, ratio = (float(v) for v in summed.groups())
    assert i8 > 0 and f32 > 0 and abs(ratio - f32 / i8) < 0.01 + 0.01 * ratio
