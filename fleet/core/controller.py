"""The controller: keeps every cluster's queue at its target depth until the work is done.

One cycle = read every queue (one concurrent round-trip for remote backends), reconcile the ledger
with what the backend reports (finished jobs become results, lost clusters give their work back),
then ask the pure `schedule.assign` what to submit and submit it. The ledger is written *before*
each backend call, so a controller killed at any point is resumed by the next one without losing
or duplicating an experiment: job names carry the experiment id and attempt number.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet.backends.base import (
    Backend,
    BackendError,
    ClusterLost,
    NotSubmitted,
    SetupFailed,
)
from fleet.config import FleetConfig
from fleet.core.expand import knob_values
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ATTEMPT_LOST, AttemptRow, ExperimentRow
from fleet.core.results import parse_run_log
from fleet.core.schedule import ClusterSlot, PendingExperiment, assign, within_budget
from fleet.errors import InputError
from fleet.types import (
    ClusterState,
    ExperimentState,
    JobInfo,
    JobSpec,
    JobState,
    job_name,
)
from fleet.workspace import Workspace

log = logging.getLogger("fleet.core.controller")

MAX_LOG_FETCHES = 5  # cycles in a row a finished job's log may fail to download before giving up
MAX_ATTEMPTS = 4  # cluster failures an experiment may suffer before it is recorded as a crash
DEFAULT_TIMEOUT_S = 2 * 300 + 600  # 2x the default 5-minute budget plus set-up margin
REFUSED_REST_S = 30.0  # a cluster that refused a submission gets no new work for this long


@dataclass
class CycleReport:
    submitted: int = 0
    finished: int = 0
    requeued: int = 0
    lost_clusters: list[str] = field(default_factory=list)
    held: int = 0

def budget_seconds(exp: ExperimentRow, default: float | None) -> float | None:
    """The experiment's TIME_BUDGET knob, else `default` (the workload's own default)."""
    try:
        return float(exp.config["TIME_BUDGET"])
    except (KeyError, ValueError):
        return default


def experiment_timeout(exp: ExperimentRow, default_budget: float | None) -> float:
    """2x the experiment's TIME_BUDGET plus set-up margin (compile, data loading, evaluation)."""
    seconds = budget_seconds(exp, default_budget)
    return DEFAULT_TIMEOUT_S if seconds is None else 2 * seconds + 600


def job_for(exp: ExperimentRow, attempt: int, accelerator: str, timeout_s: float) -> JobSpec:
    envs = {**knob_values(exp.config), "SEED": str(exp.seed)}
    return JobSpec(exp.id, attempt, exp.snapshot, envs, timeout_s, None if accelerator == "cpu" else accelerator)


