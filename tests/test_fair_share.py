"""Priorities, tracks and swaps in the scheduler, as tables, plus a simulated run with a fake clock.

The simulation drives the pure `assign` over plain records the way the controller does: every
cycle, finished jobs leave their cluster's FIFO queue, each track's load is its decayed recent
cluster-time plus what its queued and running jobs still need, and free slots are refilled.
"""
from __future__ import annotations

import math
import random

import pytest

from fleet.core.schedule import (
    Assignment,
    ClusterSlot,
    OnDemand,
    PendingExperiment,
    QueuedJob,
    Swap,
    TrackLoad,
    assign,
    decayed_usage,
    preemptions,
)

TIERS = {"screen": ["H100"], "validate": ["H200"], "any": []}


def C(name, acc="H100", depth=0, accepting=True):
    return ClusterSlot(name, acc, depth, accepting)


def P(eid, track="", priority=0, tier="screen", hours=0.1):
    return PendingExperiment(eid, tier, hours, priority, track)


def placed(result):
    return [(a.experiment_id, a.cluster) for a in result]


# --- priorities ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pending, expected", [
    # a later, higher-priority wave goes first; equal priorities keep submission order
    ([P("s1"), P("s2"), P("s3"), P("v1", priority=10), P("v2", priority=10)], ["v1", "v2"]),
    ([P("s1", priority=1), P("s2"), P("v1", priority=1)], ["s1", "v1"]),
    # a negative priority waits behind the default
    ([P("low", priority=-5), P("s1")], ["s1", "low"]),
])
def test_priority_orders_the_work_of_a_track(pending, expected):
    out = assign([C("a"), C("b")], pending, 1, TIERS)
    assert [a.experiment_id for a in out] == expected


def test_a_high_priority_experiment_without_room_does_not_block_others():
    clusters = [C("h100"), C("h200", "H200", depth=2)]  # the validation accelerator is full
    out = assign(clusters, [P("v1", priority=10, tier="validate"), P("s1")], 2, TIERS)
    assert placed(out) == [("s1", "h100")]


# --- tracks ----------------------------------------------------------------------------------------
def test_two_idle_tracks_alternate_on_free_slots():
    pending = [P(f"a{i}", "a") for i in range(4)] + [P(f"b{i}", "b") for i in range(4)]
    out = assign([C("c1"), C("c2")], pending, 2, TIERS)
    assert sorted(a.experiment_id for a in out) == ["a0", "a1", "b0", "b1"]


def test_the_track_below_its_share_gets_the_free_slots():
    pending = [P(f"a{i}", "a") for i in range(4)] + [P(f"b{i}", "b") for i in range(4)]
    loads = {"a": TrackLoad(recent_s=3600.0), "b": TrackLoad()}  # a ran alone for a while
    out = assign([C("c1"), C("c2")], pending, 2, TIERS, loads=loads)
    assert [a.experiment_id for a in out] == ["b0", "b1", "b2", "b3"]


def test_weights_split_the_slots():
    pending = [P(f"a{i}", "a") for i in range(12)] + [P(f"b{i}", "b") for i in range(12)]
    out = assign([C(f"c{i}") for i in range(6)], pending, 2, TIERS, weights={"a": 2.0, "b": 1.0})
    tracks = [a.experiment_id[0] for a in out]
    assert (tracks.count("a"), tracks.count("b")) == (8, 4)


def test_priorities_do_not_cross_tracks():
    pending = [P("a-screen", "a"), P("b-validate", "b", priority=10)]
    out = assign([C("c1")], pending, 1, TIERS, loads={"b": TrackLoad(committed_s=3600.0)})
    assert [a.experiment_id for a in out] == ["a-screen"]  # b is over its share, whatever its priority


def test_on_demand_waves_get_slots_after_pending_work_of_their_priority():
    search = OnDemand("search-1", "screen", count=5, priority=0)
    out = assign([C("c1"), C("c2"), C("c3")], [P("s1"), P("s2", priority=-1)], 1, TIERS, on_demand=[search])
    assert out == [Assignment("s1", "c1"), Assignment(None, "c2", "search-1"), Assignment(None, "c3", "search-1")]
    urgent = OnDemand("search-2", "screen", count=1, priority=5)
    out = assign([C("c1"), C("c2")], [P("s1")], 1, TIERS, on_demand=[urgent])
    assert out == [Assignment(None, "c1", "search-2"), Assignment("s1", "c2")]


