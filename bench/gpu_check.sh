#!/usr/bin/env bash
# The device check (bench/gpu_check.py) on a machine with one H100/H200, its own python3 with PyTorch,
# and the pack carried along (.gpucheck/, built beforehand with `python bench/gpu_check.py --pack`).
# Figures go to $OUT/gpu_check.txt (the device tool's output folder) or ./gpu_check.txt; arguments
# pass through (e.g. --budget 60 --skip-probes for a quicker rerun).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv,noheader >&2 || true
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
