"""When each cluster would run out of work: what `fleet wait --until-idle` waits for.

`dry_in` is pure: it plays the controller forward over the clusters' queued and running work and the
pending experiments (each to the eligible cluster that frees first, best priority first) and says
when each cluster would be left with nothing to do, and when each wave's last run would end.
`drain_estimate` and `drain_forecast` read their inputs from the ledger (a search's planned runs are
work left, in their wave's place, as the scheduler gives them slots); an experiment's expected
length is its TIME_BUDGET plus the start-up and evaluation time the fleet's recent runs took beyond
their budgets.
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
    wave: str = ""  # for `wave_ends`


def dry_in(clusters: Sequence[ClusterWork], pending: Sequence[PendingRun],
           tiers: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Seconds from now until each cluster has nothing left to run (pure).

    Pending runs are handed out in the order given (best first), each to the eligible cluster that
    frees first (ties by name), as the controller's refills would.
    """
    return _play(clusters, pending, tiers, {})


def wave_ends(clusters: Sequence[ClusterWork], pending: Sequence[PendingRun], tiers: Mapping[str, Sequence[str]],
              active_ends: Mapping[str, float]) -> dict[str, float]:
    """Seconds from now until each wave's last run ends (pure): `active_ends` are those of its queued
    and running runs (by wave), the pending ones are played forward as in `dry_in`. A pending run no
    cluster can take has no end: its wave gets none."""
    ends = dict(active_ends)
    _play(clusters, pending, tiers, ends)
    return ends


def _play(clusters: Sequence[ClusterWork], pending: Sequence[PendingRun], tiers: Mapping[str, Sequence[str]],
          ends: dict[str, float]) -> dict[str, float]:
    free_at = {c.name: max(0.0, c.busy_s) for c in clusters}
    slots = [ClusterSlot(c.name, c.accelerator, 0) for c in clusters]
    heaps: dict[frozenset[str], list[tuple[float, str]]] = {}
    for run in pending:
        names = frozenset(c.name for c in eligible_clusters(run.tier, slots, tiers))
        if not names:
            ends[run.wave] = float("inf")
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
        ends[run.wave] = max(ends.get(run.wave, 0.0), free_at[name])
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


def drain_estimate(ledger: Ledger, tiers: Mapping[str, Sequence[str]], now: float,
                   backfill: bool = True) -> dict[str, float]:
    """Seconds until each cluster that is up runs dry, from the ledger (not the backend)."""
    return drain_forecast(ledger, tiers, now, backfill).dry_in


@dataclass(frozen=True)
class Forecast:
    dry_in: dict[str, float]  # cluster -> seconds until it has nothing left to run
    wave_eta: dict[str, float]  # wave with unfinished runs -> seconds until its last run ends (inf: none can run it)


def drain_forecast(ledger: Ledger, tiers: Mapping[str, Sequence[str]], now: float,
                   backfill: bool = True) -> Forecast:
    """When each cluster that is up runs dry and each unfinished wave ends, from the ledger; with
    `backfill` False, backfill work does not count (it yields to anything submitted)."""
    clusters = ledger.clusters([ClusterState.UP])
    if not clusters:
        return Forecast({}, {})
    overhead = start_overhead_s(ledger)
    busy = {c.name: 0.0 for c in clusters}
    active_ends: dict[str, float] = {}
    for row in active_work(ledger):  # in submission order: each cluster runs its queue first in, first out
        if row.attempt.cluster not in busy or (row.backfill and not backfill):
            continue
        length = row.expected_s - START_OVERHEAD_S + overhead
        started = row.attempt.started_at if row.attempt.state == "running" else None
        busy[row.attempt.cluster] += length if started is None else max(0.0, length - (now - started))
        wave = row.attempt.experiment_id.rsplit("-", 1)[0]
        active_ends[wave] = max(active_ends.get(wave, 0.0), busy[row.attempt.cluster])
    pending = [PendingRun(p.experiment.tier, p.expected_s - START_OVERHEAD_S + overhead, p.experiment.wave_id)
               for p in pending_work(ledger, planned=True) if backfill or not p.backfill]
    work = [ClusterWork(c.name, c.accelerator, busy[c.name]) for c in clusters]
    return Forecast(dry_in(work, pending, tiers), wave_ends(work, pending, tiers, active_ends))
