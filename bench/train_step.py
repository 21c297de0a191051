"""Training throughput of train/train.py: tokens/s and steps/s for the CPU preset, and for the GPU
preset (with MFU and peak memory) when CUDA is present.

    python bench/train_step.py                    # cpu preset, 20 s budget (+ gpu preset, 300 s, on CUDA)
    python bench/train_step.py --budget 10 --gpu-budget 60 --presets cpu tiny

It runs the real script as an experiment would (a subprocess, the preset's defaults, offline data for
CPU presets) and reads its `---` summary, so the figures are exactly what the fleet would record. The
last lines are `key: value`, prefixed by the preset (e.g. `cpu_tokens_per_sec: 6100`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TRAIN_PY = Path(__file__).resolve().parents[1] / "train" / "train.py"
REPORTED = ("tokens_per_sec", "steps_per_sec", "mfu_percent", "peak_memory_mb", "num_steps", "training_seconds",
            "val_bpb", "num_params_M")


def run_preset(preset: str, budget: float) -> dict[str, str]:
    env = {**os.environ, "PRESET": preset, "TIME_BUDGET": str(budget)}
    print(f"bench: PRESET={preset} TIME_BUDGET={budget:g} python {TRAIN_PY}", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, str(TRAIN_PY)], env=env, capture_output=True, text=True)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or "---" not in lines:
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-2000:])
        raise SystemExit(f"bench: PRESET={preset} run failed with exit code {result.returncode}")
    summary_lines = lines[len(lines) - lines[::-1].index("---"):]
    return dict(line.split(": ", 1) for line in summary_lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=None, help="default: cpu, plus gpu when CUDA is present")
    parser.add_argument("--budget", type=float, default=20.0, help="TIME_BUDGET for CPU presets (seconds)")
    parser.add_argument("--gpu-budget", type=float, default=300.0, help="TIME_BUDGET for the gpu preset")
    args = parser.parse_args()
    presets = args.presets
    if presets is None:
        presets = ["cpu"]
        try:
            import torch

            if torch.cuda.is_available():
                presets.append("gpu")
        except ImportError:
            pass
    results = {p: run_preset(p, args.gpu_budget if p == "gpu" else args.budget) for p in presets}
    for preset, summary in results.items():
        print(f"{preset}_device: {summary.get('device', 'unknown')}")
        for key in REPORTED:
            print(f"{preset}_{key}: {summary.get(key, 'unknown')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
