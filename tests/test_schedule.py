"""The assignment decision, as tables of (clusters, pending, depth) → assignments."""
from __future__ import annotations

import pytest

from fleet.core.schedule import (
    Assignment,
    ClusterSlot,
    PendingExperiment,
    QueuedJob,
    Swap,
    TrackLoad,
    assign,
    eligible_clusters,
    preemptions,
    within_budget,
)

TIERS = {"screen": ["H100"], "validate": ["H200"], "any": []}


def C(name, acc="H100", depth=0):
    return ClusterSlot(name, acc, depth)


def P(eid, tier="screen", hours=0.0):
    return PendingExperiment(eid, tier, hours)


@pytest.mark.parametrize(
    "clusters, pending, depth, expected",
    [
        # empty fleet or no work: nothing to do
        ([], [P("e1")], 2, []),
        ([C("a")], [], 2, []),
        # fill to depth, least-loaded first, ties by name
        ([C("a"), C("b")], [P("e1"), P("e2"), P("e3"), P("e4"), P("e5")], 2,
         [("e1", "a"), ("e2", "b"), ("e3", "a"), ("e4", "b")]),
        # a cluster already at depth gets nothing
        ([C("a", depth=2), C("b", depth=1)], [P("e1"), P("e2")], 2, [("e1", "b")]),
        # depth 1: one job per cluster
        ([C("a"), C("b")], [P("e1"), P("e2"), P("e3")], 1, [("e1", "a"), ("e2", "b")]),
        # tiers go to their accelerator; a full tier does not block the other tier
        ([C("h1", "H100", 2), C("h2", "H200")], [P("s1"), P("v1", "validate")], 2, [("v1", "h2")]),
        ([C("h1", "H100"), C("h2", "H200")], [P("v1", "validate"), P("s1"), P("v2", "validate")], 2,
         [("v1", "h2"), ("s1", "h1"), ("v2", "h2")]),
        # a tier whose accelerators the fleet lacks runs anywhere (a CPU-only local fleet)
        ([C("c1", "cpu"), C("c2", "cpu")], [P("v1", "validate"), P("s1")], 2, [("v1", "c1"), ("s1", "c2")]),
        # an unknown tier or a tier with no accelerators runs anywhere
        ([C("a", "H200")], [P("x", "nope"), P("y", "any")], 2, [("x", "a"), ("y", "a")]),
    ],
)
def test_assign_table(clusters, pending, depth, expected):
    assert assign(clusters, pending, depth, TIERS) == [Assignment(e, c) for e, c in expected]


def test_assign_is_deterministic_and_never_exceeds_depth():
    clusters = [C(f"c{i}", "H100" if i % 2 else "H200", depth=i % 3) for i in range(8)]
    pending = [P(f"e{i}", "screen" if i % 3 else "validate") for i in range(50)]
    first = assign(clusters, pending, 3, TIERS)
    assert first == assign(clusters, pending, 3, TIERS)
    load = {c.name: c.depth for c in clusters}
    for a in first:
        load[a.cluster] += 1
    assert max(load.values()) <= 3
    assert len({a.experiment_id for a in first}) == len(first)


def test_eligible_prefers_matching_accelerator():
    fleet = [C("a", "H100"), C("b", "H200")]
    assert [c.name for c in eligible_clusters("validate", fleet, TIERS)] == ["b"]
    assert [c.name for c in eligible_clusters("screen", fleet, TIERS)] == ["a"]


@pytest.mark.parametrize(
    "hours, spent, committed, cap, allowed, held",
    [
        ([0.1, 0.1, 0.1], 0.0, 0.0, None, 3, 0),
        ([0.1, 0.1, 0.1], 0.0, 0.0, 0.25, 2, 1),  # the experiment that would cross the cap is held
        ([0.1, 0.1, 0.1], 0.2, 0.0, 0.3, 1, 2),
        ([0.1, 0.1], 0.1, 0.15, 0.3, 0, 2),  # queued work counts as committed
        ([0.1, 0.1], 0.0, 0.0, 0.2, 2, 0),  # exactly at the cap is allowed
        ([], 5.0, 0.0, 1.0, 0, 0),
    ],
)
def test_budget_cap(hours, spent, committed, cap, allowed, held):
    pending = [P(f"e{i}", hours=h) for i, h in enumerate(hours)]
    ok, hold = within_budget(pending, spent, committed, cap)
    assert (len(ok), len(hold)) == (allowed, held)
    assert ok + hold == pending  # order kept


@pytest.mark.parametrize(
    "clusters, pending, expected",
    [
        # the tier's only H200 rests (it refused a job): validate work waits, screen work goes on
        ([C("h1", "H100"), ClusterSlot("h2", "H200", 0, accepting=False)], [P("v1", "validate"), P("s1")],
         [("s1", "h1")]),
        # rested or not, a tier with none of its accelerators in the fleet runs anywhere
        ([C("h1", "H100"), ClusterSlot("h3", "H100", 0, accepting=False)], [P("v1", "validate")], [("v1", "h1")]),
        # a resting cluster gets nothing, even work that may run anywhere
        ([ClusterSlot("h1", "H100", 0, accepting=False), C("h2", "H200")], [P("a1", "any"), P("a2", "any")],
         [("a1", "h2"), ("a2", "h2")]),
    ],
)
def test_a_resting_cluster_keeps_its_tier_waiting_instead_of_spilling(clusters, pending, expected):
    assert assign(clusters, pending, 2, TIERS) == [Assignment(e, c) for e, c in expected]


# ---- backfill: last in, first out --------------------------------------------------------------------------

def B(eid, tier="screen", track="bf"):
    return PendingExperiment(eid, tier, 0.1, -1000, track, backfill=True)


@pytest.mark.parametrize("clusters, pending, expected", [
    # backfill listed first, with the least-loaded track: the real work still goes first
    ([C("a")], [B("f1"), PendingExperiment("r1", "screen", 0.1, 0, "x")], [("r1", "a"), ("f1", "a")]),
    # backfill only gets room left: here none
    ([C("a", depth=1)], [P("r1"), B("f1")], [("r1", "a")]),
    # room real work cannot use (another tier's cluster) goes to backfill
    ([C("h1", "H100", 2), C("h2", "H200")], [P("s1"), B("f1", "validate")], [("f1", "h2")]),
])
def test_backfill_only_gets_the_room_left(clusters, pending, expected):
    got = assign(clusters, pending, 2, TIERS, loads={"x": TrackLoad(10_000.0)}, weights={"x": 1.0})
    assert [(a.experiment_id, a.cluster) for a in got] == expected


def test_queued_backfill_yields_to_any_tracks_work_and_never_takes_any():
    clusters = [C("a", depth=2)]
    queued = [QueuedJob(1, "a", 0, "x", 10.0), QueuedJob(2, "a", -1000, "bf", 20.0, backfill=True)]
    # a screen of another track, same priority as x's job: only the backfill job can be taken
    swaps = preemptions(clusters, queued, [PendingExperiment("r1", "screen", 0.0, 0, "y")], TIERS)
    assert swaps == [Swap(2, "r1", "a")]
    # backfill never takes a queued job, not even a lower-priority one
    low = [QueuedJob(3, "a", -5, "bf", 10.0)]
    assert preemptions(clusters, low, [B("f1")], TIERS) == []
