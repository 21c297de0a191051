"""Training throughput of train/train.py: tokens/s and steps/s for the CPU preset, and for the GPU
preset (with MFU and peak memory) when CUDA is present; optionally against another git revision.

    python bench/train_step.py                    # cpu preset, 20 s budget (+ gpu preset, 300 s, on CUDA)
    python bench/train_step.py --budget 10 --gpu-budget 60 --presets cpu tiny
    python bench/train_step.py --compare main --repeats 3   # this tree and main's train/, alternating

It runs the real script as an experiment would (a subprocess, the preset's defaults, offline data for
CPU presets) and reads its `---` summary, so the figures are exactly what the fleet would record. The
last lines are `key: value`, prefixed by the preset (e.g. `cpu_tokens_per_sec: 6100`); with --compare,
each figure is the median over the repeats and is followed by the revision's (`cpu_tokens_per_sec_main`)
and their ratio. Runs alternate between the two trees so that a machine busy with other work slows
both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train" / "train.py"
REPORTED = ("tokens_per_sec", "steps_per_sec", "mfu_percent", "peak_memory_mb", "num_steps", "training_seconds",
            "val_bpb", "num_params_M")
COMPARED = ("tokens_per_sec", "steps_per_sec")


def run_preset(preset: str, budget: float, train_py: Path = TRAIN_PY) -> dict[str, str]:
    env = {**os.environ, "PRESET": preset, "TIME_BUDGET": str(budget)}
    print(f"bench: PRESET={preset} TIME_BUDGET={budget:g} python {train_py}", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, str(train_py)], env=env, capture_output=True, text=True)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or "---" not in lines:
        sys.stderr.write(result.stdout[-2000:] + result.stderr[-2000:])
        raise SystemExit(f"bench: PRESET={preset} run of {train_py} failed with exit code {result.returncode}")
    summary_lines = lines[len(lines) - lines[::-1].index("---"):]
    return dict(line.split(": ", 1) for line in summary_lines)


def export_train_dir(revision: str, into: Path) -> Path:
    """train/ as it is at `revision` (git archive), under `into`; returns its train.py."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision, "train"], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"bench: cannot read train/ at {revision!r}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "train" / "train.py"


def median_of(summaries: list[dict[str, str]], key: str) -> str:
    try:
        return f"{statistics.median(float(s[key]) for s in summaries):g}"
    except (KeyError, ValueError):
        return summaries[-1].get(key, "unknown")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=None, help="default: cpu, plus gpu when CUDA is present")
    parser.add_argument("--budget", type=float, default=20.0, help="TIME_BUDGET for CPU presets (seconds)")
    parser.add_argument("--gpu-budget", type=float, default=300.0, help="TIME_BUDGET for the gpu preset")
    parser.add_argument("--compare", metavar="REVISION", help="also run train/ from this git revision (e.g. main)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per preset (and per tree); medians reported")
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
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"": TRAIN_PY}
        if args.compare:
            trees[args.compare] = export_train_dir(args.compare, Path(scratch))
        runs: dict[tuple[str, str], list[dict[str, str]]] = {}
        for _ in range(args.repeats):
            for preset in presets:
                for label, train_py in trees.items():
                    budget = args.gpu_budget if preset == "gpu" else args.budget
                    runs.setdefault((preset, label), []).append(run_preset(preset, budget, train_py))
    for preset in presets:
        mine = runs[(preset, "")]
        print(f"{preset}_device: {mine[-1].get('device', 'unknown')}")
        for key in REPORTED:
            print(f"{preset}_{key}: {median_of(mine, key)}")
            if args.compare and key in COMPARED:
                theirs = median_of(runs[(preset, args.compare)], key)
                print(f"{preset}_{key}_{args.compare}: {theirs}")
                try:
                    print(f"{preset}_{key}_ratio: {float(median_of(mine, key)) / float(theirs):.3f}")
                except (ValueError, ZeroDivisionError):
                    print(f"{preset}_{key}_ratio: unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
