"""Budget caps: which pending experiments must be held so the fleet or a wave stays under its GPU hours.

What was spent is summed in SQL and what is committed comes from the active attempts, so a cycle
under a cap reads what is pending and running, never every experiment the ledger holds.
"""
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


def spent_gpu_hours(ledger: Ledger) -> dict[str, float]:
    """GPU-hours spent per wave (summed in SQL over the results)."""
    spent: dict[str, float] = {}
    for wave_id, _, seconds in ledger.gpu_seconds():
        spent[wave_id] = spent.get(wave_id, 0.0) + seconds / 3600
    return spent


def has_caps(ledger: Ledger, config: FleetConfig) -> bool:
    """Whether any GPU-hour cap is set (for the fleet, or on a wave)."""
    return config.max_gpu_hours is not None or any(w.max_gpu_hours is not None for w in ledger.waves())


def apply_budget(ledger: Ledger, config: FleetConfig,
                 pending: list[PendingExperiment]) -> tuple[list[PendingExperiment], int]:
    """Hold experiments that would cross the fleet's or their wave's GPU-hour cap; returns the others
    and how many were held.

    Experiments the user released with `fleet release` are exempt: releasing is the user
    saying "run these anyway".
    """
    capped_waves = {w.id: w.max_gpu_hours for w in ledger.waves() if w.max_gpu_hours is not None}
    if config.max_gpu_hours is None and not capped_waves:
        return pending, 0  # no cap anywhere: none of the bookkeeping below is needed
    rows = ledger.experiments_by_id([p.experiment_id for p in pending])
    released = [p for p in pending if rows[p.experiment_id].released]
    capped = [p for p in pending if not rows[p.experiment_id].released]
    spent_by_wave = spent_gpu_hours(ledger)
    active = ledger.experiments_by_id([a.experiment_id for a in ledger.attempts(active=True)])
    caps: list[tuple[float, str | None, str]] = []
    if config.max_gpu_hours is not None:
        caps.append((config.max_gpu_hours, None, FLEET_CAP))
    caps += [(cap, wave_id, f"max_gpu_hours of wave {wave_id}") for wave_id, cap in capped_waves.items()]
    held: list[PendingExperiment] = []
    for cap, wave_id, source in caps:
        def in_scope(exp: ExperimentRow, w: str | None = wave_id) -> bool:
            return w is None or exp.wave_id == w

        spent = sum(spent_by_wave.values()) if wave_id is None else spent_by_wave.get(wave_id, 0.0)
        committed = sum(expected_gpu_hours(exp) for exp in active.values() if in_scope(exp))
        _, over = within_budget([p for p in capped if in_scope(rows[p.experiment_id])], spent, committed, cap)
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
    spent = sum(spent_gpu_hours(ledger).values())
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
