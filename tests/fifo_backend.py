"""An in-process backend whose clusters run their FIFO queues on a fake clock (no processes, no sleeps).

Each cluster runs one job at a time, in submission order, as `sky exec` queues do; a job runs for
its TIME_BUDGET (seconds of the fake clock) and succeeds with a summary. Tests advance the clock
and call `Controller.cycle()` themselves, so every interleaving is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fleet.backends.base import Backend, BackendError, ClusterLost
from fleet.types import ClusterInfo, ClusterState, JobInfo, JobState

SUMMARY = "---\nval_bpb: {bpb}\nnum_steps: 10\ntraining_seconds: 1.0\n"


@dataclass
class FakeJob:
    job_id: int
    name: str
    seconds: float
    queued_at: float = 0.0
    state: JobState = JobState.PENDING
    started_at: float | None = None
    ended_at: float | None = None
    envs: dict = field(default_factory=dict)


@dataclass
class FakeCluster:
    accelerator: str
    jobs: list[FakeJob] = field(default_factory=list)
    lost: bool = False


class FifoBackend(Backend):
    name = "fifo"
    submission_grace_s = 0.0

    def __init__(self, clock, clusters: dict[str, str] | None = None, value=None) -> None:
        self.clock = clock
        self.value = value  # job envs -> its val_bpb (default: 1 + job id / 1000)
        self.clusters_: dict[str, FakeCluster] = {n: FakeCluster(a) for n, a in (clusters or {}).items()}
        self.cancel_fails = False
        self.up_calls: list[tuple[list[str], list[str]]] = []
        self.kept_alive: list[list[str]] = []

    # --- time ------------------------------------------------------------------------------------
    def advance(self) -> None:
        """Bring every queue up to the clock: a job starts when the one before it ended, and ends after its seconds."""
        now = self.clock()
        for cluster in self.clusters_.values():
            if cluster.lost:
                continue
            free_at = 0.0
            for job in cluster.jobs:
                if job.state.terminal:
                    if job.started_at is not None:
                        free_at = max(free_at, job.ended_at or 0.0)
                    continue
                if job.state == JobState.PENDING:
                    start = max(job.queued_at, free_at)
                    if start > now:
                        break
                    job.state, job.started_at = JobState.RUNNING, start
                end = job.started_at + job.seconds
                if end > now:
                    break
                job.state, job.ended_at = JobState.SUCCEEDED, end
                free_at = end

    def started(self) -> dict[str, float]:
        """job name -> when it started (every cluster)."""
        return {j.name: j.started_at for c in self.clusters_.values() for j in c.jobs if j.started_at is not None}

    def lose(self, name: str) -> None:
        self.clusters_[name].lost = True

    # --- the interface ---------------------------------------------------------------------------
    def up(self, names, accelerators):
        self.up_calls.append((list(names), list(accelerators)))
        for n, a in zip(names, accelerators):
            self.clusters_.setdefault(n, FakeCluster(a))
        return [ClusterInfo(n, self.clusters_[n].accelerator, ClusterState.UP) for n in names]

    def clusters(self):
        return [ClusterInfo(n, c.accelerator, ClusterState.LOST if c.lost else ClusterState.UP)
                for n, c in self.clusters_.items()]

    def submit(self, cluster, job):
        c = self._live(cluster)
        job_id = len(c.jobs) + 1
        c.jobs.append(FakeJob(job_id, job.job_name, float(job.envs.get("TIME_BUDGET", "60")), self.clock(),
                              envs=dict(job.envs)))
        self.advance()
        return job_id

    def queues(self, clusters):
        self.advance()
        out = {}
        for name in clusters:
            c = self.clusters_.get(name)
            if c is None or c.lost:
                out[name] = ClusterLost(name, "gone")
                continue
            out[name] = [JobInfo(j.job_id, j.name, j.state, j.started_at, j.ended_at,
                                 0 if j.state == JobState.SUCCEEDED else None) for j in c.jobs]
        return out

    def logs(self, cluster, job_id):
        if self.value is not None:
            job = next(j for j in self._live(cluster).jobs if j.job_id == job_id)
            return SUMMARY.format(bpb=self.value(job.envs))
        return SUMMARY.format(bpb=1.0 + job_id / 1000)

    def cancel(self, cluster, job_ids):
        if self.cancel_fails:
            raise BackendError("cancel request timed out")
        c = self._live(cluster)
        for job in c.jobs:
            if job.job_id in job_ids and not job.state.terminal:
                job.state, job.ended_at = JobState.CANCELLED, self.clock()
        self.advance()

    def down(self, clusters):
        for name in clusters:
            self.clusters_.pop(name, None)

    def keep_alive(self, clusters):
        self.kept_alive.append(list(clusters))

    def _live(self, name: str) -> FakeCluster:
        c = self.clusters_.get(name)
        if c is None or c.lost:
            raise ClusterLost(name, "gone")
        return c
