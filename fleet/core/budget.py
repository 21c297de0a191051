"""Budget caps: which pending experiments must be held so the fleet or a wave stays under its GPU hours."""
from __future__ import annotations

from fleet.config import FleetConfig
from fleet.core.job_plan import budget_seconds
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ExperimentRow
from fleet.core.schedule import PendingExperiment, within_budget
from fleet.types import ExperimentState


FLEET_CAP = "max_gpu_hours in fleet.yaml"


def expected_gpu_hours(exp: ExperimentRow) -> float:
    return budget_seconds(exp, 300.0) / 3600


def apply_budget(ledger: Ledger, config: FleetConfig,
                 pending: list[PendingExperiment]) -> tuple[list[PendingExperiment], int]:
    """Hold experiments that would cross the fleet's or their wave's GPU-hour cap; returns the others
    and how many were held.

    Experiments the user released with `fleet release` are exempt: releasing is the user
    saying "run these anyway".
    """
    capped_waves = [w for w in ledger.waves() if w.max_gpu_hours is not None]
    if config.max_gpu_hours is None and not capped_waves:
        return pending, 0  # no cap anywhere: none of the bookkeeping below is needed
    rows = {e.id: e for e in ledger.experiments()}
    released = [p for p in pending if rows[p.experiment_id].released]
    capped = [p for p in pending if not rows[p.experiment_id].released]
    results = ledger.results()
    active = {a.experiment_id for a in ledger.attempts(active=True)}
    caps: list[tuple[float, set[str] | None, str]] = []
    if config.max_gpu_hours is not None:
        caps.append((config.max_gpu_hours, None, FLEET_CAP))
    for wave in capped_waves:
        members = {e.id for e in rows.values() if e.wave_id == wave.id}
        caps.append((wave.max_gpu_hours, members, f"max_gpu_hours of wave {wave.id}"))
    held: list[PendingExperiment] = []
    for cap, members, source in caps:
        scope = (lambda eid: True) if members is None else (lambda eid, m=members: eid in m)
        spent = sum((r.gpu_seconds or 0.0) for eid, r in results.items() if scope(eid)) / 3600
        committed = sum(expected_gpu_hours(rows[eid]) for eid in active if eid in rows and scope(eid))
        in_scope = [p for p in capped if scope(p.experiment_id)]
        _, over = within_budget(in_scope, spent, committed, cap)
        for exp in over:
            ledger.set_state(exp.experiment_id, ExperimentState.HELD,
                             f"would exceed {source} ({cap:g} GPU-hours); `fleet release` runs it anyway",
                             only_from=(ExperimentState.PENDING,))
        held += over
        over_ids = {p.experiment_id for p in over}
        capped = [p for p in capped if p.experiment_id not in over_ids]
    return [p for p in pending if p in capped or p in released], len(held)


def budget_left(ledger: Ledger, config: FleetConfig) -> float | None:
    """GPU-hours of the fleet's cap not yet spent or allocated to unfinished work (None: no cap)."""
    if config.max_gpu_hours is None:
        return None
    spent = sum((r.gpu_seconds or 0.0) for r in ledger.results().values()) / 3600
    allocated = sum(expected_gpu_hours(e) for e in ledger.experiments(
        states=[ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING]))
    return config.max_gpu_hours - spent - allocated


def budget_reached(ledger: Ledger, config: FleetConfig) -> bool:
    """Whether the fleet's GPU-hour cap leaves no room: it holds experiments back, or what ran plus
    what is pending, queued or running already takes all of it. No new clusters are bought then."""
    if config.max_gpu_hours is None:
        return False
    if ledger.select("SELECT 1 FROM experiments WHERE state = ? AND reason LIKE ? LIMIT 1",
                     (ExperimentState.HELD.value, f"%{FLEET_CAP}%")):
        return True
    return (budget_left(ledger, config) or 0.0) <= 1e-9
