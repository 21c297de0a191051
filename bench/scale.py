"""Does the fleet's control cost stay flat as the ledger grows? N trivial experiments, really run.

Builds a ledger of N experiments (default 10,000) by running them: one `fleet wave` of N trivial
jobs (each prints a result and exits) on the local backend with many slots, driven by the real
controller (`Controller.run`, in a child process that records how long each cycle takes). At 0%,
50% and 100% of N done it prints:

- `cycle_seconds`: the median controller cycle over the window (read every queue, record what
  finished, refill the queues);
- `status_seconds`, `watch_frame_seconds`, `results_seconds`: `fleet status --json`, one frame of
  `fleet watch --once` and `fleet results --limit 20`, each run in-process (median of 3; Python's
  start-up is not counted, `command_seconds` at the end shows one whole `fleet status` process);
- `experiments_per_s`: experiments finished per second over the window;
- `fleet_mb`: the size of `.fleet/` (ledger, slot queues, logs).

Windows are W = max(100, 5% of N) finishes: the first W after the slots have filled, the W before
50%, and the last W before the queues begin to drain (the last slots x depth experiments). It ends
with the ratios, which do not depend on the machine's speed:
`throughput_ratio_end_vs_start` (end over start experiments/s) and `cycle_ratio_end_vs_start`.

    python bench/scale.py [--experiments 10000] [--slots 16] [--depth 2] [--dir DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A trivial job: a result whose val_bpb varies with the experiment, so the leaderboard has an order.
TASK = """\
name: trivial
workdir: .
run: |
  echo ---; echo "val_bpb: 1.$(( DEPTH * 7919 % 100000 ))"; echo "num_steps: 1"
