"""How long does one control cycle over 64 SkyPilot clusters take when every SDK call costs 300 ms?

Drives the real SkyPilot backend over the fake SDK (`fleet.testing.fake_sky`, `FAKE_SKY_LATENCY_S`)
on N fake clusters (no setup; jobs just `sleep`). The queues are filled first, then, once the first
job on every cluster has finished, one cycle is timed:
read all 64 queues + fetch the logs of the jobs that finished + submit one job to each cluster
whose queue is short. Sequential SDK calls would cost about 64 x 0.3 s = 19 s per step.

- `backend_cycle_seconds`: that cycle with the backend's batched calls (`queues`, `logs_many`,
  `submit_many`: every request goes out, then all are collected).
- `controller_cycle_seconds`: `Controller.cycle()` from fleet/core/controller.py (ledger included), when
  it exists; the final `poll_cycle_seconds` line reports it, else the backend cycle.

    python bench/control_plane.py [--clusters 64] [--latency 0.3] [--job-seconds 2.0]
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
resources:
  infra: k8s
  accelerators: {H100: 1, H200: 1}
workdir: .
run: |
  cd "snapshots/$FLEET_SNAPSHOT" && sleep "$SLEEP_S"
  printf -- '---\\nval_bpb: 1.0\\nnum_steps: 1\\n'
"""
SNAPSHOT = "bench00000000000"


def wait_first_jobs_done(backend, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        queues = backend.queues(names)
        done = sum(1 for q in queues.values() if isinstance(q, list) and q and q[0].state.terminal)
        if done == len(names):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done}/{len(names)} clusters finished their first job")
        time.sleep(0.1)


