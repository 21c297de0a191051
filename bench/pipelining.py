"""How busy does the local backend keep its slots? N slots x M one-second sleep experiments.

Prints `utilization: X` = busy slot-seconds / (slots x wall seconds), with the wall clock running
from the first job's start to the last job's end: the time the fleet is supposed to keep every
slot busy. `utilization_from_submit` also counts the one-time start-up (snapshot, knob check,
controller and runner start) from the moment `fleet wave` is called.

    python bench/pipelining.py [--slots 4] [--jobs 40] [--seconds 1.0]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASK = """\
name: sleeper
workdir: .
run: |
  cd "snapshots/$FLEET_SNAPSHOT" && sleep "$SLEEP_S"
  echo ---; echo "val_bpb: 1.0"; echo "num_steps: 1"
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=40, help="experiments per slot")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--depth", type=int, default=2, help="queue depth per slot")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    shutil.copytree(REPO / "tests" / "fixtures" / "tinywork" / "train", root / "train")
    (root / "experiment.yaml").write_text(TASK)
    (root / "fleet.yaml").write_text(f"queue_depth: {args.depth}\nlocal: {{slots: {args.slots}}}\n")
    total = args.slots * args.jobs
    depths = ", ".join(str(i + 1) for i in range(total))
    (root / "wave.yaml").write_text(f"name: bench\nenv: {{SLEEP_S: {args.seconds}}}\ngrid:\n  DEPTH: [{depths}]\n")
    os.environ.update(FLEET_ROOT=str(root), FLEET_RUNNER_IDLE_S="5")
    os.environ.pop("FLEET_LOCAL_ACCELERATORS", None)
    os.chdir(root)

    # SLEEP_S is not one of the tiny workload's knobs: declare it so the wave validates.
    knobs = root / "train" / "train.py"
    knobs.write_text(knobs.read_text().replace("HANG = Knob(0, min=0)\n", "HANG = Knob(0, min=0)\nSLEEP_S = Knob(1.0, min=0.0)\n"))

    from fleet.cli.main import main as fleet
    from fleet.core.ledger import Ledger

    submitted = time.time()
    assert fleet(["wave", "wave.yaml", "-q"]) == 0, "submission failed"
    ledger = Ledger(root / ".fleet" / "ledger.db")
    print(f"running {total} x {args.seconds:g}s jobs on {args.slots} slots (queue depth {args.depth})…", file=sys.stderr)
    while ledger.has_unfinished_work():
        time.sleep(0.2)
    # Each job's start and end as its slot recorded them (the controller copies them into the ledger).
    spans = [(a.started_at, a.ended_at) for a in ledger.attempts() if a.state == "succeeded"]
    assert len(spans) == total, f"{len(spans)} jobs ran, expected {total}"
    busy = sum(end - start for start, end in spans)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    counts = ledger.counts()
    fleet(["down", "--all", "-y", "-q"])
    shutil.rmtree(root, ignore_errors=True)
    print(f"experiments: {counts}")
    print(f"busy_slot_seconds: {busy:.2f}")
    print(f"wall_seconds: {last - first:.2f}")
    print(f"startup_seconds: {first - submitted:.2f}")
    print(f"utilization_from_submit: {busy / (args.slots * (last - submitted)):.4f}")
    print(f"utilization: {busy / (args.slots * (last - first)):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