"""


def controller_child(root: Path, cycles_file: Path) -> int:
    """The controller, in its own process as in real use, timing each cycle into `cycles_file`."""
    os.chdir(root)
    from fleet.backends import make_backend
    from fleet.config import load_config
    from fleet.core.controller import Controller
    from fleet.core.daemon import controller_lock
    from fleet.core.ledger import Ledger
    from fleet.types import ClusterState
    from fleet.workspace import Workspace

    workspace = Workspace(root).ensure()
    ledger = Ledger(workspace.ledger_path)
    with controller_lock(workspace) as got, open(cycles_file, "a", buffering=1) as out:
        if not got:
            raise SystemExit("another controller holds this workspace")
        out.write("ready\n")
        while not (ledger.has_unfinished_work() and ledger.clusters([ClusterState.UP])):
            time.sleep(0.05)  # the bench submits the wave once this controller holds the lock
        controller = Controller(workspace, ledger, make_backend("local", workspace, load_config(root)), load_config(root))
        cycle = controller.cycle

        def timed_cycle():
            start, cpu = time.perf_counter(), time.process_time()
            report = cycle()
            out.write(f"{time.time():.4f} {time.perf_counter() - start:.5f} {time.process_time() - cpu:.5f} "
                      f"{report.finished}\n")
            return report

        controller.cycle = timed_cycle
        controller.run(poll_s=0.2, idle_exit_s=2.0)
    return 0


def in_process(args: list[str], repeat: int = 3) -> float:
    """Median seconds of `fleet <args>` run in this process, its output discarded."""
    from fleet.cli.main import main as fleet

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = fleet(args)
        times.append(time.perf_counter() - start)
        if code != 0:
            raise SystemExit(f"`fleet {' '.join(args)}` exited {code}")
    return statistics.median(times)


def size_mb(path: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total / 1e6


@dataclass(frozen=True)
class Cycle:
    at: float  # when it ended
    seconds: float  # wall-clock
    cpu_seconds: float  # the controller process's own CPU time: what other load on the machine hardly moves
    finished: int  # experiments it recorded


def read_cycles(path: Path) -> list[Cycle]:
    lines = path.read_text().splitlines()[1:]
    return [Cycle(float(t), float(s), float(c), int(f)) for t, s, c, f in (line.split() for line in lines
                                                                            if line.count(" ") == 3)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=16, help="local slots (default 16)")
    parser.add_argument("--depth", type=int, default=2, help="queue depth per slot (default 2, the fleet's default)")
    parser.add_argument("--dir", type=Path, help="where to build the project (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the project directory afterwards")
    parser.add_argument("--controller-child", nargs=2, metavar=("ROOT", "CYCLES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.controller_child:
        return controller_child(Path(args.controller_child[0]), Path(args.controller_child[1]))

    n = args.experiments
    root = Path(tempfile.mkdtemp(prefix="fleet-scale-", dir=args.dir))
    shutil.copytree(REPO / "tests" / "fixtures" / "tinywork" / "train", root / "train")
    (root / "experiment.yaml").write_text(TASK)
    (root / "fleet.yaml").write_text(f"queue_depth: {args.depth}\nlocal: {{slots: {args.slots}}}\n")
    (root / "wave.yaml").write_text("name: scale\ngrid:\n  DEPTH: [" + ", ".join(map(str, range(1, n + 1))) + "]\n")
    os.environ.update(FLEET_ROOT=str(root), FLEET_RUNNER_IDLE_S="10")
    os.environ.pop("FLEET_LOCAL_ACCELERATORS", None)
    os.chdir(root)
    cycles_file = root / "cycles.txt"
    child = subprocess.Popen([sys.executable, *os.environ.get("SCALE_CHILD_PREFIX", "").split(), __file__, "--controller-child", str(root), str(cycles_file)])
    from fleet.core.ledger import Ledger
    from fleet.types import ExperimentState

    try:
        while not (cycles_file.exists() and cycles_file.read_text().startswith("ready")):
            time.sleep(0.05)
        began = time.time()
        submit_s = in_process(["wave", "wave.yaml", "-q", "--yes"], repeat=1)
        print(f"running {n} trivial experiments on {args.slots} slots (queue depth {args.depth}); "
              f"`fleet wave` took {submit_s:.1f}s", file=sys.stderr)
        ledger = Ledger(root / ".fleet" / "ledger.db")
        checkpoints = {0: measure_views()}
        report(0, 0, checkpoints[0], ledger, root)
        half_done = False
        while True:
            done = sum(v for k, v in ledger.counts().items() if ExperimentState(k).finished)
            if not half_done and done >= n // 2:
                checkpoints[50] = measure_views()
                report(50, done, checkpoints[50], ledger, root)
                half_done = True
            if done >= n:
                break
            if child.poll() is not None:
                raise SystemExit(f"the controller stopped at {done}/{n}: {ledger.get_meta('controller_error')}")
            time.sleep(0.5)
        elapsed = time.time() - began
        checkpoints[100] = measure_views()
        report(100, n, checkpoints[100], ledger, root)
        summarize(ledger, read_cycles(cycles_file), n, args.slots * args.depth, checkpoints, elapsed)
    finally:
        with contextlib.suppress(Exception):
            child.wait(timeout=30)
        if child.poll() is None:
            child.kill()
        with contextlib.redirect_stdout(io.StringIO()):
            from fleet.cli.main import main as fleet

            fleet(["down", "--all", "-y", "-q"])
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def measure_views() -> dict[str, float]:
    return {"status_seconds": in_process(["status", "--json"]),
            "watch_frame_seconds": in_process(["watch", "--once"]),
            "results_seconds": in_process(["results", "--limit", "20"])}


def report(percent: int, done: int, views: dict[str, float], ledger, root: Path) -> None:
    print(f"at {percent}% ({done} done): " + ", ".join(f"{k} {v:.3f}" for k, v in views.items())
          + f", .fleet {size_mb(root / '.fleet'):.1f} MB", file=sys.stderr)
    views["fleet_mb"] = size_mb(root / ".fleet")


def window_rate(ends: list[float], lo: int, hi: int, parts: int = 5) -> float:
    """Experiments finished per second between the lo-th and hi-th finish: the median over `parts`
    sub-windows, so a passing burst of other load on the machine moves one of them, not the figure."""
    edges = [lo + (hi - lo) * i // parts for i in range(parts + 1)]
    return statistics.median((b - a) / max(ends[b] - ends[a], 1e-9) for a, b in zip(edges, edges[1:]))


def summarize(ledger, cycles: list[Cycle], n: int, fill: int,
              checkpoints: dict[int, dict[str, float]], elapsed: float) -> None:
    ends = sorted(e.finished_at for e in ledger.experiments() if e.finished_at is not None)
    width = max(100, n // 10)
    fill = min(fill, max(0, (n - 3 * width) // 2))
    windows = {0: (fill, fill + width), 50: (n // 2 - width, n // 2), 100: (n - fill - width, n - fill)}
    rates, cycle_medians, cpu_ms = {}, {}, {}
    for percent, (lo, hi) in windows.items():
        lo, hi = max(0, lo), min(len(ends) - 1, hi)
        rates[percent] = window_rate(ends, lo, hi)
        inside = [c for c in cycles if ends[lo] <= c.at <= ends[hi]] or cycles
        cycle_medians[percent] = statistics.median(c.seconds for c in inside)
        cpu_ms[percent] = 1000 * sum(c.cpu_seconds for c in inside) / max(1, sum(c.finished for c in inside))
    for percent in (0, 50, 100):
        views = checkpoints[percent]
        print(f"--- {percent}%")
        print(f"cycle_seconds: {cycle_medians[percent]:.4f}")
        print(f"controller_cpu_ms_per_experiment: {cpu_ms[percent]:.2f}")
        for key in ("status_seconds", "watch_frame_seconds", "results_seconds"):
            print(f"{key}: {views[key]:.3f}")
        print(f"experiments_per_s: {rates[percent]:.2f}")
        print(f"fleet_mb: {views['fleet_mb']:.1f}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fleet", "status", "--json"], stdout=subprocess.DEVNULL, check=True)
    print("---")
    print(f"experiments: {n}")
    print(f"wall_seconds: {elapsed:.0f}")
    print(f"command_seconds: {time.perf_counter() - start:.3f}")
    print(f"controller_cpu_ratio_end_vs_start: {cpu_ms[100] / cpu_ms[0]:.3f}")
    print(f"throughput_ratio_end_vs_start: {rates[100] / rates[0]:.3f}")
    print(f"cycle_ratio_end_vs_start: {cycle_medians[100] / cycle_medians[0]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
