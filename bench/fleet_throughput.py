"""How close does the fleet come to the physical limit of its GPUs? SkyPilot clusters, realistic latencies.

The physical limit of N single-GPU clusters running R-second experiments is N x 3600 / R experiments
an hour. This drives the real SkyPilot backend and controller over the fake SDK
(`fleet.testing.fake_sky`) with SkyPilot's measured latencies — `sky exec` about 5 s; `sky queue`,
`job_status` and the logs about 1 s each; 2-3 s between a job ending and the next queued job
starting — and a one-time launch and setup per cluster, through `rounds` experiments per cluster.
Each experiment stands for a 5-minute run at a time scale (default 10: a 30 s job is a 300 s run)
and every latency is scaled by the same factor, so the run takes a tenth of the time it describes.
All figures are in the described (scaled) seconds.

The clock runs from `fleet up` (launch and setup of every cluster) until the last result is in
the ledger. It prints `experiments_per_hour_scaled`, `physical_limit_per_hour`, `fraction_of_limit`
and where the rest of the clusters' time went, as fractions of clusters x that time:
`lost_setup` (launch and setup), `lost_first_submission` (the controller's reaction and the first
`sky exec`), `lost_start_gaps` (SkyPilot starting each job, the first included), `lost_queue_dry`
(a cluster's queue empty because its next job came too late: the fleet's own fault),
`lost_job_overhead` (process start and exit beyond the run itself), `lost_result_collection` (the
last job's end seen and its log fetched), `lost_idle_at_end` (nothing left to run while other
clusters finish). Run time plus losses is the whole.

    python bench/fleet_throughput.py [--clusters 16] [--rounds 12] [--scale 10] [--setup-seconds 60]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNAPSHOT = "bench00000000000"
LOSSES = ("setup", "first_submission", "start_gaps", "queue_dry", "job_overhead", "result_collection",
          "idle_at_end")


@dataclass(frozen=True)
class JobTimes:
    """One experiment's job, in seconds since the clock started."""

    cluster: str
    submitted: float  # the controller recorded the attempt, just before its `sky exec`
    queued: float  # the job reached the cluster's queue (`sky exec` returned)
    started: float
    ended: float
    recorded: float  # its result was in the ledger


def account(jobs: Iterable[JobTimes], ready: float, end: float, run_s: float) -> dict[str, float]:
    """Cluster-seconds by where they went: `run` (the nominal run of each job) and each of LOSSES.

    Every cluster is counted from 0 to `end`; it was being launched and set up until `ready`. The
    parts add up to clusters x `end` (a pure function, so the accounting is tested by itself).
    """
    out = dict.fromkeys(("run", *LOSSES), 0.0)
    by_cluster: dict[str, list[JobTimes]] = {}
    for job in jobs:
        by_cluster.setdefault(job.cluster, []).append(job)
    for cluster_jobs in by_cluster.values():
        cluster_jobs.sort(key=lambda j: j.started)
        first, last = cluster_jobs[0], cluster_jobs[-1]
        out["setup"] += ready
        out["first_submission"] += first.queued - ready
        out["start_gaps"] += first.started - first.queued
        for prev, job in zip(cluster_jobs, cluster_jobs[1:]):
            waiting_from = max(prev.ended, job.queued)
            out["queue_dry"] += waiting_from - prev.ended
            out["start_gaps"] += job.started - waiting_from
        for job in cluster_jobs:
            out["run"] += min(run_s, job.ended - job.started)
            out["job_overhead"] += max(0.0, job.ended - job.started - run_s)
        out["result_collection"] += last.recorded - last.ended
        out["idle_at_end"] += end - last.recorded
    return out


