"""The controller's placing half: each cycle's placements planned and acted on, and idle clusters kept up.

`Placing` is mixed into `Controller` (the attributes below are its). It asks `fleet.core.placement`
for the cycle's plan (fair shares between tracks, priorities within one, swaps of queued jobs for
higher-priority work, on-demand waves), records every attempt before the backend call it
announces, and submits them in one batch.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.backends.base import (
    Backend,
    BackendError,
    ClusterLost,
    NoSpaceForJob,
    NotSubmitted,
    SetupFailed,
)
from fleet.config import FleetConfig
from fleet.core.budget import has_caps
from fleet.core.demand import active_work, queued_jobs
from fleet.core.job_plan import experiment_timeout, job_for
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import AttemptRow, ExperimentRow
from fleet.core.placement import Placement, WaveSource, on_demand_work, plan_placement
from fleet.core.schedule import Assignment, ClusterSlot
from fleet.errors import DiskProblem
from fleet.types import ClusterState, ExperimentState, job_name
from fleet.workspace import Workspace

if TYPE_CHECKING:
    from fleet.types import JobSpec
    from fleet.core.controller import CycleReport

log = logging.getLogger("fleet.core.controller")

REFUSED_REST_S = 30.0  # a cluster that refused a submission gets no new work for this long


class Placing:
    workspace: Workspace
    ledger: Ledger
    backend: Backend
    config: FleetConfig
    clock: Callable[[], float]
    sources: Mapping[str, WaveSource]
    _resting: dict[str, float]
    _kept_alive: dict[str, float]
    _log_path: Callable[[str, int], Path]
    _lose_cluster: Callable[..., None]
    _requeue: Callable[..., None]

    def _submit_pending(self, report: CycleReport) -> None:
        now = self.clock()
        self._resting = {name: until for name, until in self._resting.items() if until > now}
        clusters = self.ledger.clusters([ClusterState.UP])
        if not clusters:
            return
        active = active_work(self.ledger)
        depth: dict[str, int] = {c.name: 0 for c in clusters}
        for row in active:
            if row.attempt.cluster in depth:
                depth[row.attempt.cluster] += 1
        # Resting clusters are in the list (a tier waits for its own resting accelerator rather
        # than spill onto another), marked as taking no work.
        slots = [ClusterSlot(c.name, c.accelerator, depth[c.name], c.name not in self._resting) for c in clusters]
        free = sum(max(0, self.config.queue_depth - s.depth) for s in slots if s.accepting)
        swappable = len(queued_jobs(active))
        if not free and not swappable:
            return  # nothing can be placed and nothing swapped: the pending list is not even read
        # Only the head of each track's pending list can take a free place or a queued job's place
        # this cycle, so only the head is read (a few times what is free, for tiers whose clusters
        # are full); all of it when that head placed too little, or when a budget cap must see it.
        head = None if has_caps(self.ledger, self.config) else max(64, 4 * (free + swappable))
        on_demand = on_demand_work(self.ledger, self.sources)
        plan = plan_placement(self.ledger, self.config, slots, active, now, on_demand, head)
        if plan.cut and len(plan.assignments) < free:
            plan = plan_placement(self.ledger, self.config, slots, active, now, on_demand)
        report.held += plan.held
        accelerator = {c.name: c.accelerator for c in clusters}
        chosen = [(plan.experiments[d.experiment_id], d.cluster) for d in plan.assignments if d.experiment_id]
        chosen += self._produce([d for d in plan.assignments if d.experiment_id is None])
        chosen += self._swap(plan, {row.attempt.id: row.attempt for row in active}, report)
        self._submit_all([(exp, cluster, accelerator[cluster]) for exp, cluster in chosen], report)

    def _produce(self, requests: list[Assignment]) -> list[tuple[ExperimentRow, str]]:
        """Experiments made now for on-demand waves (a search) that the scheduler gave a slot."""
        out: list[tuple[ExperimentRow, str]] = []
        for request in requests:
            wave = self.ledger.wave(request.wave_id or "")
            source = self.sources.get(wave.kind) if wave is not None else None
            if source is not None:
                out += [(exp, request.cluster) for exp in source.produce(self.ledger, wave, 1)]
        return out

    def _swap(self, plan: Placement, attempts: dict[int, AttemptRow],
              report: CycleReport) -> list[tuple[ExperimentRow, str]]:
        """Take back queued-not-started jobs for higher-priority work of their track, which takes their place.

        The ledger moves first (conditional: a job that started meanwhile is left alone), then the
        job is cancelled; a cancel that fails leaves an orphan, which the next queue read cancels.
        """
        out: list[tuple[ExperimentRow, str]] = []
        cancels: dict[str, list[int]] = {}
        for swap in plan.swaps:
            attempt = attempts[swap.attempt_id]
            if not self.ledger.withdraw_attempt(attempt, f"taken back for higher-priority {swap.experiment_id}"):
                continue
            report.swapped += 1
            cancels.setdefault(attempt.cluster, []).append(attempt.job_id)
            out.append((plan.experiments[swap.experiment_id], swap.cluster))
        for cluster, job_ids in cancels.items():
            try:
                self.backend.cancel(cluster, job_ids)
            except BackendError as exc:  # ClusterLost included: the next queue read sorts it out
                log.warning("could not cancel jobs taken back on %s (the next queue read will): %s", cluster, exc)
        if cancels:
            log.info("took back %d queued jobs for higher-priority work", sum(len(v) for v in cancels.values()))
        return out

    def _submit_all(self, decisions: list[tuple[ExperimentRow, str, str]], report: CycleReport) -> None:
        """Record every attempt, then submit them all in one batch, then record the job ids.

        The ledger row comes first: if the controller dies mid-batch, the next one finds the
        attempt still `submitting` and adopts the job by its name, or requeues it if it never
        reached the cluster (and cancels it as an orphan if it lands after that).
        """
        items: list[tuple[AttemptRow, str, JobSpec]] = []
        waves = {w.id: w for w in self.ledger.waves()}
        for exp, cluster, accelerator in decisions:
            attempt = self.ledger.start_attempt(
                exp.id, cluster, accelerator, lambda n, e=exp.id: self.workspace.relative(self._log_path(e, n)))
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
        no_space: DiskProblem | None = None
        for (attempt, cluster, _), outcome in zip(items, outcomes):
            if isinstance(outcome, SetupFailed):
                self.ledger.abandon_attempt(attempt, str(outcome).splitlines()[0])
                setup_failure = outcome
            elif isinstance(outcome, ClusterLost):
                if cluster not in lost:
                    lost.add(cluster)
                    self._lose_cluster(cluster, outcome.reason, [], report)
                self._requeue(attempt, f"cluster {cluster} lost: {outcome.reason}", report)
            elif isinstance(outcome, NoSpaceForJob):  # never reached a cluster: no try lost, then stop
                self.ledger.abandon_attempt(attempt, f"not submitted: {outcome}")
                no_space = outcome.problem
            elif isinstance(outcome, NotSubmitted):
                # Not the experiment's fault and maybe not the cluster's: retry it elsewhere at no
                # cost, and give that cluster a rest instead of refilling it every cycle.
                log.warning("%s refused %s, resting it %.0fs: %s", cluster, attempt.experiment_id, REFUSED_REST_S, outcome)
                self.ledger.abandon_attempt(attempt, f"not submitted: {outcome}")
                self._resting[cluster] = self.clock() + REFUSED_REST_S
            elif isinstance(outcome, BackendError):
                log.warning("submit of %s to %s failed: %s", attempt.experiment_id, cluster, outcome)
                self._requeue(attempt, f"submit failed: {outcome}", report)
            elif self.ledger.attempt_submitted(attempt, outcome):
                report.submitted += 1
            else:
                # Given up meanwhile (say by `fleet down`): the job that just landed is an orphan.
                log.warning("%s landed as job %s on %s after its attempt was closed; cancelling it",
                            job_name(attempt.experiment_id, attempt.n), outcome, cluster)
                try:
                    self.backend.cancel(cluster, [outcome])
                except BackendError as exc:
                    log.warning("could not cancel it now (the next queue read will): %s", exc)
        if setup_failure is not None:
            raise setup_failure  # the jobs that did reach a cluster are recorded; stop for the fix
        if no_space is not None:
            raise no_space

    def _keep_alive(self, clusters: list[str]) -> None:
        """Reset the autodown timer of idle clusters while the ledger has work for the fleet.

        Clusters tear themselves down after `autodown_minutes` idle (so a fleet whose controller
        died stops billing); while work waits in the ledger, an idle cluster is about to get some
        (or its tier's work is queued elsewhere), so it must not go down under the fleet.
        """
        now = self.clock()
        every = self.config.fleet_size.autodown_minutes * 60 / 3
        due = [n for n in clusters if now - self._kept_alive.get(n, float("-inf")) >= every]
        if not due:
            return
        if not self.ledger.select("SELECT 1 FROM experiments WHERE state IN (?, ?, ?) LIMIT 1",
                                  (ExperimentState.PENDING.value, ExperimentState.QUEUED.value,
                                   ExperimentState.RUNNING.value)):
            return  # no work left: let idle clusters autodown
        busy = {a.cluster for a in self.ledger.attempts(active=True)}
        idle = [n for n in due if n not in busy]
        for name in due:
            self._kept_alive[name] = now
        if idle:
            self.backend.keep_alive(idle)
