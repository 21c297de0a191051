"""When each cluster would run out of work: what `fleet wait --until-idle` waits for.

`dry_in` is pure: it plays the controller forward over the clusters' queued and running work and the
pending experiments (each to the eligible cluster that frees first, best priority first) and says
when each cluster would be left with nothing to do. `drain_estimate` reads its inputs from the
ledger; an experiment's expected length is its TIME_BUDGET plus the start-up and evaluation time
the fleet's recent runs took beyond their budgets.
"""
from __future__ import annotations

import heapq
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet.core.demand import START_OVERHEAD_S, default_budget_of, active_work, expected_seconds, pending_work
from fleet.core.ledger import Ledger
from fleet.core.schedule import ClusterSlot, eligible_clusters
from fleet.types import ClusterState


@dataclass(frozen=True)
class ClusterWork:
    name: str
    accelerator: str
    busy_s: float  # expected seconds until its queued and running jobs are done


@dataclass(frozen=True)
class PendingRun:
    tier: str
    seconds: float


def dry_in(clusters: Sequence[ClusterWork], pending: Sequence[PendingRun],
           tiers: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Seconds from now until each cluster has nothing left to run (pure).

    Pending runs are handed out in the order given (best first), each to the eligible cluster that
    frees first (ties by name), as the controller's refills would.
    """
    free_at = {c.name: max(0.0, c.busy_s) for c in clusters}
    slots = [ClusterSlot(c.name, c.accelerator, 0) for c in clusters]
    heaps: dict[frozenset[str], list[tuple[float, str]]] = {}
    for run in pending:
        names = frozenset(c.name for c in eligible_clusters(run.tier, slots, tiers))
        if not names:
            continue
        heap = heaps.get(names)
        if heap is None:
            heap = heaps[names] = [(free_at[n], n) for n in sorted(names)]
            heapq.heapify(heap)
        while True:  # entries go stale when another tier's runs moved a shared cluster on
            at, name = heapq.heappop(heap)
            if at == free_at[name]:
                break
            heapq.heappush(heap, (free_at[name], name))
        free_at[name] = at + run.seconds
        heapq.heappush(heap, (free_at[name], name))
    return free_at


def start_overhead_s(ledger: Ledger, last: int = 50) -> float:
    """Median seconds recent successful runs took beyond their TIME_BUDGET (start-up, evaluation)."""
    rows = ledger.select(
        "SELECT a.started_at AS s, a.ended_at AS e, x.config AS config, w.spec AS spec FROM attempts a"
        " JOIN experiments x ON x.id = a.experiment_id JOIN waves w ON w.id = x.wave_id"
        " WHERE a.state = 'succeeded' AND a.started_at IS NOT NULL AND a.ended_at IS NOT NULL"
        " ORDER BY a.id DESC LIMIT ?", (last,))
    extra = []
    for row in rows:
        budget = expected_seconds(json.loads(row["config"]), default_budget_of(row["spec"])) - START_OVERHEAD_S
        extra.append(max(0.0, row["e"] - row["s"] - budget))
    return statistics.median(extra) if extra else START_OVERHEAD_S


def drain_estimate(ledger: Ledger, tiers: Mapping[str, Sequence[str]], now: float) -> dict[str, float]:
    """Seconds until each cluster that is up runs dry, from the ledger (not the backend)."""
    clusters = ledger.clusters([ClusterState.UP])
    if not clusters:
        return {}
    overhead = start_overhead_s(ledger)
    busy = {c.name: 0.0 for c in clusters}
    for row in active_work(ledger):
        if row.attempt.cluster not in busy:
            continue
        length = row.expected_s - START_OVERHEAD_S + overhead
        started = row.attempt.started_at if row.attempt.state == "running" else None
        busy[row.attempt.cluster] += length if started is None else max(0.0, length - (now - started))
    pending = [PendingRun(p.experiment.tier, p.expected_s - START_OVERHEAD_S + overhead) for p in pending_work(ledger)]
    return dry_in([ClusterWork(c.name, c.accelerator, busy[c.name]) for c in clusters], pending, tiers)
