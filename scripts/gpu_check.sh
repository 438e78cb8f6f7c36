#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one command for a borrowed GPU machine (CI has none):
#
#   bash scripts/gpu_check.sh OUT_DIR [DATA_DIR] [TRAIN_SECONDS]
#
# 1. `ffint8 info` (torch, CUDA, the kernels auto picks);
# 2. every CUDA test of the suite (`-k cuda`; elsewhere they skip);
# 3. issue 3d on the GPU: ff-int8 against ff-fp32 epoch time, full-width ResNet-18, chain;
# 4. issue 3b: `ffint8 train --model $MODEL --device cuda` on Fashion-MNIST for at most
#    TRAIN_SECONDS (default 240): its per-epoch log is OUT_DIR/train.txt and epochs.csv.
#
# It runs from the checkout with $PYTHON (default python3; torch with CUDA, pytest, pyyaml, tqdm,
# pillow installed), PYTHONPATH=src, nothing installed. DEVICE (default cuda), MODEL (default
# resnet18) and SPEED_SAMPLES (default 1024) may be set. Every step runs even if one before
# it failed; the exit status is the tests'.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [DATA_DIR] [TRAIN_SECONDS]}
data=${2:-/usr/share/datasets/fashion-mnist}
budget=${3:-240}
device=${DEVICE:-cuda}
model=${MODEL:-resnet18}
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
echo "== info"
"$py" -m ffint8 info 2>&1 | tee "$out/info.txt"
echo "== CUDA tests"
"$py" -m pytest -q -p no:cacheprovider -rs -k cuda tests 2>&1 | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}
echo "== ff-int8 / ff-fp32 epoch time"
"$py" benchmarks/cnn_ff.py speed --model resnet18 --width 1 --look-ahead chain \
  --limit-train "${SPEED_SAMPLES:-1024}" --rounds 3 --device "$device" --data-dir "$data" \
  2>&1 | tee "$out/speed.txt"
echo "== $model on Fashion-MNIST, at most ${budget}s"
run=$(mktemp -d)
timeout "$budget" "$py" -m ffint8 train --model "$model" --device "$device" --data-dir "$data" \
  --no-progress --out "$run" 2>&1 | tee "$out/train.txt"
cp "$run"/epochs.csv "$run"/metrics.json "$out"/ 2>/dev/null
rm -rf "$run"
exit "$tests"
