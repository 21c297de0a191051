"""What the scheduler is given each cycle, read from the ledger in a few indexed queries.

`fleet.core.schedule` decides over plain records; this module builds them: the pending work with
its wave's priority and track, the jobs in the clusters' queues with theirs, and each track's
recent and committed cluster-time. Queries read only live rows (pending experiments, active
attempts, attempts that ended within a few half-lives), never the whole history.
"""
from __future__ import annotations

import json

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ACTIVE_ATTEMPT_STATES, AttemptRow, ExperimentRow, decode_row
from fleet.core.schedule import QueuedJob, TrackLoad, decayed_usage
from fleet.types import ExperimentState

USAGE_HALF_LIFE_S = 600.0  # fair shares remember about the last half hour of each track's use
START_OVERHEAD_S = 60.0  # beyond TIME_BUDGET: start-up, compile, evaluation (an estimate; refined by history)
DEFAULT_BUDGET_S = 300.0


@dataclass(frozen=True)
class PendingRow:
    experiment: ExperimentRow
    priority: int
    track: str
    expected_s: float = 0.0  # how long it is expected to run, start to end
    backfill: bool = False  # of a wave the fleet queued itself for idle clusters
    wave_created: float = 0.0  # its wave's submission time (the scheduler's order within a priority)


@dataclass(frozen=True)
class ActiveRow:
    attempt: AttemptRow
    priority: int
    track: str
    expected_s: float  # how long its job is expected to run, start to end
    backfill: bool = False


def expected_seconds(config: Mapping[str, str], default_budget: float | None) -> float:
    """An experiment's expected run time on a cluster: its TIME_BUDGET plus start-up and evaluation."""
    try:
        budget = float(config["TIME_BUDGET"])
    except (KeyError, ValueError):
        budget = default_budget if default_budget is not None else DEFAULT_BUDGET_S
    return budget + START_OVERHEAD_S


def default_budget_of(spec_text: str | None) -> float | None:
    """The workload's default TIME_BUDGET the wave recorded (for experiments that do not set it)."""
    return _budget_in(json.loads(spec_text or "{}"))


def _budget_in(spec: Mapping) -> float | None:
    value = spec.get("default_budget")
    return float(value) if isinstance(value, (int, float)) else None


def _extra(row) -> tuple[dict, dict]:
    """A joined row split into the main table's columns and the joined ones (prefixed `x_`)."""
    data = dict(row)
    return data, {k[2:]: data.pop(k) for k in list(data) if k.startswith("x_")}


def pending_work(ledger: Ledger, per_track: int | None = None, planned: bool = False) -> list[PendingRow]:
    """Pending experiments, each with its wave's priority and track; best first within a track, backfill last.

    With `per_track`, only the first `per_track` of each track: the head that a cycle can place or
    swap in, picked in SQL, so a 10,000-experiment wave is not read whole every cycle. With `planned`,
    a search's planned runs too, in their wave's place (forecasts: they are work left, though not yet
    placeable), each expected to run as long as its wave's `env` says.
    """
    states = [ExperimentState.PENDING.value] + ([ExperimentState.PLANNED.value] if planned else [])
    marks = ",".join("?" * len(states))
    sql = ("SELECT * FROM (SELECT e.*, w.priority AS x_priority, w.track AS x_track, w.created_at AS x_created,"
           " w.rowid AS x_wave_row, w.backfill AS x_backfill, ROW_NUMBER() OVER (PARTITION BY w.track"
           " ORDER BY w.backfill, w.priority DESC, w.created_at, w.rowid, e.seq) AS x_k"
           f" FROM experiments e JOIN waves w ON w.id = e.wave_id WHERE e.state IN ({marks}))")
    args: list = list(states)
    if per_track is not None:
        sql += " WHERE x_k <= ?"
        args.append(per_track)
    rows = ledger.select(sql + " ORDER BY x_backfill, x_priority DESC, x_created, x_wave_row, seq", args)
    specs = _wave_specs(ledger, {row["wave_id"] for row in rows})
    out = []
    for row in rows:
        data, extra = _extra(row)
        exp = decode_row(ExperimentRow, data)
        spec = specs[exp.wave_id]
        # a planned run has no configuration yet: its wave's env sets its TIME_BUDGET
        config = {**(spec.get("env") or {}), **exp.config} if exp.state == ExperimentState.PLANNED else exp.config
        out.append(PendingRow(exp, extra["priority"], extra["track"],
                              expected_seconds(config, _budget_in(spec)), bool(extra["backfill"]),
                              extra["created"]))
    return out