TASK = """\
name: fixed-run
resources:
  infra: k8s
  accelerators: {{H100: 1}}
workdir: .
setup: sleep {setup_s}
run: |
  sleep "$RUN_S"
  printf -- '---\\nval_bpb: 1.0\\nnum_steps: 1\\n'
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=12, help="experiments per cluster (default 12: an hour of runs)")
    parser.add_argument("--run-seconds", type=float, default=300.0, help="one experiment's run (default 300)")
    parser.add_argument("--scale", type=float, default=10.0, help="described seconds per real second (default 10)")
    parser.add_argument("--exec-seconds", type=float, default=5.0, help="`sky exec` (default 5)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="`sky queue`, `job_status`, logs (default 1)")
    parser.add_argument("--start-gap", default="2-3", help="seconds from a job's end to the next one's start (default 2-3)")
    parser.add_argument("--launch-seconds", type=float, default=20.0, help="`sky launch` of a cluster (default 20)")
    parser.add_argument("--setup-seconds", type=float, default=40.0, help="the task's setup, once per cluster (default 40)")
    parser.add_argument("--depth", type=int, default=2, help="queue depth per cluster (default 2, the fleet's default)")
    args = parser.parse_args()
    scale = args.scale

    def real(seconds: float) -> float:
        return seconds / scale

    base = Path(tempfile.mkdtemp(prefix="fleet-throughput-", dir=_tmpfs()))
    root, sky_home = base / "project", base / "fake-sky"
    root.mkdir()
    gap_low, _, gap_high = args.start_gap.partition("-")
    poll = real(args.poll_seconds)
    os.environ.update(
        FLEET_ROOT=str(root), FAKE_SKY_HOME=str(sky_home), FLEET_SKY_SDK="fleet.testing.fake_sky",
        FLEET_RUNNER_IDLE_S="30", FAKE_SKY_LATENCY_S="0",  # runners never idle mid-run; gone soon after
        FAKE_SKY_LATENCIES=",".join(f"{call}={seconds:g}" for call, seconds in (
            ("exec", real(args.exec_seconds)), ("queue", poll), ("job_status", poll), ("tail_logs", poll),
            ("download_logs", poll), ("status", poll), ("cancel", poll), ("launch", real(args.launch_seconds)))),
        FAKE_SKY_START_GAP_S=f"{real(float(gap_low)):g}-{real(float(gap_high or gap_low)):g}",
    )
    from fleet.backends.skypilot import SkyPilotBackend
    from fleet.config import FleetConfig, Tier
    from fleet.core.controller import Controller
    from fleet.core.ledger import Ledger
    from fleet.core.ledger_rows import NewExperiment
    from fleet.testing import fake_sky
    from fleet.types import ClusterState
    from fleet.workspace import Workspace

    (root / "experiment.yaml").write_text(TASK.format(setup_s=real(args.setup_seconds)))
    workspace = Workspace(root).ensure()
    workspace.snapshot_dir(SNAPSHOT).mkdir(parents=True, exist_ok=True)
    (workspace.snapshot_dir(SNAPSHOT) / "README").write_text("bench snapshot\n")
    fake_sky.set_capacity("H100", args.clusters)
    config = FleetConfig(queue_depth=args.depth, tiers={"any": Tier(accelerators=[], seeds=1)})
    ledger = Ledger(workspace.ledger_path)
    ledger.set_meta("backend", "sky")
    total = args.clusters * args.rounds
    ledger.add_wave("throughput", "any", {"timeout_s": 10 * real(args.run_seconds) + 600}, SNAPSHOT,
                    [NewExperiment({"RUN_S": f"{real(args.run_seconds):g}"}, f"k{i}", 0, "", "") for i in range(total)])
    names = [f"gpu-{i:02d}" for i in range(1, args.clusters + 1)]
    backend = SkyPilotBackend(workspace, config, setup_poll_s=real(5.0))
    print(f"{args.clusters} clusters x {args.rounds} runs of {args.run_seconds:g}s at 1/{scale:g} time "
          f"(about {(args.launch_seconds + args.setup_seconds + args.rounds * (args.run_seconds + 2.5)) / scale:.0f}s)…",
          file=sys.stderr)
    try:
        t0 = time.time()
        for info in backend.up(names, ["H100"] * len(names)):
            ledger.upsert_cluster(info.name, backend.name, info.accelerator, ClusterState.UP)
        ready = time.time()
        stopped = Controller(workspace, ledger, backend, config).run(poll_s=real(0.2), idle_exit_s=1.0)
        if stopped != "idle":
            raise SystemExit(f"the controller stopped: {stopped}")
        jobs = job_times(ledger, sky_home, names, t0)
    finally:
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                backend.down(names)
            finally:
                fake_sky.reset()
                shutil.rmtree(base, ignore_errors=True)
    done = len(jobs)
    end = max(j.recorded for j in jobs)
    parts = account(jobs, ready - t0, end, real(args.run_seconds))
    cluster_time = args.clusters * end
    per_hour = done / (end * scale / 3600)
    limit = args.clusters * 3600 / args.run_seconds
    print(f"experiments: {done}")
    print(f"clusters: {args.clusters}")
    print(f"wall_seconds_scaled: {end * scale:.0f}")
    print(f"experiments_per_hour_scaled: {per_hour:.1f}")
    print(f"physical_limit_per_hour: {limit:.1f}")
    print(f"fraction_of_limit: {per_hour / limit:.4f}")
    print(f"run_fraction: {parts['run'] / cluster_time:.4f}")
    for key in LOSSES:
        print(f"lost_{key}: {parts[key] / cluster_time:.4f}  ({parts[key] * scale / args.clusters:.1f}s per cluster)")
    return 0


def job_times(ledger, sky_home: Path, clusters: Sequence[str], t0: float) -> list[JobTimes]:
    """Each finished experiment's times, from the ledger (submitted, recorded) and the clusters' queues."""
    from fleet.backends.slot_queue import SlotQueue
    from fleet.types import job_name

    on_cluster = {}
    for cluster in clusters:
        for job in SlotQueue(sky_home / "clusters" / cluster / "queue").jobs(archived=True):
            on_cluster[(cluster, job.name)] = job
    results = ledger.results()
    out = []
    for attempt in ledger.attempts():
        job = on_cluster.get((attempt.cluster, job_name(attempt.experiment_id, attempt.n)))
        result = results.get(attempt.experiment_id)
        if job is None or job.state != "succeeded" or result is None or result.attempt_id != attempt.id:
            continue
        out.append(JobTimes(attempt.cluster, attempt.submitted_at - t0, job.submitted_at - t0, job.started_at - t0,
                            job.ended_at - t0, result.recorded_at - t0))
    return out


def _tmpfs() -> str | None:
    """/dev/shm when writable: the fake's bookkeeping files then cost no disk I/O."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


if __name__ == "__main__":
    sys.exit(main())
