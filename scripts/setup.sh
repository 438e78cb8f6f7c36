#!/usr/bin/env bash
# Set up ff-int8 on a fresh Debian/Ubuntu machine: the Fashion-MNIST package (where apt-get is
# available), a virtual environment in .venv with torch pinned to 2.13.0 (a CPU build; an unpinned
# torch pulls a multi-GB CUDA build), and the package itself in editable mode with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist \
    || echo "setup: could not install dataset-fashion-mnist; pass --data-dir to ffint8 train" >&2
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==${FFINT8_TORCH:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