def _wave_specs(ledger: Ledger, wave_ids: set[str]) -> dict[str, dict]:
    """Each wave's spec, read and parsed once per wave (not once per experiment: a grid wave's spec holds
    every value of its grid)."""
    ids = sorted(wave_ids)
    marks = ",".join("?" * len(ids))
    return {r["id"]: json.loads(r["spec"] or "{}")
            for r in (ledger.select(f"SELECT id, spec FROM waves WHERE id IN ({marks})", ids) if ids else [])}


def active_work(ledger: Ledger) -> list[ActiveRow]:
    """Attempts queued or running on a cluster, with their wave's priority and track and expected length."""
    marks = ",".join("?" * len(ACTIVE_ATTEMPT_STATES))
    rows = ledger.select(
        f"SELECT a.*, e.config AS x_config, e.wave_id AS x_wave, w.priority AS x_priority, w.track AS x_track,"
        f" w.backfill AS x_backfill"
        f" FROM attempts a JOIN experiments e ON e.id = a.experiment_id JOIN waves w ON w.id = e.wave_id"
        f" WHERE a.state IN ({marks}) ORDER BY a.id", ACTIVE_ATTEMPT_STATES)
    budgets = {w: _budget_in(spec) for w, spec in _wave_specs(ledger, {row["x_wave"] for row in rows}).items()}
    out = []
    for row in rows:
        data, extra = _extra(row)
        expected = expected_seconds(json.loads(extra["config"]), budgets[extra["wave"]])
        out.append(ActiveRow(decode_row(AttemptRow, data), extra["priority"], extra["track"], expected,
                             bool(extra["backfill"])))
    return out


def queued_jobs(active: Iterable[ActiveRow]) -> list[QueuedJob]:
    """Jobs that sit in a cluster's queue and have not started (candidates to swap for higher priority)."""
    return [QueuedJob(a.attempt.id, a.attempt.cluster, a.priority, a.track, a.attempt.submitted_at, a.backfill)
            for a in active if a.attempt.state == "pending" and a.attempt.job_id is not None]


def track_loads(ledger: Ledger, active: Iterable[ActiveRow], now: float,
                half_life_s: float = USAGE_HALF_LIFE_S) -> dict[str, TrackLoad]:
    """Each track's decayed recent cluster-time and the cluster-time its active jobs still need.

    Backfill does not count: it ran only on room no track wanted, so it must not cost a track its share."""
    committed: dict[str, float] = {}
    intervals: dict[str, list[tuple[float, float]]] = {}
    for a in active:
        if a.backfill:
            continue
        started = a.attempt.started_at if a.attempt.state == "running" else None
        remaining = a.expected_s if started is None else max(a.expected_s - (now - started), 0.0)
        committed[a.track] = committed.get(a.track, 0.0) + remaining
        if started is not None:
            intervals.setdefault(a.track, []).append((started, now))
    since = now - 6 * half_life_s  # older use weighs under 2%
    for row in ledger.select(
            "SELECT w.track AS track, a.started_at AS s, a.ended_at AS e FROM attempts a"
            " JOIN experiments x ON x.id = a.experiment_id JOIN waves w ON w.id = x.wave_id"
            " WHERE a.ended_at > ? AND a.started_at IS NOT NULL AND w.backfill = 0", (since,)):
        intervals.setdefault(row["track"], []).append((row["s"], row["e"]))
    tracks = set(committed) | set(intervals)
    return {t: TrackLoad(decayed_usage(intervals.get(t, []), now, half_life_s), committed.get(t, 0.0))
            for t in tracks}
