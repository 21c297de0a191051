"""The ledger: all-or-nothing waves, exactly-once results, and many writers at once."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from fleet.core.ledger import Ledger, retry_locked
from fleet.core.ledger_rows import NewExperiment
from fleet.types import ClusterState, ExperimentState


def exps(n):
    return [NewExperiment({"LR": str(i)}, f"k{i}", 0, "", f"LR={i}") for i in range(n)]


def test_wave_ids_unique_and_experiments_ordered(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    wave, rows = ledger.add_wave("lr", "screen", {}, "snap", exps(3))
    again, _ = ledger.add_wave("lr", "screen", {}, "snap", exps(1))
    assert (wave.id, again.id) == ("lr", "lr-2")
    assert [r.id for r in rows] == ["lr-001", "lr-002", "lr-003"]
    assert all(r.state == ExperimentState.PENDING for r in rows)
    assert ledger.counts() == {"pending": 4}


def test_a_failed_wave_insert_leaves_nothing(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    bad = exps(2) + [NewExperiment({"LR": object()}, "k", 0, "", "")]  # not JSON-serializable
    with pytest.raises(TypeError):
        ledger.add_wave("lr", "screen", {}, "snap", bad)
    assert ledger.waves() == [] and ledger.experiments() == []


def test_result_recorded_exactly_once(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _, rows = ledger.add_wave("w", "screen", {}, "s", exps(1))
    attempt = ledger.start_attempt(rows[0].id, "c1", "H100", lambda n: f"/logs/{n}")
    assert ledger.experiment(rows[0].id).state == ExperimentState.QUEUED
    assert ledger.record_result(rows[0].id, attempt.id, ExperimentState.DONE, outcome="done", val_bpb=1.5,
                                metrics={"num_steps": 10, "training_seconds": 5.0, "device": "cpu"})
    assert not ledger.record_result(rows[0].id, attempt.id, ExperimentState.CRASH, outcome="crash")
    result = ledger.result(rows[0].id)
    assert (result.val_bpb, result.num_steps, result.device) == (1.5, 10.0, "cpu")
    assert ledger.experiment(rows[0].id).state == ExperimentState.DONE


def test_requeue_keeps_attempt_count_and_gives_up(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _, rows = ledger.add_wave("w", "screen", {}, "s", exps(1))
    eid = rows[0].id
    for n in range(1, 3):
        attempt = ledger.start_attempt(eid, f"c{n}", "H100", lambda k: f"/logs/{k}")
        assert attempt.n == n
        assert ledger.requeue(attempt, "cluster lost", max_attempts=2) == (
            ExperimentState.PENDING if n < 2 else ExperimentState.CRASH)
    assert ledger.experiment(eid).attempts == 2
    assert [a.state for a in ledger.attempts(eid)] == ["lost", "lost"]
    assert "gave up after 2 attempts" in ledger.result(eid).reason


def test_active_attempts_of_cancelled_experiments(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _, rows = ledger.add_wave("w", "screen", {}, "s", exps(3))
    attempts = [ledger.start_attempt(r.id, "c1", "H100", lambda k: f"/logs/{k}") for r in rows]
    ledger.set_state(rows[0].id, ExperimentState.CANCELLED, "by user")
    ledger.set_state(rows[1].id, ExperimentState.CANCELLED, "by user")
    ledger.update_attempt(attempts[1].id, state="cancelled")  # its job is already stopped
    found = ledger.attempts(active=True, of_state=ExperimentState.CANCELLED)
    assert [a.id for a in found] == [attempts[0].id]
    assert len(ledger.attempts(active=True)) == 2


def test_set_state_only_from(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _, rows = ledger.add_wave("w", "screen", {}, "s", exps(1))
    assert not ledger.set_state(rows[0].id, ExperimentState.CANCELLED, only_from=[ExperimentState.RUNNING])
    assert ledger.set_state(rows[0].id, ExperimentState.CANCELLED, only_from=[ExperimentState.PENDING])
    assert ledger.experiment(rows[0].id).finished_at is not None


def test_wal_mode(tmp_path):
    Ledger(tmp_path / "l.db")
    mode = sqlite3.connect(tmp_path / "l.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _writer(path, worker, n):
    ledger = Ledger(path)
    for i in range(n):
        _, rows = ledger.add_wave(f"w{worker}", "screen", {}, "s", exps(2))
        attempt = ledger.start_attempt(rows[0].id, f"c{worker}", "H100", lambda k: "/x")
        ledger.record_result(rows[0].id, attempt.id, ExperimentState.DONE, outcome="done", val_bpb=float(i))
        ledger.upsert_cluster(f"c{worker}", "local", "cpu", ClusterState.UP)
        ledger.counts()


def test_many_processes_write_at_once(tmp_path):
    path = tmp_path / "l.db"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 25)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    ledger = Ledger(path)
    assert len(ledger.waves()) == 6 * 25
    assert ledger.counts() == {"done": 150, "pending": 150}
    assert len({w.id for w in ledger.waves()}) == 150


def test_retry_locked_retries_only_a_locked_database():
    outcomes = [sqlite3.OperationalError("database is locked")] * 2 + ["wal"]
    sleeps: list[float] = []

    def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry_locked(call, sleep=sleeps.append) == "wal"
    assert len(sleeps) == 2
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_locked(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("no such table: x")), sleep=sleeps.append)
    assert len(sleeps) == 2  # other errors are not retried
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_locked(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")), tries=3,
                     sleep=sleeps.append)
    assert len(sleeps) == 4  # gave up after the third try


def test_peak_vram_mb_fills_the_memory_column(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.add_wave("w", "screen", {}, "snap", exps(2))
    ledger.record_result("w-001", None, ExperimentState.DONE, outcome="done", val_bpb=1.0,
                         metrics={"peak_vram_mb": 2048.0})
    ledger.record_result("w-002", None, ExperimentState.DONE, outcome="done", val_bpb=1.0,
                         metrics={"peak_vram_mb": 2048.0, "peak_memory_mb": 512.0})
    assert ledger.result("w-001").peak_memory_mb == 2048.0 and ledger.result("w-002").peak_memory_mb == 512.0


def test_a_ledger_from_before_code_variants_gets_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE experiments_old AS SELECT * FROM experiments")
    db.execute("DROP TABLE experiments")
    old_schema = [c for c in db.execute("PRAGMA table_info(experiments_old)")
                  if c[1] not in ("code_snapshot", "base_snapshot", "seeding", "trial", "told")]
    assert len(old_schema) == 17
    db.execute("CREATE TABLE experiments AS SELECT " + ", ".join(c[1] for c in old_schema) + " FROM experiments_old")
    db.commit()
    db.close()
    ledger = Ledger(path)
    (exp,) = ledger.add_wave("w", "screen", {}, "snap",
                             [NewExperiment({}, "k", 0, "", "", "s2", "c2", "b2", "replicate")])[1]
    assert (exp.snapshot, exp.code, exp.base_snapshot, exp.seeding) == ("s2", "c2", "b2", "replicate")
    assert exp.trial is None and not exp.told and exp.state == ExperimentState.PENDING


def test_add_experiments_appends_each_run_once_and_keeps_their_own_code(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.add_wave("w", "validate", {}, "snap", exps(2))
    more = [NewExperiment({"LR": "0"}, "k0", 1, "", "LR=0"), NewExperiment({}, "base", 1, "baseline", "baseline",
                                                                           snapshot="old")]
    added = ledger.add_experiments("w", more, skip_existing=True)
    assert [(e.id, e.seed, e.snapshot, e.tier) for e in added] == [("w-003", 1, "snap", "validate"),
                                                                   ("w-004", 1, "old", "validate")]
    # the same runs again (two extenders at once): nothing
    assert ledger.add_experiments("w", more + exps(1), skip_existing=True) == []
    assert len(ledger.experiments(wave="w")) == 4
    with pytest.raises(ValueError):
        ledger.add_experiments("nosuch", more)


def test_a_passing_io_error_on_a_read_is_tried_again_and_one_that_stays_is_damage(tmp_path, monkeypatch):
    import sqlite3

    from fleet.core import ledger as ledger_module
    from fleet.core.ledger import Ledger

    monkeypatch.setattr(ledger_module.time, "sleep", lambda s: None)
    ledger = Ledger(tmp_path / "ledger.db")
    real = ledger._db

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures = failures

        def execute(self, sql, args=()):
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, args)

    ledger._db = Flaky(ledger_module.READ_TRIES - 1)  # passes before the last try
    assert ledger.waves() == []
    ledger._db = Flaky(ledger_module.READ_TRIES)  # stays: the error reaches the caller (damage)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        ledger.waves()
    ledger._db = real
