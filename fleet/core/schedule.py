"""Which pending experiment goes to which cluster queue: a pure decision over plain records.

The controller calls `assign` every cycle and acts on what it returns; nothing here talks to a
backend, reads a clock or touches the ledger, so the rules are tested with plain tables.
"""
from __future__ import annotations

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
    gpu_hours: float = 0.0  # expected cost, for the budget cap


@dataclass(frozen=True)
class Assignment:
    experiment_id: str
    cluster: str


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


def assign(
    clusters: Sequence[ClusterSlot],
    pending: Sequence[PendingExperiment],
    target_depth: int,
    tiers: Mapping[str, Sequence[str]],
) -> list[Assignment]:
    """Fill every cluster's queue up to `target_depth`, oldest pending experiment first.

    Each experiment goes to the least-loaded eligible cluster (ties: by name, so the decision is
    deterministic). An experiment with no room on its clusters is skipped without blocking
    experiments of other tiers behind it. Resting clusters (`accepting` False) get nothing.
    """
    depth = {c.name: c.depth for c in clusters}
    out: list[Assignment] = []
    for exp in pending:
        candidates = [c for c in eligible_clusters(exp.tier, clusters, tiers)
                      if c.accepting and depth[c.name] < target_depth]
        if not candidates:
            continue
        best = min(candidates, key=lambda c: (depth[c.name], c.name))
        depth[best.name] += 1
        out.append(Assignment(exp.experiment_id, best.name))
    return out


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
