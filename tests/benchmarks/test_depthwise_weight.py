"""benchmarks/depthwise_weight.py on one image: every depthwise shape timed, the sums and ratios
printed."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "depthwise_weight.py"

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None or os.environ.get("FFINT8_NO_CKERNEL") == "1",
    reason="needs the C kernels")


def test_prints_every_depthwise_shape_and_the_ratios():
    res = subprocess.run([sys.executable, str(SCRIPT), "--batch", "1", "--repeats", "1",
                          "--width", "0.25"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "== mobilenetv2 ==" in out and "== efficientnet_b0 ==" in out
    rows = re.findall(r"^\s*\d+ch\s+\d+x\d+\s+(\d)x\d s(\d) x(\d+)", out, re.M)
    assert len(rows) >= 2 * 5 and {k for k, _, _ in rows} == {"3", "5"}  # 5x5 in EfficientNet
    for block in out.split("== ")[1:]:
        sums = re.search(r"sum \(weighted\)\s+fp32-cl\s+([\d.]+) c-loop\s+([\d.]+)", block)
        ratio = re.search(r"c-loop / fp32-cl: ([\d.]+)", block)
        assert sums and ratio, block
        f32, c = (float(v) for v in sums.groups())
        assert c > 0 and abs(float(ratio.group(1)) - c / f32) < 0.01 + 0.01 * c / f32
