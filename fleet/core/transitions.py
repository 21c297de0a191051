"""How an experiment moves through its life: each move is one ledger transaction, and conditional.

Every transition names the state it expects (compare-and-set) and does nothing when the ledger has
moved on: an attempt that `fleet down` already gave back is not given back a second time by the
controller's lost-cluster path, and a job id that arrives for an attempt given up meanwhile does
not bring it back to life. Log and file I/O happen before or after a transition, never between
its halves, so a crash (or a full disk) at any point leaves the ledger in a state the next
controller continues from; `repair` is the safety net that finds any experiment whose state and
attempts still disagree.

    pending --start_attempt--> queued --mark_running--> running --finish_attempt--> done|crash|timeout
       ^                         |                          +--prune_attempt--> pruned (its job then cancelled)
       +--- requeue / abandon ---+--------------------------+   (cluster lost, job vanished, refused)
    planned --fill_trial--> pending   (a search wave's trial, once its configuration is chosen;
                                      `mark_told` once its finished runs' score is in the study)

`Transitions` is mixed into `Ledger`, which provides `tx()` and `clock`.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

from fleet.core.ledger_rows import (
    ACTIVE_ATTEMPT_STATES,
    ATTEMPT_LOST,
    ATTEMPT_NOT_SUBMITTED,
    ATTEMPT_SUBMITTING,
    ATTEMPT_WITHDRAWN,
    AttemptRow,
    NewExperiment,
    decode_row,
)
from fleet.types import ClusterState, ExperimentState

_ACTIVE = f"({','.join(repr(s) for s in ACTIVE_ATTEMPT_STATES)})"
_UNFINISHED = (ExperimentState.QUEUED.value, ExperimentState.RUNNING.value)


# The consistency check's three questions; each reads only what is live (indexed by state).
REPAIR_QUERIES: tuple[tuple[str, tuple], ...] = (
    # an active attempt whose experiment already has its result, or that a newer attempt replaced
    (f"SELECT a.id, a.experiment_id, a.n, e.state FROM attempts a JOIN experiments e ON e.id = a.experiment_id"
     f" WHERE a.state IN {_ACTIVE} AND (e.state IN (?, ?, ?)"
     f" OR a.n < (SELECT MAX(b.n) FROM attempts b WHERE b.experiment_id = a.experiment_id))",
     (ExperimentState.DONE.value, ExperimentState.CRASH.value, ExperimentState.TIMEOUT.value)),
    # a pending (or held) experiment whose attempt is active
    (f"SELECT e.id, e.state, a.state FROM attempts a JOIN experiments e ON e.id = a.experiment_id"
     f" WHERE a.state IN {_ACTIVE} AND e.state IN (?, ?)",
     (ExperimentState.PENDING.value, ExperimentState.HELD.value)),
    # a queued or running experiment with no active attempt: stranded
    (f"SELECT e.id, e.state FROM experiments e WHERE e.state IN (?, ?) AND NOT EXISTS"
     f" (SELECT 1 FROM attempts a WHERE a.experiment_id = e.id AND a.state IN {_ACTIVE})",
     _UNFINISHED),
)


@dataclass(frozen=True)
class Outcome:
    """What a finished attempt means for its experiment: the result row to record."""

    state: ExperimentState
    outcome: str  # "done" | "crash" | "timeout" | "cancelled"
    val_bpb: float | None = None
    metrics: dict = field(default_factory=dict)
    reason: str = ""
    tail: str = ""
    accelerator: str | None = None
    gpu_seconds: float | None = None


@dataclass(frozen=True)
class Repair:
    """One disagreement the consistency check found and fixed."""

    experiment_id: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.experiment_id}: {self.problem}; {self.fix}"


def _num(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else None


class Transitions:
    clock: Callable[[], float]
    _db: sqlite3.Connection
    tx: Callable[..., AbstractContextManager[sqlite3.Connection]]

    # --- the experiment alone ----------------------------------------------------------------
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
        with self.tx(f"set_state {state.value}") as db:
            return db.execute(sql, args).rowcount > 0

    def release(self, experiment_id: str) -> bool:
        """HELD -> PENDING, exempt from budget caps from now on (also after a retry)."""
        with self.tx("release") as db:
            return db.execute(
                "UPDATE experiments SET state = ?, released = 1, reason = ?, updated_at = ? WHERE id = ? AND state = ?",
                (ExperimentState.PENDING.value, "released by user", self.clock(), experiment_id,
                 ExperimentState.HELD.value),
            ).rowcount > 0

    def fill_trial(self, wave_id: str, trial: int, runs: list[NewExperiment]) -> int:
        """Give a search trial's planned runs their configuration (one per seed): `planned` -> `pending`.

        One transaction, and only rows still `planned`: filling the same trial again (a controller
        that died after asking and restarted) changes nothing. Returns how many runs it filled.
        """
        now = self.clock()
        filled = 0
        with self.tx("fill_trial") as db:
            for run in runs:
                filled += db.execute(
                    "UPDATE experiments SET config = ?, config_key = ?, description = ?, label = ?, snapshot = ?,"
                    " code_snapshot = ?, base_snapshot = ?, seeding = ?, state = ?, updated_at = ?"
                    " WHERE wave_id = ? AND trial = ? AND seed = ? AND state = ?",
                    (json.dumps(run.config), run.config_key, run.description, run.label, run.snapshot,
                     run.code_snapshot, run.base_snapshot, run.seeding, ExperimentState.PENDING.value, now,
                     wave_id, trial, run.seed, ExperimentState.PLANNED.value),
                ).rowcount
        return filled

    def mark_told(self, wave_id: str, trial: int) -> bool:
        """A search trial's score is in its study (told after its runs finished, or nothing to tell).

        Until then the ledger has unfinished work, so a controller killed between a trial's last
        result and telling its study is started again to tell it. Idempotent.
        """
        with self.tx("mark_told") as db:
            return db.execute("UPDATE experiments SET told = 1 WHERE wave_id = ? AND trial = ? AND told = 0",
                              (wave_id, trial)).rowcount > 0

    # --- attempts ----------------------------------------------------------------------------

    # --- attempts ----------------------------------------------------------------------------
    def start_attempt(self, experiment_id: str, cluster: str, accelerator: str,
                      log_path_for: Callable[[int], str]) -> AttemptRow | None:
        """Record an attempt before the backend call; the experiment goes PENDING -> QUEUED.

        Returns None if the experiment is no longer pending (the user cancelled it after the
        controller read the pending list): a cancel is never overwritten.
        """
        now = self.clock()
        with self.tx("start_attempt") as db:
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
            row = db.execute("SELECT * FROM attempts WHERE id = ?", (cur.lastrowid,)).fetchone()
        return decode_row(AttemptRow, row)

    def attempt_submitted(self, attempt: AttemptRow, job_id: int) -> bool:
        """The backend took the job: `submitting` -> `pending` with its id. False if the attempt was
        given up meanwhile (its job is then an orphan, which the controller cancels)."""
        with self.tx("attempt_submitted") as db:
            return db.execute(
                "UPDATE attempts SET job_id = ?, state = 'pending' WHERE id = ? AND state = ?",
                (job_id, attempt.id, ATTEMPT_SUBMITTING)).rowcount > 0

    def adopt_job(self, attempt: AttemptRow, job_id: int) -> bool:
        """A job found in its queue by name (submitted by a controller that died before recording it)."""
        with self.tx("adopt_job") as db:
            return db.execute(
                f"UPDATE attempts SET job_id = ?, state = CASE state WHEN ? THEN 'pending' ELSE state END"
                f" WHERE id = ? AND job_id IS NULL AND state IN {_ACTIVE}",
                (job_id, ATTEMPT_SUBMITTING, attempt.id)).rowcount > 0

    def mark_running(self, attempt: AttemptRow, started_at: float) -> bool:
        """The job started: the attempt and its experiment are running (one transaction)."""
        with self.tx("mark_running") as db:
            if not db.execute(
                "UPDATE attempts SET state = 'running', started_at = ? WHERE id = ? AND state IN (?, 'pending')",
                (started_at, attempt.id, ATTEMPT_SUBMITTING)).rowcount:
                return False
            db.execute("UPDATE experiments SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
                       (ExperimentState.RUNNING.value, self.clock(), attempt.experiment_id,
                        ExperimentState.QUEUED.value))
            return True

    def cancel_attempt(self, attempt: AttemptRow) -> bool:
        """Its job was cancelled (the user cancelled the experiment)."""
        with self.tx("cancel_attempt") as db:
            return db.execute(f"UPDATE attempts SET state = 'cancelled', ended_at = ? WHERE id = ? AND state IN {_ACTIVE}",
                              (self.clock(), attempt.id)).rowcount > 0

    def prune_attempt(self, attempt: AttemptRow, outcome: Outcome) -> bool:
        """Early stopping: record the running experiment's result as pruned while its job still runs.

        Conditional on the attempt still being active and the experiment running: a job that finished
        (or was lost) meanwhile keeps its own outcome. The job is cancelled afterwards, as for a user's
        cancel (`cancel_attempt`). Returns True if the result was recorded.
        """
        with self.tx("prune_attempt") as db:
            live = db.execute(
                f"SELECT 1 FROM attempts a JOIN experiments e ON e.id = a.experiment_id"
                f" WHERE a.id = ? AND a.state IN {_ACTIVE} AND e.state = ?",
                (attempt.id, ExperimentState.RUNNING.value)).fetchone()
            return live is not None and self._insert_result(db, attempt.experiment_id, attempt.id, outcome)

    def finish_attempt(self, attempt: AttemptRow, job_state: str, outcome: Outcome | None, *,
                       started_at: float | None = None, ended_at: float | None = None,
                       exit_code: int | None = None) -> bool:
        """Close the attempt with its job's end and record the experiment's result, in one transaction.

        Only an attempt that is still active is closed, and only an unfinished experiment gets a
        result: a second collector (or a stale one) changes nothing. Returns True if a result was
        recorded.
        """
        with self.tx("finish_attempt") as db:
            if not db.execute(
                f"UPDATE attempts SET state = ?, started_at = COALESCE(?, started_at), ended_at = ?, exit_code = ?"
                f" WHERE id = ? AND state IN {_ACTIVE}",
                (job_state, started_at, ended_at or self.clock(), exit_code, attempt.id)).rowcount:
                return False
            return outcome is not None and self._insert_result(db, attempt.experiment_id, attempt.id, outcome)

    def requeue(self, attempt: AttemptRow, reason: str, max_attempts: int, *, attempt_state: str = ATTEMPT_LOST,
                counts: bool = True) -> ExperimentState | None:
        """Close an attempt that will not finish (cluster lost, job vanished) and retry its experiment.

        One transaction, conditional on the attempt still being active: a requeue from a stale list
        (say `fleet down`'s, racing the controller's lost-cluster path) does nothing and returns None.
        A try that `counts` brings the experiment closer to `max_attempts`, after which it is
        recorded as a crash; one that does not (it never reached a cluster, or its log was lost to
        a full disk) is given back. A cancelled experiment stays cancelled.
        """
        now = self.clock()
        with self.tx(f"requeue ({attempt_state})") as db:
            if not db.execute(f"UPDATE attempts SET state = ?, ended_at = ? WHERE id = ? AND state IN {_ACTIVE}",
                              (attempt_state, now, attempt.id)).rowcount:
                return None
            if not counts:
                db.execute("UPDATE experiments SET attempts = MAX(0, attempts - 1) WHERE id = ? AND state IN (?, ?)",
                           (attempt.experiment_id, *_UNFINISHED))
            state, tries = db.execute("SELECT state, attempts FROM experiments WHERE id = ?",
                                      (attempt.experiment_id,)).fetchone()
            if state not in _UNFINISHED:
                return ExperimentState(state)  # cancelled (or already finished): only the attempt closes
            if counts and tries >= max_attempts:
                self._insert_result(db, attempt.experiment_id, attempt.id, Outcome(
                    ExperimentState.CRASH, "crash", reason=f"{reason}; gave up after {tries} attempts"))
                return ExperimentState.CRASH
            db.execute("UPDATE experiments SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                       (ExperimentState.PENDING.value, reason, now, attempt.experiment_id))
            return ExperimentState.PENDING

    def withdraw_attempt(self, attempt: AttemptRow, reason: str) -> bool:
        """Take back a job that is queued on its cluster but has not started, for higher-priority work.

        Conditional on the attempt still being `pending` (queued) and its experiment `queued`: a job
        that started meanwhile is left alone. The try does not count. The caller cancels the job
        after this; if that cancel is lost, the job is an orphan and the next queue read cancels it.
        """
        now = self.clock()
        with self.tx("withdraw_attempt") as db:
            current = db.execute("SELECT state FROM experiments WHERE id = ?", (attempt.experiment_id,)).fetchone()
            if current is None or current[0] != ExperimentState.QUEUED.value:
                return False  # running, finished or cancelled meanwhile: leave it
            if not db.execute("UPDATE attempts SET state = ?, ended_at = ? WHERE id = ? AND state = 'pending'"
                              " AND job_id IS NOT NULL", (ATTEMPT_WITHDRAWN, now, attempt.id)).rowcount:
                return False
            db.execute("UPDATE experiments SET state = ?, reason = ?, updated_at = ?, attempts = MAX(0, attempts - 1)"
                       " WHERE id = ?", (ExperimentState.PENDING.value, reason, now, attempt.experiment_id))
            return True

    def abandon_attempt(self, attempt: AttemptRow, reason: str) -> bool:
        """The attempt never reached a cluster (setup failed, refused): it does not count."""
        if attempt.state != ATTEMPT_SUBMITTING:
            return False
        return self.requeue(attempt, reason, max_attempts=1, attempt_state=ATTEMPT_NOT_SUBMITTED,
                            counts=False) is not None

    # --- results -----------------------------------------------------------------------------
    def record_result(
        self, experiment_id: str, attempt_id: int | None, state: ExperimentState, *, outcome: str,
        val_bpb: float | None = None, metrics: dict | None = None, reason: str = "", tail: str = "",
        accelerator: str | None = None, gpu_seconds: float | None = None,
    ) -> bool:
        """Write the result and finish the experiment in one transaction, exactly once."""
        result = Outcome(state, outcome, val_bpb, metrics or {}, reason, tail, accelerator, gpu_seconds)
        with self.tx("record_result") as db:
            return self._insert_result(db, experiment_id, attempt_id, result)

    def _insert_result(self, db: sqlite3.Connection, experiment_id: str, attempt_id: int | None,
                       result: Outcome) -> bool:
        current = db.execute("SELECT state FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        if current is None or ExperimentState(current[0]).finished:
            return False  # already recorded (or cancelled): a second collector must not overwrite it
        now = self.clock()
        metrics = result.metrics
        db.execute(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (experiment_id, attempt_id, result.outcome, result.val_bpb, _num(metrics, "num_steps"),
             _num(metrics, "training_seconds"),
             # autoresearch's train.py says peak_vram_mb; this project's says peak_memory_mb
             _num(metrics, "peak_memory_mb") if _num(metrics, "peak_memory_mb") is not None
             else _num(metrics, "peak_vram_mb"),
             str(metrics.get("device")) if "device" in metrics else None, result.accelerator, json.dumps(metrics),
             result.reason, result.tail, result.gpu_seconds, now),
        )
        db.execute("UPDATE experiments SET state = ?, reason = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                   (result.state.value, result.reason, now, now, experiment_id))
        return True

    # --- clusters ----------------------------------------------------------------------------
    def lose_cluster(self, name: str) -> bool:
        """UP -> LOST; never over a cluster torn down on purpose (DOWN) meanwhile."""
        with self.tx("lose_cluster") as db:
            return db.execute("UPDATE clusters SET state = ?, updated_at = ? WHERE name = ? AND state = ?",
                              (ClusterState.LOST.value, self.clock(), name, ClusterState.UP.value)).rowcount > 0

    def cluster_launched(self, name: str, accelerator: str, state: ClusterState) -> bool:
        """A launch the fleet started has ended: PROVISIONING -> `state` (UP, or DOWN when it failed);
        never over a cluster torn down (`fleet down`) or lost meanwhile."""
        with self.tx("cluster_launched") as db:
            return db.execute("UPDATE clusters SET state = ?, accelerator = ?, updated_at = ? WHERE name = ? AND state = ?",
                              (state.value, accelerator, self.clock(), name,
                               ClusterState.PROVISIONING.value)).rowcount > 0

    # --- the consistency check ---------------------------------------------------------------
    def repair(self) -> list[Repair]:
        """Find and fix experiments whose state and attempts disagree, in one transaction.

        Cheap every cycle: it reads only active attempts and queued/running experiments (both
        indexed by state), never the history. What it fixes:
        - an active attempt that is not its experiment's current one (a newer attempt exists, or
          the experiment already has its result): closed as lost; its job, if any, is then an
          orphan and is cancelled;
        - a pending (or held) experiment whose latest attempt is active: queued again, on that attempt;
        - a queued or running experiment with no active attempt (stranded): pending again.
        """
        if not any(self._disagreements(self._db)):
            return []  # the usual case: a read, no write lock
        repairs: list[Repair] = []
        now = self.clock()
        with self.tx("repair") as db:
            stale, adopt, stranded = self._disagreements(db)
            for attempt_id, experiment_id, n, state in stale:
                db.execute("UPDATE attempts SET state = ?, ended_at = ? WHERE id = ?", (ATTEMPT_LOST, now, attempt_id))
                repairs.append(Repair(experiment_id, f"attempt {n} was still active with the experiment {state}",
                                      "closed it (its job, if any, is cancelled)"))
            for experiment_id, state, attempt_state in adopt:
                new = ExperimentState.RUNNING if attempt_state == "running" else ExperimentState.QUEUED
                db.execute("UPDATE experiments SET state = ?, updated_at = ? WHERE id = ?", (new.value, now, experiment_id))
                repairs.append(Repair(experiment_id, f"{state} with an active attempt", f"{new.value} on that attempt"))
            for experiment_id, state in stranded:
                db.execute("UPDATE experiments SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                           (ExperimentState.PENDING.value, f"requeued by the consistency check ({state} with no job)",
                            now, experiment_id))
                repairs.append(Repair(experiment_id, f"{state} with no active attempt", "pending again"))
        return repairs

    @staticmethod
    def _disagreements(db: sqlite3.Connection) -> tuple[list, ...]:
        """(stale active attempts, pending experiments with an active attempt, stranded experiments)."""
        return tuple([tuple(r) for r in db.execute(sql, args).fetchall()] for sql, args in REPAIR_QUERIES)
