"""The ledger: a durable record of waves, experiments, attempts, clusters and results.

SQLite in WAL mode under `.fleet/ledger.db`. Many `fleet` processes (the controller, `fleet wait`,
an agent running `fleet status` in a loop) read and write at once: readers never block writers in
WAL mode, and every write is a short `BEGIN IMMEDIATE` transaction that waits (busy timeout)
rather than failing with "database is locked".

This module opens the ledger and reads it; the writes that move an experiment through its life
are `fleet.core.transitions` (one transaction each, each conditional on the state it expects).
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from fleet.core import faults
from fleet.core.agent_records import AgentRecords
from fleet.core.backup import RESTORE_COMMAND, newest_backup, take_backup
from fleet.core.ledger_reads import LedgerReads
from fleet.core.ledger_rows import (
    ACTIVE_ATTEMPT_STATES,
    ADDED_COLUMNS,
    ADDED_INDEXES,
    SCHEMA,
    AttemptRow,
    ClusterRow,
    ExperimentRow,
    NewExperiment,
    ResultRow,
    WaveRow,
    decode_row,
)
from fleet.core.transitions import Transitions
from fleet.errors import DiskProblem, FleetError
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


READ_TRIES = 4  # a read that fails with an I/O error is tried again this many times in all (~0.6 s)


class LedgerDamaged(FleetError):
    """The ledger file is not a readable SQLite database; the message names the backup to restore."""


def is_damage(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and any(
        word in text for word in ("not a database", "malformed", "corrupt", "disk i/o error"))


def damaged_error(path: Path, exc: BaseException, now: float | None = None) -> LedgerDamaged:
    """What to tell the user about a damaged ledger: the newest backup and the command that restores it."""
    backup = newest_backup(path)
    if backup is None:
        return LedgerDamaged(
            f"the ledger {path} is damaged ({exc}) and there is no backup in {path.parent / 'backups'}; "
            f"move it aside (`mv {path} {path}.damaged`) to start with an empty ledger")
    age = max(0.0, (time.time() if now is None else now) - backup.stat().st_mtime)
    return LedgerDamaged(
        f"the ledger {path} is damaged ({exc}); the newest backup is {backup} (taken {age / 60:.0f} min ago): "
        f"`{RESTORE_COMMAND}` puts it back (the damaged file is kept beside it), then `fleet wait` resumes")


def sqlite_disk_problem(exc: BaseException, path: Path) -> DiskProblem | None:
    """SQLite's own words for a full or read-only disk, as the fleet's DiskProblem."""
    text = str(exc).lower()
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    if "full" in text:
        return DiskProblem(path, "the ledger", str(exc))
    if "readonly" in text or "read-only" in text:
        import errno  # noqa: PLC0415 - only on this rare path

        return DiskProblem(path, "the ledger", str(exc), errno.EROFS)
    return None


class Ledger(Transitions, LedgerReads, AgentRecords):
    def __init__(self, path: Path, clock=time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA busy_timeout = 60000")
            # Switching to WAL needs a moment of exclusive access; a few processes opening a fresh
            # ledger at once may collide, so retry briefly.
            retry_locked(lambda: self._db.execute("PRAGMA journal_mode = WAL"))
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            with self.tx(point=False) as db:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                for table, column, declaration in ADDED_COLUMNS:
                    have = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                for statement in ADDED_INDEXES:
                    db.execute(statement)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if is_damage(exc):
                raise damaged_error(path, exc) from None
            raise

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def tx(self, label: str = "write", point: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: takes the write lock up front so it cannot deadlock mid-way.

        Each one is two fault-injection points (before and after its commit) unless `point` is
        False (bookkeeping such as the controller's heartbeat, whose count depends on timing).
        A full or read-only disk becomes a DiskProblem that names the ledger.
        """
        self.forget_reads()  # what a `reading()` block decoded may change now
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                if point:
                    faults.point(f"before commit: {label}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            problem = sqlite_disk_problem(exc, self.path)
            if problem is None:
                raise
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise problem from exc
        if point:
            faults.point(f"after commit: {label}")

    def _query(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        # A read may meet a passing I/O error while another process recovers the WAL after a kill -9: a
        # read is safe to repeat, and only an error that stays means damage (`is_damage`).
        for attempt in range(READ_TRIES):
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.OperationalError as exc:
                if "disk i/o error" not in str(exc).lower() or attempt == READ_TRIES - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def select(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        """A read for modules that build their own views of the ledger (`fleet.core.demand`)."""
        if not sql.lstrip().upper().startswith("SELECT"):
            raise ValueError("select() only reads")  # internal misuse, never user input
        return self._query(sql, args)

    def backup(self) -> Path:
        """A consistent copy in `.fleet/backups/` (the newest few are kept)."""
        return take_backup(self._db, self.path, self.clock())

    # --- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.tx(point=False) as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- waves -------------------------------------------------------------------------------
    def add_wave(
        self, name: str, tier: str, spec: dict, snapshot: str, experiments: list[NewExperiment],
        *, base: dict | None = None, kind: str = "grid", parent: str | None = None,
        max_gpu_hours: float | None = None, priority: int = 0, track: str = "", backfill: bool = False,
    ) -> tuple[WaveRow, list[ExperimentRow]]:
        """Insert a wave and all its experiments in one transaction: all or nothing."""
        now = self.clock()
        with self.tx("add_wave") as db:
            taken = {r["id"] for r in db.execute("SELECT id FROM waves WHERE id = ? OR id LIKE ?", (name, f"{name}-%"))}
            wave_id, k = name, 2
            while wave_id in taken:
                wave_id, k = f"{name}-{k}", k + 1
            db.execute(
                "INSERT INTO waves (id, name, tier, kind, spec, base, snapshot, parent, max_gpu_hours, created_at,"
                " priority, track, backfill) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (wave_id, name, tier, kind, json.dumps(spec), json.dumps(base or {}), snapshot, parent,
                 max_gpu_hours, now, priority, track, int(backfill)),
            )
            width = max(3, len(str(len(experiments))))
            for seq, exp in enumerate(experiments, start=1):
                self._insert_experiment(db, wave_id, seq, width, exp, exp.snapshot or snapshot, tier, now)
        return self.wave(wave_id), self.experiments(wave=wave_id)

    @staticmethod
    def _insert_experiment(db: sqlite3.Connection, wave_id: str, seq: int, width: int, exp: NewExperiment,
                           snapshot: str, tier: str, now: float) -> str:
        experiment_id = f"{wave_id}-{seq:0{width}d}"
        # A search's trial waits `planned` until the search chooses its configuration.
        state = ExperimentState.PENDING if exp.trial is None else ExperimentState.PLANNED
        db.execute(
            "INSERT INTO experiments (id, wave_id, seq, config, config_key, seed, description, label,"
            " snapshot, tier, state, created_at, updated_at, code_snapshot, base_snapshot, seeding, trial)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (experiment_id, wave_id, seq, json.dumps(exp.config), exp.config_key,
             exp.seed, exp.description, exp.label, snapshot, tier, state.value, now, now,
             exp.code_snapshot, exp.base_snapshot, exp.seeding, exp.trial),
        )
        return experiment_id

    def add_experiments(self, wave_id: str, experiments: list[NewExperiment], *,
                        skip_existing: bool = False) -> list[ExperimentRow]:
        """Append pending experiments to an existing wave in one transaction (a wave that makes its
        experiments on demand, such as a search, or a sequential validation adding seed pairs);
        numbered after the wave's last one.

        With ``skip_existing`` an experiment whose configuration, seed and code the wave already has
        is not added again, so two processes extending the same wave at once add each run once.
        """
        now = self.clock()
        with self.tx("add_experiments") as db:
            wave = db.execute("SELECT tier, snapshot FROM waves WHERE id = ?", (wave_id,)).fetchone()
            if wave is None:
                raise ValueError(f"no wave {wave_id!r}")  # internal misuse, never user input
            rows = db.execute("SELECT seq, config_key, seed, snapshot FROM experiments WHERE wave_id = ?",
                              (wave_id,)).fetchall()
            have = {(r["config_key"], r["seed"], r["snapshot"]) for r in rows}
            seq = max((r["seq"] for r in rows), default=0)
            ids = []
            for exp in experiments:
                snapshot = exp.snapshot or wave["snapshot"]
                if skip_existing and (exp.config_key, exp.seed, snapshot) in have:
                    continue
                have.add((exp.config_key, exp.seed, snapshot))
                seq += 1
                ids.append(self._insert_experiment(db, wave_id, seq, 3, exp, snapshot, wave["tier"], now))
        return [e for e in (self.experiment(i) for i in ids) if e is not None]

    def wave(self, wave_id: str) -> WaveRow | None:
        rows = self._query("SELECT * FROM waves WHERE id = ?", (wave_id,))
        return decode_row(WaveRow, rows[0]) if rows else None

    def waves(self, track: str | None = None) -> list[WaveRow]:
        """Every wave in submission order; with `track`, only that track's."""
        sql, args = "SELECT * FROM waves", []
        if track is not None:
            sql += " WHERE track = ?"
            args.append(track)
        return [decode_row(WaveRow, r) for r in self._query(sql + " ORDER BY created_at, id", args)]

    def set_wave_priority(self, wave_id: str, priority: int) -> bool:
        with self.tx("set_wave_priority") as db:
            return db.execute("UPDATE waves SET priority = ? WHERE id = ?", (priority, wave_id)).rowcount > 0

    def tracks(self) -> list[str]:
        """The tracks waves were submitted on ("" is the default track)."""
        return [r["track"] for r in self._query("SELECT DISTINCT track FROM waves ORDER BY track")]

    # --- experiments -------------------------------------------------------------------------
    def finished_since(self, since: float, wave: str | None = None) -> list[ExperimentRow]:
        """Experiments (of a wave) that finished after `since`, oldest first: what progress lines show."""
        sql, args = "SELECT * FROM experiments WHERE finished_at > ?", [since]
        if wave is not None:
            sql += " AND wave_id = ?"
            args.append(wave)
        return [decode_row(ExperimentRow, r) for r in self._query(sql + " ORDER BY finished_at, id", args)]

    def experiment(self, experiment_id: str) -> ExperimentRow | None:
        rows = self._query("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        return decode_row(ExperimentRow, rows[0]) if rows else None

    def known_experiments(self, ids: Iterable[str]) -> set[str]:
        """Which of `ids` are experiments of this ledger (jobs named like ours may be someone else's)."""
        ids = list(dict.fromkeys(ids))
        found: set[str] = set()
        for i in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[i:i + 500]
            found |= {r["id"] for r in self._query(
                f"SELECT id FROM experiments WHERE id IN ({','.join('?' * len(chunk))})", chunk)}
        return found

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
        """Set an attempt's fields unconditionally: for importing and test fixtures only. The
        controller moves attempts with the conditional transitions of `fleet.core.transitions`."""
        allowed = {"job_id", "state", "started_at", "ended_at", "exit_code", "log_path"}
        assert set(fields) <= allowed, fields  # internal misuse, never user input
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.tx("update_attempt") as db:
            db.execute(f"UPDATE attempts SET {cols} WHERE id = ?", (*fields.values(), attempt_id))

    # --- results -----------------------------------------------------------------------------
    def result(self, experiment_id: str) -> ResultRow | None:
        rows = self._query("SELECT * FROM results WHERE experiment_id = ?", (experiment_id,))
        return decode_row(ResultRow, rows[0]) if rows else None

    # --- clusters ----------------------------------------------------------------------------
    def upsert_cluster(self, name: str, backend: str, accelerator: str, state: ClusterState,
                       replaces: str | None = None) -> None:
        now = self.clock()
        with self.tx("upsert_cluster") as db:
            db.execute(
                "INSERT INTO clusters (name, backend, accelerator, state, created_at, updated_at, replaces)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET backend = excluded.backend,"
                " accelerator = excluded.accelerator, state = excluded.state, updated_at = excluded.updated_at,"
                " replaces = COALESCE(excluded.replaces, clusters.replaces)",
                (name, backend, accelerator, state.value, now, now, replaces),
            )

    def clusters(self, states: Iterable[ClusterState] | None = None) -> list[ClusterRow]:
        rows = [decode_row(ClusterRow, r) for r in self._query("SELECT * FROM clusters ORDER BY name")]
        if states is not None:
            wanted = set(states)
            rows = [r for r in rows if r.state in wanted]
        return rows

    # --- summaries ---------------------------------------------------------------------------
    def counts(self, wave: str | None = None, track: str | None = None, backfill: bool | None = None) -> dict[str, int]:
        """Experiments by state (of a wave, a track; with `backfill` False only the waves people submitted)."""
        sql, args = "SELECT e.state, COUNT(*) AS n FROM experiments e", []
        if track is not None or backfill is not None:
            sql += " JOIN waves w ON w.id = e.wave_id"
            if track is not None:
                sql += " AND w.track = ?"
                args.append(track)
            if backfill is not None:
                sql += " AND w.backfill = ?"
                args.append(int(backfill))
        if wave is not None:
            sql += " WHERE e.wave_id = ?"
            args.append(wave)
        return {r["state"]: r["n"] for r in self._query(sql + " GROUP BY e.state", args)}

    def has_unfinished_work(self) -> bool:
        """Experiments to run (or whose configuration a search has still to choose), or jobs still on a cluster
        (a cancelled experiment's job must be stopped).

        A search's planned trials wait while their wave has experiments held by a budget cap: asking for
        more would only hold more, so they are not work until `fleet release`. A search trial whose runs
        finished but whose score is not yet told to its study is work (the controller tells it)."""
        states = (ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING)
        marks = ",".join("?" * len(states))
        rows = self._query(f"SELECT 1 FROM experiments WHERE state IN ({marks}) LIMIT 1", [s.value for s in states])
        if rows or self.planned_waves() or self.untold_trials():
            return True
        marks = ",".join("?" * len(ACTIVE_ATTEMPT_STATES))
        return bool(self._query(f"SELECT 1 FROM attempts WHERE state IN ({marks}) LIMIT 1", ACTIVE_ATTEMPT_STATES))

    def untold_trials(self, wave: str | None = None) -> int:
        """Finished runs of search trials whose score is not yet in the study (the controller tells it)."""
        finished = [s.value for s in ExperimentState if s.finished]
        sql = (f"SELECT COUNT(*) FROM experiments WHERE trial IS NOT NULL AND told = 0"
               f" AND state IN ({','.join('?' * len(finished))})")
        args: list = list(finished)
        if wave is not None:
            sql += " AND wave_id = ?"
            args.append(wave)
        return self._query(sql, args)[0][0]

    def planned_waves(self) -> set[str]:
        """Waves with planned search trials that may be asked for now (none of their experiments held)."""
        rows = self._query(
            "SELECT DISTINCT e.wave_id FROM experiments e WHERE e.state = ? AND NOT EXISTS"
            " (SELECT 1 FROM experiments h WHERE h.wave_id = e.wave_id AND h.state = ?)",
            (ExperimentState.PLANNED.value, ExperimentState.HELD.value))
        return {r["wave_id"] for r in rows}