def test_an_older_search_wave_goes_before_a_newer_wave_of_its_priority_and_track():
    # An agent that keeps submitting must not starve its search: the search's trials take their wave's place.
    search = OnDemand("search", "screen", count=10, wave_order=1.0)
    newer = [PendingExperiment(f"g{i}", "screen", 0.1, wave_order=2.0) for i in range(6)]
    out = assign([C("c1"), C("c2")], newer, 2, TIERS, on_demand=[search])
    assert out == [Assignment(None, c, "search") for c in ("c1", "c2", "c1", "c2")]  # every place: one ask each
    # ... and a newer search waves behind an older wave's pending work, as any newer wave does.
    later = OnDemand("search", "screen", count=10, wave_order=3.0)
    out = assign([C("c1"), C("c2")], newer[:3], 2, TIERS, on_demand=[later])
    assert out == [Assignment("g0", "c1"), Assignment("g1", "c2"), Assignment("g2", "c1"),
                   Assignment(None, "c2", "search")]
    # Priority still comes first, and other tracks keep their fair share.
    urgent = [PendingExperiment("v1", "screen", 0.1, priority=5, wave_order=2.0)]
    out = assign([C("c1")], urgent, 2, TIERS, on_demand=[search])
    assert out == [Assignment("v1", "c1"), Assignment(None, "c1", "search")]
    other = [PendingExperiment("o1", "screen", 0.1, track="b", wave_order=0.0)]
    search_a = OnDemand("search", "screen", 10, track="a", gpu_hours=0.1, wave_order=1.0)
    out = assign([C("c1")], other, 2, TIERS, on_demand=[search_a])
    assert sorted(placed(out), key=str) == sorted([("o1", "c1"), (None, "c1")], key=str)


def test_on_demand_never_asks_for_more_than_the_free_slots():
    out = assign([C("c1", depth=1)], [], 2, TIERS, on_demand=[OnDemand("search-1", "screen", count=50)])
    assert out == [Assignment(None, "c1", "search-1")]


# --- swaps -----------------------------------------------------------------------------------------
def Q(attempt_id, cluster, priority=0, track="", queued_at=0.0):
    return QueuedJob(attempt_id, cluster, priority, track, queued_at)


@pytest.mark.parametrize("queued, unplaced, expected", [
    # a lower-priority queued job of the same track gives its place, the latest queued first
    ([Q(1, "a", queued_at=1), Q(2, "b", queued_at=2)], [P("v1", priority=10)], [Swap(2, "v1", "b")]),
    # the lowest priority goes first
    ([Q(1, "a", priority=-1, queued_at=1), Q(2, "b", queued_at=2)], [P("v1", priority=10)], [Swap(1, "v1", "a")]),
    # each job once; more high-priority work than queued jobs leaves the rest waiting
    ([Q(1, "a")], [P("v1", priority=10), P("v2", priority=10)], [Swap(1, "v1", "a")]),
    # never an equal or higher priority, never another track's job
    ([Q(1, "a", priority=10)], [P("v1", priority=10)], []),
    ([Q(1, "a", track="other")], [P("v1", priority=10)], []),
    # only on a cluster the work's tier may use
    ([Q(1, "h200")], [P("s1", priority=10, tier="screen")], []),
])
def test_swap_table(queued, unplaced, expected):
    clusters = [C("a"), C("b"), C("h200", "H200")]
    assert preemptions(clusters, queued, unplaced, TIERS) == expected


def test_no_swap_onto_a_resting_cluster():
    assert preemptions([C("a", accepting=False)], [Q(1, "a")], [P("v1", priority=5)], TIERS) == []


