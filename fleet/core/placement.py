"""Planning one cycle's placements: the ledger's reads turned into the scheduler's pure decisions.

`plan_placement` reads the pending work, applies the budget caps, and asks `fleet.core.schedule`
which experiment goes where (fair shares between tracks, priorities within one) and which queued
job to swap for higher-priority work. The controller acts on the plan.

Waves that create their experiments on demand (a search) take part through a `WaveSource`
registered for their kind: the source says how many more experiments a wave could produce now
(`capacity`), and the controller asks it to `produce` one when the scheduler gives the wave a slot.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fleet.config import FleetConfig
from fleet.core.budget import apply_budget, expected_gpu_hours
from fleet.core.demand import ActiveRow, pending_work, queued_jobs, track_loads
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ExperimentRow, WaveRow
from fleet.core.schedule import (
    Assignment,
    ClusterSlot,
    OnDemand,
    PendingExperiment,
    Swap,
    assign,
    preemptions,
)


class WaveSource(Protocol):
    """How a wave kind whose experiments are made when a slot frees (e.g. `search`) joins the schedule."""

    def capacity(self, wave: WaveRow) -> int:
        """How many more experiments the wave could produce now (0: none until results come in)."""

    def produce(self, ledger: Ledger, wave: WaveRow, count: int) -> list[ExperimentRow]:
        """Add up to `count` pending experiments to the wave in the ledger; returns them."""


@dataclass(frozen=True)
class Placement:
    assignments: list[Assignment] = field(default_factory=list)
    swaps: list[Swap] = field(default_factory=list)
    held: int = 0
    experiments: dict[str, ExperimentRow] = field(default_factory=dict)  # the pending rows, by id
    cut: bool = False  # some track's pending list was read only as far as its head


def on_demand_work(ledger: Ledger, sources: Mapping[str, WaveSource]) -> list[OnDemand]:
    if not sources:
        return []
    out = []
    for wave in ledger.waves():
        source = sources.get(wave.kind)
        if source is None:
            continue
        count = source.capacity(wave)
        if count > 0:
            out.append(OnDemand(wave.id, wave.tier, count, wave.priority, wave.track, wave_order=wave.created_at))
    return out


def plan_placement(ledger: Ledger, config: FleetConfig, slots: Sequence[ClusterSlot], active: Sequence[ActiveRow],
                   now: float, on_demand: Sequence[OnDemand] = (), per_track: int | None = None) -> Placement:
    """The cycle's plan; with `per_track`, from the head of each track's pending list only."""
    rows = pending_work(ledger, per_track)
    per_track_count = Counter(r.track for r in rows)
    cut = per_track is not None and any(n >= per_track for n in per_track_count.values())
    if not rows and not on_demand:
        return Placement()
    pending = [PendingExperiment(r.experiment.id, r.experiment.tier, expected_gpu_hours(r.experiment), r.priority,
                                 r.track, r.backfill, r.wave_created) for r in rows]
    pending, held = apply_budget(ledger, config, pending)
    if not pending and not on_demand:
        return Placement(held=held)
    tiers = {name: tier.accelerators for name, tier in config.tiers.items()}
    tracks = ({p.track for p in pending if not p.backfill} | {w.track for w in on_demand}
              | {a.track for a in active if not a.backfill})
    loads = track_loads(ledger, active, now) if len(tracks) > 1 else None
    weights = {t: config.track_weight(t) for t in tracks}
    decisions = assign(slots, pending, config.queue_depth, tiers, loads=loads, weights=weights, on_demand=on_demand)
    placed = {d.experiment_id for d in decisions}
    unplaced = [p for p in pending if p.experiment_id not in placed]
    swaps = preemptions(slots, queued_jobs(active), unplaced, tiers) if unplaced else []
    return Placement(decisions, swaps, held, {r.experiment.id: r.experiment for r in rows}, cut)


__all__ = ["Placement", "WaveSource", "on_demand_work", "plan_placement"]