def backend_cycle(backend, names: list[str], fetched: set, depth: int, make_job) -> dict[str, float]:
    """One cycle done with the backend's batched calls; returns the seconds of each step."""
    from fleet.backends.base import ClusterLost

    t0 = time.perf_counter()
    queues = backend.queues(names)
    t1 = time.perf_counter()
    finished = [(c, j.job_id) for c, q in queues.items() if not isinstance(q, ClusterLost)
                for j in q if j.state.terminal and (c, j.job_id) not in fetched]
    backend.logs_many(finished)
    fetched.update(finished)
    t2 = time.perf_counter()
    short = [c for c, q in queues.items() if not isinstance(q, ClusterLost)
             and sum(1 for j in q if not j.state.terminal) < depth]
    backend.submit_many([(c, make_job(c)) for c in short])
    t3 = time.perf_counter()
    return {"queues": t1 - t0, "logs": t2 - t1, "submit": t3 - t2, "total": t3 - t0,
            "finished": len(finished), "submitted": len(short)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds added to every fake SDK call")
    parser.add_argument("--job-seconds", type=float, default=2.0)
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()

    # The fake keeps its clusters in files; on tmpfs the fake's own disk I/O stays out of the figure.
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="fleet-cp-bench-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    os.environ.update(FLEET_ROOT=str(root), FAKE_SKY_HOME=str(root / "fake-sky"), FAKE_SKY_LATENCY_S="0",
                      FLEET_RUNNER_IDLE_S="10", FLEET_SKY_SDK="fleet.testing.fake_sky")
    from fleet.backends.skypilot import SkyPilotBackend
    from fleet.config import FleetConfig, Tier
    from fleet.testing import fake_sky
    from fleet.types import JobSpec
    from fleet.workspace import Workspace

    (root / "experiment.yaml").write_text(TASK)
    workspace = Workspace(root).ensure()
    workspace.snapshot_dir(SNAPSHOT).mkdir(parents=True, exist_ok=True)
    (workspace.snapshot_dir(SNAPSHOT) / "README").write_text("bench snapshot\n")
    config = FleetConfig(queue_depth=args.depth, tiers={"any": Tier(accelerators=[], seeds=1)})
    names = [f"gpu-{i:02d}" for i in range(1, args.clusters + 1)]
    accelerators = ["H100" if i % 2 else "H200" for i in range(1, args.clusters + 1)]
    backend = SkyPilotBackend(workspace, config)
    infos = backend.up(names, accelerators)
    print(f"{len(infos)} fake clusters up; {args.latency:g}s per SDK call", file=sys.stderr)
    counter = iter(range(1, 10**9))

    def make_job(cluster: str) -> JobSpec:
        return JobSpec(f"bench-{next(counter):05d}", 1, SNAPSHOT, {"SLEEP_S": str(args.job_seconds)}, 3600.0, None)

    try:
        # 1. The backend's own batched cycle.
        fetched: set = set()
        for _ in range(args.depth):
            backend.submit_many([(c, make_job(c)) for c in names])
        wait_first_jobs_done(backend, names)
        os.environ["FAKE_SKY_LATENCY_S"] = str(args.latency)
        steps = backend_cycle(backend, names, fetched, args.depth, make_job)
        os.environ["FAKE_SKY_LATENCY_S"] = "0"
        print(f"backend cycle: queues {steps['queues']:.2f}s, logs of {steps['finished']} jobs {steps['logs']:.2f}s, "
              f"{steps['submitted']} submits {steps['submit']:.2f}s", file=sys.stderr)
        print(f"backend_cycle_seconds: {steps['total']:.3f}")
        figure = steps["total"]
        controller_seconds = time_controller(root, workspace, backend, config, names, accelerators, args)
        if controller_seconds is not None:
            print(f"controller_cycle_seconds: {controller_seconds:.3f}")
            figure = controller_seconds
        print(f"poll_cycle_seconds: {figure:.3f}")
    finally:
        os.environ["FAKE_SKY_LATENCY_S"] = "0"
        fake_sky.reset()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def time_controller(root, workspace, backend, config, names, accelerators, args) -> float | None:
    try:
        from fleet.core.controller import Controller
        from fleet.core.ledger import Ledger
        from fleet.core.ledger_rows import NewExperiment
    except ImportError:
        return None
    if not hasattr(Controller, "cycle"):
        return None
    from fleet.types import ClusterState

    ledger = Ledger(workspace.ledger_path)
    for name, accelerator in zip(names, accelerators):
        ledger.upsert_cluster(name, backend.name, accelerator, ClusterState.UP)
    experiments = [NewExperiment({"SLEEP_S": str(args.job_seconds)}, f"k{i}", 0, "", "")
                   for i in range(len(names) * (args.depth + 2))]
    ledger.add_wave("bench", "any", {"timeout_s": 3600}, SNAPSHOT, experiments)
    controller = Controller(workspace, ledger, backend, config)
    controller.cycle()  # fills every queue to its depth (no latency: not what is measured)
    controller.cycle()
    wait_first_jobs_done_since(backend, names, ledger)
    os.environ["FAKE_SKY_LATENCY_S"] = str(args.latency)
    started = time.perf_counter()
    report = controller.cycle()
    seconds = time.perf_counter() - started
    os.environ["FAKE_SKY_LATENCY_S"] = "0"
    print(f"controller cycle: {report.finished} finished, {report.submitted} submitted, "
          f"{report.requeued} requeued in {seconds:.2f}s", file=sys.stderr)
    return seconds


def wait_first_jobs_done_since(backend, names, ledger, timeout: float = 60.0) -> None:
    """Until each cluster has at least one of the controller's jobs finished (logs to fetch, a slot free)."""
    deadline = time.monotonic() + timeout
    ours = {(a.cluster, a.job_id) for a in ledger.attempts(active=True)}
    while time.monotonic() < deadline:
        queues = backend.queues(names)
        done = {c for c, q in queues.items() if isinstance(q, list)
                and any((c, j.job_id) in ours and j.state.terminal for j in q)}
        if len(done) == len(names):
            return
        time.sleep(0.1)
    raise SystemExit("the controller's first jobs did not finish")


if __name__ == "__main__":
    sys.exit(main())
