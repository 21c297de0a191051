"""The ledger: a durable record of waves, experiments, attempts, clusters and results.

SQLite in WAL mode under `.fleet/ledger.db`. Many `fleet` processes (the controller, `fleet wait`,
an agent running `fleet status` in a loop) read and write at once: readers never block writers in
WAL mode, and every write is a short `BEGIN IMMEDIATE` transaction that waits (busy timeout)
rather than failing with "database is locked".
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from fleet.core.ledger_rows import (
    ACTIVE_ATTEMPT_STATES,
    ADDED_COLUMNS,
    ATTEMPT_LOST,
    ATTEMPT_NOT_SUBMITTED,
    ATTEMPT_SUBMITTING,
    SCHEMA,
    AttemptRow,
    ClusterRow,
    ExperimentRow,
    NewExperiment,
    ResultRow,
    WaveRow,
    decode_row,
)
from fleet.types import ClusterState, ExperimentState

T = TypeVar("T")

def retry_locked(call: Callable[[], T], tries: int = 50, sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, retried while SQLite says the database is locked (at most `tries` times)."""
    for i in range(tries):
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or i == tries - 1:
                raise
            sleep(0.05)
    raise ValueError(f"tries is {tries}, but must be at least 1")


class Ledger:
    def __init__(self, path: Path, clock=time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 60000")
        # Switching to WAL needs a moment of exclusive access; a few processes opening a fresh
        # ledger at once may collide, so retry briefly.
        retry_locked(lambda: self._db.execute("PRAGMA journal_mode = WAL"))
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        with self.tx() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            for table, column, declaration in ADDED_COLUMNS:
                have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes the write lock up front so it cannot deadlock mid-way."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _query(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, tuple(args)).fetchall()

    # --- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- waves -------------------------------------------------------------------------------
    def add_wave(
        self, name: str, tier: str, spec: dict, snapshot: str, experiments: list[NewExperiment],
        *, base: dict | None = None, kind: str = "grid", parent: str | None = None,
        max_gpu_hours: float | None = None,
    ) -> tuple[WaveRow, list[ExperimentRow]]:
        """Insert a wave and all its experiments in one transaction: all or nothing."""
        now = self.clock()
        with self.tx() as db:
            taken = {r["id"] for r in db.execute("SELECT id FROM waves WHERE id = ? OR id LIKE ?", (name, f"{name}-%"))}
            wave_id, k = name, 2
            while wave_id in taken:
                wave_id, k = f"{name}-{k}", k + 1
            db.execute(
                "INSERT INTO waves VALUES (?,?,?,?,?,?,?,?,?,?)",
                (wave_id, name, tier, kind, json.dumps(spec), json.dumps(base or {}), snapshot, parent,
                 max_gpu_hours, now),
            )
            width = max(3, len(str(len(experiments))))
            for seq, exp in enumerate(experiments, start=1):
                db.execute(
                    "INSERT INTO experiments (id, wave_id, seq, config, config_key, seed, description, label,"
                    " snapshot, tier, state, created_at, updated_at, code_snapshot, base_snapshot, seeding)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (f"{wave_id}-{seq:0{width}d}", wave_id, seq, json.dumps(exp.config), exp.config_key,
                     exp.seed, exp.description, exp.label, exp.snapshot or snapshot, tier,
                     ExperimentState.PENDING.value, now, now, exp.code_snapshot, exp.base_snapshot, exp.seeding),
                )
        return self.wave(wave_id), self.experiments(wave=wave_id)

    def wave(self, wave_id: str) -> WaveRow | None:
        rows = self._query("SELECT * FROM waves WHERE id = ?", (wave_id,))
        return decode_row(WaveRow, rows[0]) if rows else None

    def waves(self) -> list[WaveRow]:
        return [decode_row(WaveRow, r) for r in self._query("SELECT * FROM waves ORDER BY created_at, id")]

    # --- experiments -------------------------------------------------------------------------
    def experiments(
        self, wave: str | None = None, states: Iterable[ExperimentState] | None = None
    ) -> list[ExperimentRow]:
        sql, args = "SELECT e.* FROM experiments e JOIN waves w ON w.id = e.wave_id WHERE 1=1", []
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        if states is not None:
            states = [s.value for s in states]
            sql += f" AND e.state IN ({','.join('?' * len(states))})"
            args += states
        sql += " ORDER BY w.created_at, w.rowid, e.seq"
        return [decode_row(ExperimentRow, r) for r in self._query(sql, args)]

    def experiment(self, experiment_id: str) -> ExperimentRow | None:
        rows = self._query("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        return decode_row(ExperimentRow, rows[0]) if rows else None

    def set_state(
        self, experiment_id: str, state: ExperimentState, reason: str = "", *, only_from: Iterable[ExperimentState] | None = None
    ) -> bool:
        """Move an experiment to `state`; with `only_from`, only if it is in one of those states."""
        now = self.clock()
        finished = now if state.finished else None
        sql = "UPDATE experiments SET state = ?, reason = ?, updated_at = ?, finished_at = ? WHERE id = ?"
        args: list = [state.value, reason, now, finished, experiment_id]
        if only_from is not None:
            allowed = [s.value for s in only_from]
            sql += f" AND state IN ({','.join('?' * len(allowed))})"
            args += allowed
        with self.tx() as db:
            return db.execute(sql, args).rowcount > 0

    # --- attempts ----------------------------------------------------------------------------
    def start_attempt(self, experiment_id: str, cluster: str, accelerator: str, log_path_for) -> AttemptRow | None:
        """Record an attempt before the backend call; the experiment goes PENDING -> QUEUED.

        Returns None if the experiment is no longer pending (the user cancelled it after the
        controller read the pending list): a cancel is never overwritten.
        """
        now = self.clock()
        with self.tx() as db:
            claimed = db.execute(
                "UPDATE experiments SET attempts = attempts + 1, state = ?, updated_at = ? WHERE id = ? AND state = ?",
                (ExperimentState.QUEUED.value, now, experiment_id, ExperimentState.PENDING.value),
            ).rowcount
            if not claimed:
                return None
            # Numbered by row, not by counted tries: an abandoned attempt keeps its number (and job name).
            n = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE experiment_id = ?",
                           (experiment_id,)).fetchone()[0]
            cur = db.execute(
                "INSERT INTO attempts (experiment_id, n, cluster, accelerator, state, submitted_at, log_path)"
                " VALUES (?,?,?,?,?,?,?)",
                (experiment_id, n, cluster, accelerator, ATTEMPT_SUBMITTING, now, str(log_path_for(n))),
            )
            attempt_id = cur.lastrowid
        return self.attempt(attempt_id)

    def abandon_attempt(self, attempt: AttemptRow, reason: str) -> None:
        """The attempt never reached a cluster: it does not count, and the experiment is pending again."""
        with self.tx() as db:
            db.execute("UPDATE attempts SET state = ?, ended_at = ? WHERE id = ?",
                       (ATTEMPT_NOT_SUBMITTED, self.clock(), attempt.id))
            db.execute(
                "UPDATE experiments SET attempts = attempts - 1, state = ?, reason = ?, updated_at = ?"
                " WHERE id = ? AND state = ?",
                (ExperimentState.PENDING.value, reason, self.clock(), attempt.experiment_id, ExperimentState.QUEUED.value),
            )

    def release(self, experiment_id: str) -> bool:
        """HELD -> PENDING, exempt from budget caps from now on (also after a retry)."""
        with self.tx() as db:
            return db.execute(
                "UPDATE experiments SET state = ?, released = 1, reason = ?, updated_at = ? WHERE id = ? AND state = ?",
                (ExperimentState.PENDING.value, "released by user", self.clock(), experiment_id,
                 ExperimentState.HELD.value),
            ).rowcount > 0

    def attempt(self, attempt_id: int) -> AttemptRow:
        return decode_row(AttemptRow, self._query("SELECT * FROM attempts WHERE id = ?", (attempt_id,))[0])

    def attempts(self, experiment_id: str | None = None, active: bool = False,
                 of_state: ExperimentState | None = None) -> list[AttemptRow]:
        """Attempts, optionally of one experiment, only active ones, or only of experiments in `of_state`."""
        sql, args = "SELECT a.* FROM attempts a", []
        if of_state is not None:
            sql += " JOIN experiments e ON e.id = a.experiment_id AND e.state = ?"
            args.append(of_state.value)
        sql += " WHERE 1=1"
        if experiment_id is not None:
            sql += " AND a.experiment_id = ?"
            args.append(experiment_id)
        if active:
            sql += f" AND a.state IN ({','.join('?' * len(ACTIVE_ATTEMPT_STATES))})"
            args += ACTIVE_ATTEMPT_STATES
        return [decode_row(AttemptRow, r) for r in self._query(sql + " ORDER BY a.id", args)]

    def update_attempt(self, attempt_id: int, **fields) -> None:
        allowed = {"job_id", "state", "started_at", "ended_at", "exit_code", "log_path"}
        assert set(fields) <= allowed, fields  # internal misuse, never user input
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE attempts SET {cols} WHERE id = ?", (*fields.values(), attempt_id))

    def requeue(self, attempt: AttemptRow, reason: str, max_attempts: int) -> ExperimentState:
        """The attempt's cluster failed: close the attempt (its log stays) and retry the experiment."""
        with self.tx() as db:
            db.execute(
                "UPDATE attempts SET state = ?, ended_at = ? WHERE id = ?",
                (ATTEMPT_LOST, self.clock(), attempt.id),
            )
            tries = db.execute("SELECT attempts FROM experiments WHERE id = ?", (attempt.experiment_id,)).fetchone()[0]
        if tries >= max_attempts:
            self.record_result(
                attempt.experiment_id, attempt.id, ExperimentState.CRASH, outcome="crash",
                reason=f"{reason}; gave up after {tries} attempts",
            )
            return ExperimentState.CRASH
        self.set_state(attempt.experiment_id, ExperimentState.PENDING, reason,
                       only_from=(ExperimentState.QUEUED, ExperimentState.RUNNING))
        return ExperimentState.PENDING

    # --- results -----------------------------------------------------------------------------
    def record_result(
        self, experiment_id: str, attempt_id: int | None, state: ExperimentState, *, outcome: str,
        val_bpb: float | None = None, metrics: dict | None = None, reason: str = "", tail: str = "",
        accelerator: str | None = None, gpu_seconds: float | None = None,
    ) -> bool:
        """Write the result and finish the experiment in one transaction, exactly once."""
        metrics = metrics or {}
        now = self.clock()

        def num(key: str) -> float | None:
            value = metrics.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        with self.tx() as db:
            current = db.execute("SELECT state FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
            if current is None or ExperimentState(current[0]).finished:
                return False  # already recorded: a second collector must not overwrite it
            db.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (experiment_id, attempt_id, outcome, val_bpb, num("num_steps"), num("training_seconds"),
                 # autoresearch's train.py says peak_vram_mb; this project's says peak_memory_mb
                 num("peak_memory_mb") if num("peak_memory_mb") is not None else num("peak_vram_mb"),
                 str(metrics.get("device")) if "device" in metrics else None,
                 accelerator, json.dumps(metrics), reason, tail, gpu_seconds, now),
            )
            db.execute(
                "UPDATE experiments SET state = ?, reason = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                (state.value, reason, now, now, experiment_id),
            )
        return True

    def result(self, experiment_id: str) -> ResultRow | None:
        rows = self._query("SELECT * FROM results WHERE experiment_id = ?", (experiment_id,))
        return decode_row(ResultRow, rows[0]) if rows else None

    def results(self, wave: str | None = None) -> dict[str, ResultRow]:
        sql, args = "SELECT r.* FROM results r JOIN experiments e ON e.id = r.experiment_id", []
        if wave is not None:
            sql += " WHERE e.wave_id = ?"
            args.append(wave)
        return {r["experiment_id"]: decode_row(ResultRow, r) for r in self._query(sql, args)}

    # --- clusters ----------------------------------------------------------------------------
    def upsert_cluster(self, name: str, backend: str, accelerator: str, state: ClusterState) -> None:
        now = self.clock()
        with self.tx() as db:
            db.execute(
                "INSERT INTO clusters VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET backend = excluded.backend,"
                " accelerator = excluded.accelerator, state = excluded.state, updated_at = excluded.updated_at",
                (name, backend, accelerator, state.value, now, now),
            )

    def clusters(self, states: Iterable[ClusterState] | None = None) -> list[ClusterRow]:
        rows = [decode_row(ClusterRow, r) for r in self._query("SELECT * FROM clusters ORDER BY name")]
        if states is not None:
            wanted = set(states)
            rows = [r for r in rows if r.state in wanted]
        return rows

    # --- summaries ---------------------------------------------------------------------------
    def counts(self, wave: str | None = None) -> dict[str, int]:
        sql, args = "SELECT state, COUNT(*) AS n FROM experiments", []
        if wave is not None:
            sql += " WHERE wave_id = ?"
            args.append(wave)
        return {r["state"]: r["n"] for r in self._query(sql + " GROUP BY state", args)}

    def has_unfinished_work(self) -> bool:
        """Experiments to run, or jobs still on a cluster (a cancelled experiment's job must be stopped)."""
        states = (ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING)
        marks = ",".join("?" * len(states))
        rows = self._query(f"SELECT 1 FROM experiments WHERE state IN ({marks}) LIMIT 1", [s.value for s in states])
        if rows:
            return True
        marks = ",".join("?" * len(ACTIVE_ATTEMPT_STATES))
        return bool(self._query(f"SELECT 1 FROM attempts WHERE state IN ({marks}) LIMIT 1", ACTIVE_ATTEMPT_STATES))
