"""The controller: keeps every cluster's queue at its target depth until the work is done.

One cycle = check the ledger's consistency, read every queue (one concurrent round-trip for remote
backends), reconcile the ledger with what the backend reports (finished jobs become results, lost
clusters give their work back, orphan jobs are cancelled), then place work (`fleet.core.placing`:
the pure `schedule.assign` decides, fair between tracks and by priority within one) and submit it,
and have lost clusters replaced off the cycle (`fleet.core.fleet_size`). Every move of an experiment is one conditional ledger transaction
(`fleet.core.transitions`) written *before* the backend call it announces, and logs are saved
before the transaction that records their result, so a controller killed at any point is resumed
by the next one without losing or duplicating an experiment: job names carry the experiment id
and attempt number.

Work of the layers above that acts while waves run comes in through `fleet.core.hooks`, named by the
command line: cycle hooks (a sequential validation's next seed pairs), watchers (early stopping, a
search telling its study) and wave sources (a search wave's experiments, made when the scheduler gives
it a slot).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet.backends.base import (
    Backend,
    BackendError,
    ClusterLost,
    LogIncomplete,
    SetupFailed,
)
from fleet.config import FleetConfig
from fleet.core.backup import BACKUP_EVERY_S
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ATTEMPT_LOG_LOST, AttemptRow
from fleet.core.orphans import find_orphans
from fleet.core.fleet_size import BackendFactory, Replenisher, default_launcher
from fleet.core.hooks import CycleHook, HookRunner, Watcher
from fleet.core.job_plan import outcome_of
from fleet.core.placement import WaveSource
from fleet.core.placing import REFUSED_REST_S, Placing  # noqa: F401 - REFUSED_REST_S re-exported
from fleet.core.transitions import Outcome
from fleet.errors import DiskProblem, InputError, disk_problem
from fleet.types import (
    ClusterState,
    ExperimentState,
    JobInfo,
    JobState,
    job_name,
)
from fleet.workspace import Workspace

log = logging.getLogger("fleet.core.controller")

MAX_LOG_FETCHES = 5  # cycles in a row a finished job's log may fail to download before giving up
MAX_ATTEMPTS = 4  # cluster failures (or lost logs) an experiment may suffer before it is recorded as a crash
STOPPED_STATES = (ExperimentState.CANCELLED, ExperimentState.PRUNED)  # finished while their job may still run


@dataclass
class CycleReport:
    submitted: int = 0
    finished: int = 0
    requeued: int = 0
    lost_clusters: list[str] = field(default_factory=list)
    held: int = 0
    repaired: int = 0  # experiments the consistency check put right
    orphans: int = 0  # jobs cancelled because no current attempt owns them
    swapped: int = 0  # queued jobs taken back for higher-priority work
    launched: list[str] = field(default_factory=list)  # replacement clusters whose launch started
    finished_ids: list[str] = field(default_factory=list)
    extended: int = 0  # experiments the cycle hooks added (a sequential validation's next seed pairs)


class Controller(Placing):
    def __init__(
        self, workspace: Workspace, ledger: Ledger, backend: Backend, config: FleetConfig,
        clock: Callable[[], float] = time.time, sources: Mapping[str, WaveSource] | None = None,
        launcher: BackendFactory | None = None, hooks: Sequence[CycleHook] = (), watchers: Sequence[Watcher] = (),
    ) -> None:
        self.workspace = workspace
        self.hooks = HookRunner(hooks)
        self.watchers = tuple(watchers)
        self.ledger = ledger
        self.backend = backend
        self.config = config
        self.clock = clock
        self.sources = dict(sources or {})  # wave kind -> what makes its experiments on demand (a search)
        self._log_failures: dict[int, int] = {}  # attempt id -> failed log fetches so far
        self._resting: dict[str, float] = {}  # cluster -> when it may get new work again
        # Replacements for lost clusters launch on threads of their own (minutes on SkyPilot).
        self.replenisher = Replenisher(ledger, config, launcher or default_launcher(workspace, config), clock)
        self._kept_alive: dict[str, float] = {}  # cluster -> when its autodown timer was last reset

    # --- one cycle ---------------------------------------------------------------------------
    def cycle(self) -> CycleReport:
        report = CycleReport()
        self._repair(report)
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
        self._cancel_orphans(live, active, report)
        self._finish_all(finished, report)
        for watcher in self.watchers:
            watcher.watch(self)
        self._cancel_requested()
        report.extended = self.hooks.run(self.workspace, self.ledger, self.config, report.finished_ids)
        self._submit_pending(report)
        report.launched = self.replenisher.step()
        self._keep_alive([n for n in clusters if n not in report.lost_clusters])
        return report

    def _repair(self, report: CycleReport) -> None:
        repairs = self.ledger.repair()
        if repairs:
            log.warning("consistency check: repaired %d experiments: %s", len(repairs), "; ".join(map(str, repairs)))
            report.repaired = len(repairs)

    def _lose_cluster(self, name: str, reason: str, attempts: list[AttemptRow], report: CycleReport) -> None:
        # Only an UP cluster becomes LOST: one torn down meanwhile (`fleet down`) stays DOWN.
        if self.ledger.lose_cluster(name):
            report.lost_clusters.append(name)
            log.warning("cluster %s lost (%s); requeueing %d experiments", name, reason, len(attempts))
        for attempt in attempts:
            self._requeue(attempt, f"cluster {name} lost: {reason}", report)

    def _requeue(self, attempt: AttemptRow, reason: str, report: CycleReport, *,
                 attempt_state: str = "lost", counts: bool = True) -> None:
        if self.ledger.requeue(attempt, reason, MAX_ATTEMPTS, attempt_state=attempt_state, counts=counts) in (
                ExperimentState.PENDING, ExperimentState.CRASH):
            report.requeued += 1

    def _reconcile(self, attempt: AttemptRow, queue: list[JobInfo], report: CycleReport) -> JobInfo | None:
        """Bring the attempt up to date with its job; returns the job if it has just finished."""
        job = self._find_job(attempt, queue)
        if job is None:  # it may have finished while no controller watched, and left the queue's view
            job = self._find_job(attempt, self.backend.archived_jobs(attempt.cluster, [job_name(attempt.experiment_id, attempt.n)]))
        if job is None:
            # Submitted-but-unrecorded jobs are adopted by name below; absent means it never
            # reached the queue (the controller died mid-submit) or the queue lost it. If it
            # lands after all, it is an orphan and is cancelled.
            if attempt.job_id is None and self.clock() - attempt.submitted_at < self.backend.submission_grace_s:
                return None  # a submission may still be in flight in another controller's last moments
            self._requeue(attempt, "job vanished from its cluster queue", report)
            return None
        if attempt.job_id is None:
            self.ledger.adopt_job(attempt, job.job_id)
        if job.state == JobState.RUNNING and attempt.state != "running":
            self.ledger.mark_running(attempt, job.started_at or self.clock())
        elif job.state.terminal:
            return job
        return None

    @staticmethod
    def _find_job(attempt: AttemptRow, queue: list[JobInfo]) -> JobInfo | None:
        name = job_name(attempt.experiment_id, attempt.n)
        if attempt.job_id is not None:
            return next((j for j in queue if j.job_id == attempt.job_id), None)
        return next((j for j in queue if j.name == name), None)

    def _cancel_orphans(self, live: dict[str, list[JobInfo]], active: list[AttemptRow], report: CycleReport) -> None:
        """Cancel jobs named like ours that no current attempt owns (a late `sky exec`, a stale copy)."""
        orphans = find_orphans(live, active)
        if not orphans:
            return
        ours = self.ledger.known_experiments(exp for found in orphans.values() for exp, _ in found)
        for cluster, found in orphans.items():
            jobs = [job for exp, job in found if exp in ours]
            if not jobs:
                continue
            try:
                self.backend.cancel(cluster, [j.job_id for j in jobs])
            except ClusterLost:
                continue  # nothing runs there any more
            except BackendError as exc:
                log.warning("could not cancel orphan jobs on %s, retrying next cycle: %s", cluster, exc)
                continue
            report.orphans += len(jobs)
            log.warning("cancelled %d orphan jobs on %s (no current attempt owns them): %s", len(jobs), cluster,
                        ", ".join(f"{j.name} (job {j.job_id})" for j in jobs))

    # --- collecting results ------------------------------------------------------------------
    def _finish_all(self, finished: list[tuple[AttemptRow, JobInfo]], report: CycleReport) -> None:
        for attempt, job in finished:
            if job.state == JobState.CLUSTER_FAILED:
                self._requeue(attempt, f"setup or driver failure on {attempt.cluster}", report,
                              attempt_state=JobState.CLUSTER_FAILED.value)
        done = [(a, j) for a, j in finished if j.state != JobState.CLUSTER_FAILED]
        texts = self.backend.logs_many([(a.cluster, j.job_id) for a, j in done]) if done else []
        for (attempt, job), text in zip(done, texts):
            if isinstance(text, LogIncomplete):
                self._log_lost(attempt, text, report)
                continue
            if isinstance(text, BackendError):
                # The result is in that log: try again next cycle rather than call a good run a
                # crash (a lost cluster is noticed by the next queue read and its work requeued).
                tries = self._log_failures.get(attempt.id, 0) + 1
                self._log_failures[attempt.id] = tries
                log.warning("could not fetch the log of %s (try %d): %s", attempt.experiment_id, tries, text)
                if tries < MAX_LOG_FETCHES:
                    continue
                text = f"(could not fetch logs after {tries} tries: {text})"
            self._save_log(attempt, text)  # before the transaction: a crash here re-collects
            outcome = outcome_of(attempt, job, text, self.config.metric.name)
            if self.ledger.finish_attempt(attempt, job.state.value, outcome,
                                          started_at=job.started_at, ended_at=job.ended_at or self.clock(),
                                          exit_code=job.exit_code):
                report.finished += 1
                report.finished_ids.append(attempt.experiment_id)
            self._log_failures.pop(attempt.id, None)

    def _log_lost(self, attempt: AttemptRow, problem: LogIncomplete, report: CycleReport) -> None:
        """A job whose log was cut short is run again, never recorded as the experiment's crash.

        While the disk is still full the controller stops instead (the attempt stays, and is
        looked at again once there is space). An experiment that loses its log MAX_ATTEMPTS times
        is recorded as a crash that says so.
        """
        full = self.workspace.disk_problem()
        if full is not None:
            raise full
        lost = sum(1 for a in self.ledger.attempts(attempt.experiment_id) if a.state == ATTEMPT_LOG_LOST)
        if lost + 1 >= MAX_ATTEMPTS:
            self.ledger.finish_attempt(attempt, ATTEMPT_LOG_LOST, Outcome(
                ExperimentState.CRASH, "crash", reason=f"its log was cut short {lost + 1} times: {problem}"))
            return
        log.warning("%s: %s; running it again", job_name(attempt.experiment_id, attempt.n), problem)
        self._requeue(attempt, f"its log was cut short ({problem}); running it again", report,
                      attempt_state=ATTEMPT_LOG_LOST, counts=False)

    def _log_path(self, experiment_id: str, attempt: int) -> Path:
        # From the workspace, not the attempt's stored path: a project moved to another directory
        # still finds its logs.
        return self.workspace.logs / f"{job_name(experiment_id, attempt)}.log"

    def _save_log(self, attempt: AttemptRow, text: str) -> None:
        """Keep the job's log in `.fleet/logs/` (remote clusters may vanish later). Idempotent."""
        path = self._log_path(attempt.experiment_id, attempt.n)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.stat().st_size < len(text.encode()):
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(text)
                tmp.replace(path)
        except OSError as exc:
            raise disk_problem(exc, path, f"the log of {attempt.experiment_id}") or exc

    def _cancel_requested(self) -> None:
        """Experiments the user cancelled (or early stopping pruned) that still have a job on a cluster.

        An attempt with no job id yet is closed too: if its job lands later, it is an orphan and
        the next queue read cancels it.
        """
        by_cluster: dict[str, list[AttemptRow]] = {}
        for state in STOPPED_STATES:
            for attempt in self.ledger.attempts(active=True, of_state=state):
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
                self.ledger.cancel_attempt(attempt)

    # --- the loop ----------------------------------------------------------------------------
    def run(self, poll_s: float = 0.2, idle_exit_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> str:
        """Cycle until there is no unfinished work for `idle_exit_s` seconds; returns why it stopped.

        A problem the user must fix (a broken task file, no clusters, a full disk) stops the
        controller and is recorded for `fleet wait`/`fleet status` to show; a passing backend
        failure (an API server restarting) is retried with backoff.
        """
        idle_since: float | None = None
        backoff = poll_s
        last_backup: float | None = None
        cleared = False
        while True:
            try:
                self.ledger.set_meta("controller_heartbeat", str(self.clock()))
                if last_backup is None or self.clock() - last_backup >= BACKUP_EVERY_S:
                    last_backup = self.clock()
                    self._backup()
                if not self.ledger.clusters([ClusterState.UP]):
                    self.replenisher.step()  # a fleet with a recorded size launches replacements
                    if not self.replenisher.busy():
                        return self._stop("no clusters are up; run `fleet up` (experiments stay queued in the ledger)")
                full = self.workspace.disk_problem(probe=False)  # before jobs' logs get cut short
                if full is not None:
                    return self._stop(str(full))
                self.cycle()
                if backoff != poll_s or not cleared:
                    # A cycle worked: an earlier controller's problem (or our "retrying" notice) is
                    # stale. Cleared only now, not at start: while it stands, `fleet status` in an
                    # agent's loop does not start more controllers into the same problem.
                    self.ledger.set_meta("controller_error", "")
                    cleared = True
                backoff = poll_s
            except (InputError, SetupFailed, DiskProblem) as exc:
                return self._stop(str(exc))
            except BackendError as exc:  # before `Exception`, which it is a kind of
                log.warning("backend problem, retrying in %.0fs: %s", backoff, exc)
                self.ledger.set_meta("controller_error", f"retrying: {exc}")
                sleep(backoff)
                backoff = min(30.0, backoff * 2 + 1)
                continue
            except Exception as exc:  # a bug: say so where `fleet wait` looks
                problem = disk_problem(exc, self.workspace.state, "the fleet's state") or self.workspace.disk_problem()
                if problem is not None:  # the machine, not a bug: the disk filled up under us
                    return self._stop(str(problem))
                log.exception("controller crashed")
                return self._stop(f"the controller crashed: {exc!r}; details in .fleet/logs/controller.log")
            if self.ledger.has_unfinished_work() or self.replenisher.busy():
                idle_since = None
            else:
                idle_since = idle_since or self.clock()
                if self.clock() - idle_since >= idle_exit_s:
                    return "idle"
            sleep(poll_s)

    def _backup(self) -> None:
        try:
            self.ledger.backup()
        except (OSError, DiskProblem) as exc:  # a missed backup is worth a warning, not a stop
            log.warning("could not back up the ledger: %s", exc)

    def _stop(self, problem: str) -> str:
        log.error("controller stopping: %s", problem)
        try:
            self.ledger.set_meta("controller_error", problem)
            self.ledger.set_meta("controller_error_at", str(self.clock()))
        except DiskProblem as exc:  # the ledger's disk is full too: the log line above is what is left
            log.error("could not record that in the ledger: %s", exc)
        return problem