class Controller:
    def __init__(
        self, workspace: Workspace, ledger: Ledger, backend: Backend, config: FleetConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.workspace = workspace
        self.ledger = ledger
        self.backend = backend
        self.config = config
        self.clock = clock
        self._log_failures: dict[int, int] = {}  # attempt id -> failed log fetches so far
        self._resting: dict[str, float] = {}  # cluster -> when it may get new work again

    # --- one cycle ---------------------------------------------------------------------------
    def cycle(self) -> CycleReport:
        report = CycleReport()
        clusters = {c.name: c for c in self.ledger.clusters([ClusterState.UP])}
        queues = self.backend.queues(sorted(clusters)) if clusters else {}
        active = self.ledger.attempts(active=True)
        for name, queue in queues.items():
            if isinstance(queue, ClusterLost):
                self._lose_cluster(name, queue.reason, [a for a in active if a.cluster == name], report)
        live = {name: q for name, q in queues.items() if not isinstance(q, ClusterLost)}
        finished: list[tuple[AttemptRow, JobInfo]] = []
        for attempt in active:
            if attempt.cluster in live:
                job = self._reconcile(attempt, live[attempt.cluster], report)
                if job is not None:
                    finished.append((attempt, job))
            elif attempt.cluster not in clusters:  # its cluster was torn down or lost earlier
                self._requeue(attempt, f"cluster {attempt.cluster} is gone", report)
        self._finish_all(finished, report)
        self._cancel_requested()
        self._submit_pending(report)
        return report

    def _lose_cluster(self, name: str, reason: str, attempts: list[AttemptRow], report: CycleReport) -> None:
        accelerator = next((c.accelerator for c in self.ledger.clusters() if c.name == name), "unknown")
        self.ledger.upsert_cluster(name, self.backend.name, accelerator, ClusterState.LOST)
        report.lost_clusters.append(name)
        log.warning("cluster %s lost (%s); requeueing %d experiments", name, reason, len(attempts))
        for attempt in attempts:
            self._requeue(attempt, f"cluster {name} lost: {reason}", report)

    def _requeue(self, attempt: AttemptRow, reason: str, report: CycleReport) -> None:
        exp = self.ledger.experiment(attempt.experiment_id)
        if exp is not None and exp.state == ExperimentState.CANCELLED:
            self.ledger.update_attempt(attempt.id, state=ATTEMPT_LOST, ended_at=self.clock())
            return
        self.ledger.requeue(attempt, reason, MAX_ATTEMPTS)
        report.requeued += 1

    def _reconcile(self, attempt: AttemptRow, queue: list[JobInfo], report: CycleReport) -> JobInfo | None:
        """Bring the attempt up to date with its job; returns the job if it has just finished."""
        job = self._find_job(attempt, queue)
        if job is None:
            # Submitted-but-unrecorded jobs are adopted by name above; absent means it never
            # reached the queue (the controller died mid-submit) or the queue lost it.
            if attempt.job_id is None and self.clock() - attempt.submitted_at < self.backend.submission_grace_s:
                return None  # a submission may still be in flight in another controller's last moments
            self._requeue(attempt, "job vanished from its cluster queue", report)
            return None
        if attempt.job_id is None:
            self.ledger.update_attempt(attempt.id, job_id=job.job_id, state=job.state.value)
        if job.state == JobState.RUNNING and attempt.state != "running":
            self.ledger.update_attempt(attempt.id, state="running", started_at=job.started_at or self.clock())
            self.ledger.set_state(attempt.experiment_id, ExperimentState.RUNNING,
                                  only_from=(ExperimentState.QUEUED, ExperimentState.PENDING))
        elif job.state.terminal:
            return job
        return None

    @staticmethod
    def _find_job(attempt: AttemptRow, queue: list[JobInfo]) -> JobInfo | None:
        name = job_name(attempt.experiment_id, attempt.n)
        if attempt.job_id is not None:
            return next((j for j in queue if j.job_id == attempt.job_id), None)
        return next((j for j in queue if j.name == name), None)

    def _finish_all(self, finished: list[tuple[AttemptRow, JobInfo]], report: CycleReport) -> None:
        for attempt, job in finished:
            if job.state == JobState.CLUSTER_FAILED:
                self._close_attempt(attempt, job)
                self._requeue(attempt, f"setup or driver failure on {attempt.cluster}", report)
        done = [(a, j) for a, j in finished if j.state != JobState.CLUSTER_FAILED]
        texts = self.backend.logs_many([(a.cluster, j.job_id) for a, j in done]) if done else []
        for (attempt, job), text in zip(done, texts):
            if isinstance(text, BackendError):
                # The result is in that log: try again next cycle rather than call a good run a
                # crash (a lost cluster is noticed by the next queue read and its work requeued).
                tries = self._log_failures.get(attempt.id, 0) + 1
                self._log_failures[attempt.id] = tries
                log.warning("could not fetch the log of %s (try %d): %s", attempt.experiment_id, tries, text)
                if tries < MAX_LOG_FETCHES:
                    continue
                text = f"(could not fetch logs after {tries} tries: {text})"
            self._close_attempt(attempt, job)
            self._finish(attempt, job, self._save_log(attempt, text), report)

    def _close_attempt(self, attempt: AttemptRow, job: JobInfo) -> None:
        self.ledger.update_attempt(attempt.id, state=job.state.value, started_at=job.started_at,
                                   ended_at=job.ended_at or self.clock(), exit_code=job.exit_code)

    def _finish(self, attempt: AttemptRow, job: JobInfo, text: str, report: CycleReport) -> None:
        gpu_seconds = (job.ended_at - job.started_at) if job.started_at and job.ended_at else None
        parsed = parse_run_log(text, attempt.experiment_id, job.exit_code, metric=self.config.metric.name)
        common = dict(metrics=parsed.metrics, tail="\n".join(parsed.tail), accelerator=attempt.accelerator,
                      gpu_seconds=gpu_seconds)
        if job.state == JobState.CANCELLED:
            state, outcome, reason = ExperimentState.CANCELLED, "cancelled", "cancelled"
        elif job.state == JobState.TIMEOUT:
            state, outcome, reason = ExperimentState.TIMEOUT, "timeout", "killed after its timeout"
        elif parsed.outcome == "done" and job.state == JobState.SUCCEEDED:
            state, outcome, reason = ExperimentState.DONE, "done", ""
        else:
            state, outcome, reason = ExperimentState.CRASH, "crash", parsed.reason or f"exit code {job.exit_code}"
        val_bpb = parsed.val_bpb if state == ExperimentState.DONE else None
        if self.ledger.record_result(attempt.experiment_id, attempt.id, state, outcome=outcome, val_bpb=val_bpb,
                                     reason=reason, **common):
            report.finished += 1

    def _log_path(self, experiment_id: str, attempt: int) -> Path:
        # From the workspace, not the attempt's stored path: a project moved to another directory
        # still finds its logs.
        return self.workspace.logs / f"{job_name(experiment_id, attempt)}.log"

    def _save_log(self, attempt: AttemptRow, text: str) -> str:
        """Keep the job's log in `.fleet/logs/` (remote clusters may vanish later)."""
        path = self._log_path(attempt.experiment_id, attempt.n)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size < len(text.encode()):
            path.write_text(text)
        return text

    def _cancel_requested(self) -> None:
        """Experiments the user cancelled that still have a job queued or running on a cluster."""
        by_cluster: dict[str, list[AttemptRow]] = {}
        for attempt in self.ledger.attempts(active=True, of_state=ExperimentState.CANCELLED):
            by_cluster.setdefault(attempt.cluster, []).append(attempt)
        for cluster, attempts in by_cluster.items():
            ids = [a.job_id for a in attempts if a.job_id is not None]
            try:
                if ids:
                    self.backend.cancel(cluster, ids)
            except ClusterLost:
                pass  # nothing runs there any more
            except BackendError as exc:
                log.warning("cancel on %s failed, retrying next cycle: %s", cluster, exc)
                continue
            for attempt in attempts:
                self.ledger.update_attempt(attempt.id, state=JobState.CANCELLED.value, ended_at=self.clock())

    # --- placing work ------------------------------------------------------------------------
    def _submit_pending(self, report: CycleReport) -> None:
        now = self.clock()
        self._resting = {name: until for name, until in self._resting.items() if until > now}
        clusters = [c for c in self.ledger.clusters([ClusterState.UP]) if c.name not in self._resting]
        if not clusters:
            return
        depth: dict[str, int] = {c.name: 0 for c in clusters}
        for attempt in self.ledger.attempts(active=True):
            if attempt.cluster in depth:
                depth[attempt.cluster] += 1
        slots = [ClusterSlot(c.name, c.accelerator, depth[c.name]) for c in clusters]
        pending_rows = {e.id: e for e in self.ledger.experiments(states=[ExperimentState.PENDING])}
        if not pending_rows:
            return
        pending = [PendingExperiment(e.id, e.tier, self._expected_gpu_hours(e)) for e in pending_rows.values()]
        pending = self._apply_budget(pending, report)
        if not pending:
            return
        tiers = {name: tier.accelerators for name, tier in self.config.tiers.items()}
        accelerator = {c.name: c.accelerator for c in clusters}
        decisions = assign(slots, pending, self.config.queue_depth, tiers)
        self._submit_all([(pending_rows[d.experiment_id], d.cluster, accelerator[d.cluster]) for d in decisions], report)

    def _expected_gpu_hours(self, exp: ExperimentRow) -> float:
        return budget_seconds(exp, 300.0) / 3600

    def _apply_budget(self, pending: list[PendingExperiment], report: CycleReport) -> list[PendingExperiment]:
        """Hold experiments that would cross the fleet's or their wave's GPU-hour cap.

        Experiments the user released with `fleet release` are exempt: releasing is the user
        saying "run these anyway".
        """
        capped_waves = [w for w in self.ledger.waves() if w.max_gpu_hours is not None]
        if self.config.max_gpu_hours is None and not capped_waves:
            return pending  # no cap anywhere: none of the bookkeeping below is needed
        rows = {e.id: e for e in self.ledger.experiments()}
        released = [p for p in pending if rows[p.experiment_id].released]
        capped = [p for p in pending if not rows[p.experiment_id].released]
        results = self.ledger.results()
        active = {a.experiment_id for a in self.ledger.attempts(active=True)}
        caps: list[tuple[float, set[str] | None, str]] = []
        if self.config.max_gpu_hours is not None:
            caps.append((self.config.max_gpu_hours, None, "max_gpu_hours in fleet.yaml"))
        for wave in capped_waves:
            members = {e.id for e in rows.values() if e.wave_id == wave.id}
            caps.append((wave.max_gpu_hours, members, f"max_gpu_hours of wave {wave.id}"))
        held: list[PendingExperiment] = []
        for cap, members, source in caps:
            scope = (lambda eid: True) if members is None else (lambda eid, m=members: eid in m)
            spent = sum((r.gpu_seconds or 0.0) for eid, r in results.items() if scope(eid)) / 3600
            committed = sum(self._expected_gpu_hours(rows[eid]) for eid in active if eid in rows and scope(eid))
            in_scope = [p for p in capped if scope(p.experiment_id)]
            _, over = within_budget(in_scope, spent, committed, cap)
            for exp in over:
                self.ledger.set_state(exp.experiment_id, ExperimentState.HELD,
                                      f"would exceed {source} ({cap:g} GPU-hours); `fleet release` runs it anyway",
                                      only_from=(ExperimentState.PENDING,))
            held += over
            over_ids = {p.experiment_id for p in over}
            capped = [p for p in capped if p.experiment_id not in over_ids]
        report.held += len(held)
        return [p for p in pending if p in capped or p in released]

    def _submit_all(self, decisions: list[tuple[ExperimentRow, str, str]], report: CycleReport) -> None:
        """Record every attempt, then submit them all in one batch, then record the job ids.

        The ledger row comes first: if the controller dies mid-batch, the next one finds the
        attempt still `submitting` and adopts the job by its name, or requeues it if it never
        reached the cluster.
        """
        items: list[tuple[AttemptRow, str, JobSpec]] = []
        waves = {w.id: w for w in self.ledger.waves()}
        for exp, cluster, accelerator in decisions:
            attempt = self.ledger.start_attempt(
                exp.id, cluster, accelerator, lambda n, e=exp.id: self._log_path(e, n))
            if attempt is None:
                continue  # cancelled since the pending list was read
            wave = waves[exp.wave_id]
            timeout = float(wave.spec.get("timeout_s") or experiment_timeout(exp, wave.spec.get("default_budget")))
            items.append((attempt, cluster, job_for(exp, attempt.n, accelerator, timeout)))
        if not items:
            return
        # If this raises (the API server went away mid-batch), the attempts stay `submitting`: the
        # next cycle adopts those that reached a cluster by name and requeues the rest.
        outcomes = self.backend.submit_many([(cluster, job) for _, cluster, job in items])
        lost: set[str] = set()
        setup_failure: SetupFailed | None = None
        for (attempt, cluster, _), outcome in zip(items, outcomes):
            if isinstance(outcome, SetupFailed):
                self.ledger.abandon_attempt(attempt, str(outcome).splitlines()[0])
                setup_failure = outcome
            elif isinstance(outcome, ClusterLost):
                if cluster not in lost:
                    lost.add(cluster)
                    self._lose_cluster(cluster, outcome.reason, [], report)
                self._requeue(attempt, f"cluster {cluster} lost: {outcome.reason}", report)
            elif isinstance(outcome, NotSubmitted):
                # Not the experiment's fault and maybe not the cluster's: retry it elsewhere at no
                # cost, and give that cluster a rest instead of refilling it every cycle.
                log.warning("%s refused %s, resting it %.0fs: %s", cluster, attempt.experiment_id, REFUSED_REST_S, outcome)
                self.ledger.abandon_attempt(attempt, f"not submitted: {outcome}")
                self._resting[cluster] = self.clock() + REFUSED_REST_S
            elif isinstance(outcome, BackendError):
                log.warning("submit of %s to %s failed: %s", attempt.experiment_id, cluster, outcome)
                self._requeue(attempt, f"submit failed: {outcome}", report)
            else:
                self.ledger.update_attempt(attempt.id, job_id=outcome, state=JobState.PENDING.value)
                report.submitted += 1
        if setup_failure is not None:
            raise setup_failure  # the jobs that did reach a cluster are recorded; stop for the fix

    # --- the loop ----------------------------------------------------------------------------
    def run(self, poll_s: float = 0.2, idle_exit_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> str:
        """Cycle until there is no unfinished work for `idle_exit_s` seconds; returns why it stopped.

        A problem the user must fix (a broken task file, no clusters) stops the controller and is
        recorded for `fleet wait`/`fleet status` to show; a passing backend failure (an API server
        restarting) is retried with backoff.
        """
        idle_since: float | None = None
        backoff = poll_s
        while True:
            self.ledger.set_meta("controller_heartbeat", str(self.clock()))
            if not self.ledger.clusters([ClusterState.UP]):
                return self._stop("no clusters are up; run `fleet up` (experiments stay queued in the ledger)")
            try:
                self.cycle()
                if backoff != poll_s:  # recovered: the "retrying" notice is stale
                    self.ledger.set_meta("controller_error", "")
                backoff = poll_s
            except (InputError, SetupFailed) as exc:
                return self._stop(str(exc))
            except BackendError as exc:  # before `Exception`, which it is a kind of
                log.warning("backend problem, retrying in %.0fs: %s", backoff, exc)
                self.ledger.set_meta("controller_error", f"retrying: {exc}")
                sleep(backoff)
                backoff = min(30.0, backoff * 2 + 1)
                continue
            except Exception as exc:  # a bug or the machine (disk full): say so where `fleet wait` looks
                log.exception("controller crashed")
                return self._stop(f"the controller crashed: {exc!r}; details in .fleet/logs/controller.log")
            if self.ledger.has_unfinished_work():
                idle_since = None
            else:
                idle_since = idle_since or self.clock()
                if self.clock() - idle_since >= idle_exit_s:
                    return "idle"
            sleep(poll_s)

    def _stop(self, problem: str) -> str:
        log.error("controller stopping: %s", problem)
        self.ledger.set_meta("controller_error", problem)
        self.ledger.set_meta("controller_error_at", str(self.clock()))
        return problem
