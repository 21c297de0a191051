"""Which pending experiment goes to which cluster queue: a pure decision over plain records.

The controller calls `assign` every cycle and acts on what it returns; nothing here talks to a
backend, reads a clock or touches the ledger, so the rules are tested with plain tables.

Two rules order the work:
- **Tracks share the fleet fairly.** Each free queue slot goes to the track (e.g. one per agent)
  whose load per unit of weight is lowest, among tracks with work that slot can run. A track's load
  is its recent cluster-time (decayed, so a track that ran alone for hours is not starved later)
  plus the cluster-time its queued and running jobs still need. Counting jobs instead would favour
  tracks with long experiments; counting only what is committed would favour short ones.
- **Priorities order the work within a track.** Higher priority first (validation and promote
  waves before screens, `fleet bump`), then the waves' submission order: a wave that makes its
  experiments on demand (a search) takes its place in that order too, so an older search is not
  starved by newer waves that keep coming. A queued-but-not-started job of a
  lower priority may be taken back (`preemptions`) so higher-priority work of its track does not
  wait behind it in a cluster's FIFO queue.
- **Backfill comes last.** Work the fleet queued itself for idle clusters (`backfill`) only gets the
  room that no other work of any track can use, and a backfill job that has not started is taken
  back for any other work that finds no room.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterSlot:
    name: str
    accelerator: str
    depth: int  # the fleet's jobs on this cluster that are queued or running
    accepting: bool = True  # False while it rests (it refused a job): no new work, but still the fleet's


@dataclass(frozen=True)
class PendingExperiment:
    experiment_id: str
    tier: str
    gpu_hours: float = 0.0  # expected cost, for the budget cap and the tracks' shares
    priority: int = 0
    track: str = ""
    backfill: bool = False  # the fleet's own filler: placed after all other work
    wave_order: float = 0.0  # its wave's submission time: within a priority, older waves' work first


@dataclass(frozen=True)
class OnDemand:
    """A wave that creates its experiments when a slot frees (a search): it can produce `count` more.

    It competes like pending experiments of its priority and track, in its wave's submission order
    (`wave_order`; after pending experiments of a wave of the same order); an Assignment with
    `experiment_id` None asks the caller to create one.
    """

    wave_id: str
    tier: str
    count: int
    priority: int = 0
    track: str = ""
    gpu_hours: float = 0.0
    wave_order: float = 0.0  # its submission time, comparable with `PendingExperiment.wave_order`


@dataclass(frozen=True)
class TrackLoad:
    """What a track uses of the fleet, in cluster-seconds."""

    recent_s: float = 0.0  # cluster-time used recently, decayed (see `decayed_usage`)
    committed_s: float = 0.0  # what its queued and running jobs still need


@dataclass(frozen=True)
class Assignment:
    experiment_id: str | None  # None: create one for `wave_id` (an OnDemand wave) and place it here
    cluster: str
    wave_id: str | None = None


@dataclass(frozen=True)
class QueuedJob:
    """A job in a cluster's queue that has not started (the ledger's attempt is `pending`)."""

    attempt_id: int
    cluster: str
    priority: int
    track: str = ""
    queued_at: float = 0.0
    backfill: bool = False


def eligible_clusters(
    tier: str, clusters: Sequence[ClusterSlot], tiers: Mapping[str, Sequence[str]]
) -> list[ClusterSlot]:
    """Clusters whose accelerator the tier asks for.

    A tier that names no accelerators, or names none the fleet has (a CPU-only local fleet running
    the `screen` tier of H100s), runs anywhere: placing work beats leaving it stranded. A tier's
    cluster that is merely resting still counts as the fleet having it: its work waits rather
    than spill onto other hardware (a validation wave must not mix accelerators).
    """
    wanted = set(tiers.get(tier, ()))
    matching = [c for c in clusters if c.accelerator in wanted]
    return matching if matching else list(clusters)


@dataclass(frozen=True)
class _Candidate:
    tier: str
    gpu_hours: float
    experiment_id: str | None
    wave_id: str | None


def _by_track(pending: Sequence[PendingExperiment], on_demand: Sequence[OnDemand],
              free_slots: int) -> dict[str, list[_Candidate]]:
    """Each track's work in the order it should start: priority, then wave order (pending before on-demand
    of the same order), then input order. Ordering on-demand work by its wave, not after all pending
    work, is what keeps a search going while newer waves keep arriving."""
    keyed: dict[str, list[tuple[tuple, _Candidate]]] = {}
    for i, exp in enumerate(pending):
        keyed.setdefault(exp.track, []).append(
            ((-exp.priority, exp.wave_order, 0, i), _Candidate(exp.tier, exp.gpu_hours, exp.experiment_id, None)))
    for i, wave in enumerate(on_demand):
        for k in range(min(wave.count, free_slots)):  # never more than could be placed now
            keyed.setdefault(wave.track, []).append(
                ((-wave.priority, wave.wave_order, 1, i, k), _Candidate(wave.tier, wave.gpu_hours, None, wave.wave_id)))
    return {track: [c for _, c in sorted(items, key=lambda item: item[0])] for track, items in keyed.items()}


def assign(
    clusters: Sequence[ClusterSlot],
    pending: Sequence[PendingExperiment],
    target_depth: int,
    tiers: Mapping[str, Sequence[str]],
    *,
    loads: Mapping[str, TrackLoad] | None = None,
    weights: Mapping[str, float] | None = None,
    on_demand: Sequence[OnDemand] = (),
) -> list[Assignment]:
    """Fill every cluster's queue up to `target_depth`: the fairest track first, its best work first.

    Each experiment goes to the least-loaded eligible cluster (ties: by name, so the decision is
    deterministic). An experiment with no room on its clusters is skipped without blocking work of
    other tiers behind it. Resting clusters (`accepting` False) get nothing. With one track this is
    priority order, then the order of `pending` (submission order). Backfill experiments get the
    room left after everything else, in their own order.
    """
    depth = {c.name: c.depth for c in clusters}
    real = [p for p in pending if not p.backfill]
    out = _fill(clusters, depth, real, on_demand, target_depth, tiers, loads or {}, weights or {})
    filler = [p for p in pending if p.backfill]
    if filler:
        out += _fill(clusters, depth, filler, (), target_depth, tiers, {}, {})
    return out


def _fill(clusters: Sequence[ClusterSlot], depth: dict[str, int], pending: Sequence[PendingExperiment],
          on_demand: Sequence[OnDemand], target_depth: int, tiers: Mapping[str, Sequence[str]],
          loads: Mapping[str, TrackLoad], weights: Mapping[str, float]) -> list[Assignment]:
    """`assign` over one class of work; `depth` is updated in place with what it placed."""
    free = sum(max(0, target_depth - depth[c.name]) for c in clusters if c.accepting)
    queues = _by_track(pending, on_demand, free)
    load = {t: loads.get(t, TrackLoad()).recent_s + loads.get(t, TrackLoad()).committed_s for t in queues}
    position = dict.fromkeys(queues, 0)
    full_tiers: set[str] = set()  # a tier with no room now has none later in this call either
    out: list[Assignment] = []
    while queues:
        # The track whose share per unit of weight is lowest after taking its next job; ties by name.
        track = min(queues, key=lambda t: ((load[t] + _seconds(queues[t][position[t]])) / weights.get(t, 1.0), t))
        work, i = queues[track], position[track]
        while i < len(work):
            candidate = work[i]
            i += 1
            if candidate.tier in full_tiers:
                continue
            room = [c for c in eligible_clusters(candidate.tier, clusters, tiers)
                    if c.accepting and depth[c.name] < target_depth]
            if not room:
                full_tiers.add(candidate.tier)
                continue
            best = min(room, key=lambda c: (depth[c.name], c.name))
            depth[best.name] += 1
            load[track] += _seconds(candidate)
            out.append(Assignment(candidate.experiment_id, best.name, candidate.wave_id))
            break
        position[track] = i
        if i >= len(work):
            del queues[track]
    return out


def _seconds(candidate: _Candidate) -> float:
    # An experiment of unknown length still counts, so shares move even when every estimate is 0.
    return max(candidate.gpu_hours * 3600, 1.0)


@dataclass(frozen=True)
class Swap:
    """Take back the queued job of `attempt_id` and queue `experiment_id` in its place on `cluster`."""

    attempt_id: int
    experiment_id: str
    cluster: str


def preemptions(
    clusters: Sequence[ClusterSlot],
    queued: Sequence[QueuedJob],
    unplaced: Sequence[PendingExperiment],
    tiers: Mapping[str, Sequence[str]],
) -> list[Swap]:
    """Queued-but-not-started jobs to swap for higher-priority work of their own track, or for any work
    in place of backfill.

    `unplaced` is the pending work `assign` found no room for. Each takes at most one job of its own
    track with a strictly lower priority, on a cluster its tier may use that takes work: backfill
    first, then the lowest priority, then the most recently queued (it has waited least). The new
    job takes the old one's place, so the tracks' shares stay as `assign` made them; jobs of other
    tracks are never taken (tracks share the fleet by fair shares, not by priority), except backfill,
    which yields to every track's work. Backfill never takes anything.
    """
    taken: set[int] = set()
    out: list[Swap] = []
    for exp in sorted((e for e in unplaced if not e.backfill), key=lambda e: -e.priority):
        allowed = {c.name for c in eligible_clusters(exp.tier, clusters, tiers) if c.accepting}
        victims = [j for j in queued if j.attempt_id not in taken and j.cluster in allowed
                   and (j.backfill or (j.track == exp.track and j.priority < exp.priority))]
        if not victims:
            continue
        victim = min(victims, key=lambda j: (not j.backfill, j.priority, -j.queued_at, -j.attempt_id))
        taken.add(victim.attempt_id)
        out.append(Swap(victim.attempt_id, exp.experiment_id, victim.cluster))
    return out


def decayed_usage(intervals: Sequence[tuple[float, float]], now: float, half_life_s: float) -> float:
    """Cluster-seconds of (start, end) intervals, each second weighted by 2^(-age / half_life).

    Fair shares use it, so that a track's use an hour ago barely counts and its use now counts fully.
    """
    rate = math.log(2) / half_life_s
    total = 0.0
    for start, end in intervals:
        end = min(end, now)
        if end <= start:
            continue
        total += (math.exp(-rate * (now - end)) - math.exp(-rate * (now - start))) / rate
    return total


def within_budget(
    pending: Sequence[PendingExperiment], spent_gpu_hours: float, committed_gpu_hours: float, cap: float | None
) -> tuple[list[PendingExperiment], list[PendingExperiment]]:
    """Split pending experiments into (may start, must be held) under a GPU-hour cap.

    `committed_gpu_hours` is what queued and running experiments are expected to use; an
    experiment that would take the total past the cap is held, and so is everything after it,
    so the order of the wave is kept.
    """
    if cap is None:
        return list(pending), []
    total = spent_gpu_hours + committed_gpu_hours
    for i, exp in enumerate(pending):
        if total + exp.gpu_hours > cap + 1e-9:
            return list(pending[:i]), list(pending[i:])
        total += exp.gpu_hours
    return list(pending), []
