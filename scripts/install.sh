#!/usr/bin/env bash
# Set up skyfleet in ./.venv from scratch: PyTorch first (so nothing pulls a multi-GB CUDA build by
# accident), then the project with the extras a local user needs. Safe to run again.
#   TORCH_SPEC   the torch requirement (default: keep an installed torch, else torch==2.13.0)
#   PYTHON       the interpreter to build the venv from (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
python -m pip install --quiet -e ".[train,sky,plot,dev]"
# Prepare the offline corpus and tokenizers once (cached under $SKYFLEET_CACHE, default ~/.cache/skyfleet).
python train/prepare.py --source offline >/dev/null
echo "skyfleet installed in .venv (activate with: . .venv/bin/activate)"