# --- decayed usage ---------------------------------------------------------------------------------
@pytest.mark.parametrize("intervals, now, half_life, expected", [
    ([(0.0, 100.0)], 100.0, 100.0, 50.0 / math.log(2)),  # (1 - 1/2) / (ln 2 / 100)
    ([(0.0, 100.0)], 200.0, 100.0, 25.0 / math.log(2)),  # a half-life later: half of it
    ([(0.0, 500.0)], 100.0, 100.0, 50.0 / math.log(2)),  # only up to now
    ([(50.0, 50.0)], 100.0, 100.0, 0.0),
])
def test_decayed_usage(intervals, now, half_life, expected):
    assert decayed_usage(intervals, now, half_life) == pytest.approx(expected)


# --- a simulated run -------------------------------------------------------------------------------
def simulate(durations: dict[str, float], weights: dict[str, float] | None = None, *, clusters: int = 8,
             depth: int = 2, hours: float = 4.0, late: dict[str, float] | None = None, seed: int = 0,
             half_life_s: float = 600.0, step_s: float = 5.0, fair: bool = True) -> dict[str, float]:
    """Each track's share of the cluster-time over a run (after every track has arrived)."""
    rng = random.Random(seed)
    late = late or {}
    names = [f"c{i:02d}" for i in range(clusters)]
    queues: dict[str, list[list]] = {n: [] for n in names}  # [track, remaining_s, expected_s, started_at]
    history: dict[str, list[tuple[float, float]]] = {t: [] for t in durations}
    used = dict.fromkeys(durations, 0.0)
    counter = 0
    now = 0.0
    measure_from = max(late.values(), default=0.0)
    while now < hours * 3600:
        for name, queue in queues.items():  # run each cluster's FIFO queue for one step
            left = step_s
            while queue and left > 0:
                head = queue[0]
                if head[3] is None:
                    head[3] = now + step_s - left
                run = min(left, head[1])
                head[1] -= run
                left -= run
                if now >= measure_from:
                    used[head[0]] += run
                if head[1] <= 1e-9:
                    history[head[0]].append((head[3], now + step_s - left))
                    queue.pop(0)
        now += step_s
        active = [t for t in durations if now >= late.get(t, 0.0)]
        loads = {}
        for track in active:
            committed = sum(j[1] if j[3] is not None else j[2] for q in queues.values() for j in q if j[0] == track)
            running = [(j[3], now) for q in queues.values() for j in q if j[0] == track and j[3] is not None]
            loads[track] = TrackLoad(decayed_usage(history[track] + running, now, half_life_s), committed)
        pending = []
        for track in active:  # plenty of work: more than the fleet could take in one cycle
            for _ in range(clusters * depth):
                counter += 1
                pending.append(PendingExperiment(f"{track}-{counter}", "any", durations[track] / 3600, 0, track))
        slots = [ClusterSlot(n, "H100", len(q)) for n, q in queues.items()]
        for a in assign(slots, pending, depth, TIERS, loads=loads if fair else None, weights=weights):
            track = a.experiment_id.split("-")[0]
            length = durations[track] * rng.uniform(0.8, 1.2)  # runs are not exactly their estimate
            queues[a.cluster].append([track, length, durations[track], None])
    total = sum(used.values())
    return {t: used[t] / total for t in durations}


@pytest.mark.parametrize("durations", [
    {"a": 300.0, "b": 300.0},
    {"a": 300.0, "b": 100.0},  # one track's experiments are three times as long
    {"a": 600.0, "b": 60.0},
])
def test_two_equal_tracks_each_get_half_the_cluster_time(durations):
    shares = simulate(durations)
    assert shares["a"] == pytest.approx(0.5, abs=0.15), shares
    assert shares["b"] == pytest.approx(0.5, abs=0.15), shares


def test_a_track_arriving_late_catches_up_to_its_half():
    shares = simulate({"a": 300.0, "b": 300.0}, late={"b": 3600.0}, hours=3.0)
    assert shares["b"] == pytest.approx(0.5, abs=0.15), shares


def test_weights_split_the_cluster_time():
    shares = simulate({"a": 300.0, "b": 200.0}, weights={"a": 2.0, "b": 1.0})
    assert shares["a"] == pytest.approx(2 / 3, abs=0.15), shares


def test_the_simulation_can_fail_without_the_tracks_loads():
    """Without each track's load the scheduler sees only this cycle's placements: the shares drift."""
    shares = simulate({"a": 600.0, "b": 60.0}, fair=False)
    assert abs(shares["a"] - 0.5) > 0.15, shares
