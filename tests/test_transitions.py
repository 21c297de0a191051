"""Experiment transitions: one transaction each, conditional on the state they expect; the consistency check."""
from __future__ import annotations

import pytest

from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import NewExperiment
from fleet.core.transitions import REPAIR_QUERIES, Outcome
from fleet.types import ClusterState, ExperimentState


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.add_wave("w", "screen", {}, "s", [NewExperiment({"LR": str(i)}, f"k{i}", 0, "", "") for i in range(3)])
    return ledger


def start(ledger, eid="w-001", cluster="c1"):
    return ledger.start_attempt(eid, cluster, "H100", lambda n: f".fleet/logs/{eid}.a{n}.log")


def test_a_requeue_from_a_stale_list_changes_nothing(ledger):
    """`fleet down` and the lost-cluster path both requeue attempt 1; only the first one counts."""
    first = start(ledger)
    assert ledger.requeue(first, "cluster lost", max_attempts=4) == ExperimentState.PENDING
    second = start(ledger, cluster="c2")
    assert ledger.requeue(first, "cluster torn down", max_attempts=4) is None  # stale: attempt 1 is closed
    exp = ledger.experiment("w-001")
    assert (exp.state, exp.attempts) == (ExperimentState.QUEUED, 2)
    assert [a.state for a in ledger.attempts("w-001")] == ["lost", "submitting"]
    assert ledger.attempt(second.id).state == "submitting"


def test_a_job_id_for_a_closed_attempt_does_not_bring_it_back(ledger):
    attempt = start(ledger)
    ledger.requeue(attempt, "cluster torn down", max_attempts=4)
    assert not ledger.attempt_submitted(attempt, 7)
    assert ledger.attempt(attempt.id).state == "lost" and ledger.attempt(attempt.id).job_id is None
    assert ledger.experiment("w-001").state == ExperimentState.PENDING
    assert not ledger.mark_running(attempt, 1.0)
    assert ledger.experiment("w-001").state == ExperimentState.PENDING


def test_running_moves_attempt_and_experiment_together(ledger):
    attempt = start(ledger)
    assert ledger.attempt_submitted(attempt, 3)
    assert ledger.mark_running(attempt, 5.0)
    assert ledger.attempt(attempt.id).state == "running" and ledger.attempt(attempt.id).started_at == 5.0
    assert ledger.experiment("w-001").state == ExperimentState.RUNNING
    assert not ledger.mark_running(attempt, 6.0)  # already running: nothing to do


def test_finishing_is_one_transaction_and_happens_once(ledger):
    attempt = start(ledger)
    done = Outcome(ExperimentState.DONE, "done", val_bpb=1.25, metrics={"num_steps": 10})
    assert ledger.finish_attempt(attempt, "succeeded", done, started_at=1.0, ended_at=2.0, exit_code=0)
    crash = Outcome(ExperimentState.CRASH, "crash", reason="late collector")
    assert not ledger.finish_attempt(attempt, "failed", crash, ended_at=3.0, exit_code=1)
    row = ledger.attempt(attempt.id)
    assert (row.state, row.ended_at, row.exit_code) == ("succeeded", 2.0, 0)
    assert ledger.result("w-001").val_bpb == 1.25 and ledger.experiment("w-001").state == ExperimentState.DONE


def test_a_cancelled_experiment_keeps_its_cancel(ledger):
    attempt = start(ledger)
    ledger.set_state("w-001", ExperimentState.CANCELLED, "by user")
    assert ledger.requeue(attempt, "cluster lost", max_attempts=4) == ExperimentState.CANCELLED
    assert ledger.experiment("w-001").state == ExperimentState.CANCELLED and ledger.result("w-001") is None


def test_a_try_that_does_not_count_is_given_back(ledger):
    attempt = start(ledger)
    assert ledger.requeue(attempt, "log cut short", max_attempts=1, attempt_state="log_lost",
                          counts=False) == ExperimentState.PENDING
    assert ledger.experiment("w-001").attempts == 0
    assert not ledger.abandon_attempt(attempt, "refused")  # no longer submitting


def test_losing_a_cluster_never_overwrites_a_teardown(ledger):
    ledger.upsert_cluster("c1", "local", "cpu", ClusterState.UP)
    ledger.upsert_cluster("c2", "local", "cpu", ClusterState.DOWN)
    assert ledger.lose_cluster("c1") and not ledger.lose_cluster("c2")
    assert {c.name: c.state for c in ledger.clusters()} == {"c1": ClusterState.LOST, "c2": ClusterState.DOWN}


def test_the_consistency_check_repairs_every_disagreement(ledger):
    # w-001: queued with no attempt at all (stranded)
    ledger.set_state("w-001", ExperimentState.QUEUED)
    # w-002: done, yet an attempt is still active; and attempt 1 active behind attempt 2
    a1 = start(ledger, "w-002")
    ledger.update_attempt(a1.id, state="lost")
    ledger.set_state("w-002", ExperimentState.PENDING)
    a2 = start(ledger, "w-002")
    ledger.update_attempt(a1.id, state="running")
    ledger.record_result("w-002", a2.id, ExperimentState.DONE, outcome="done", val_bpb=1.0)
    # w-003: pending although its latest attempt is running
    a3 = start(ledger, "w-003")
    ledger.update_attempt(a3.id, state="running")
    ledger.set_state("w-003", ExperimentState.PENDING)

    repairs = ledger.repair()
    assert sorted(r.experiment_id for r in repairs) == ["w-001", "w-002", "w-002", "w-003"]
    assert ledger.experiment("w-001").state == ExperimentState.PENDING
    assert "consistency check" in ledger.experiment("w-001").reason
    assert [a.state for a in ledger.attempts("w-002")] == ["lost", "lost"]
    assert ledger.experiment("w-002").state == ExperimentState.DONE and ledger.result("w-002").val_bpb == 1.0
    assert ledger.experiment("w-003").state == ExperimentState.RUNNING
    assert ledger.repair() == []  # consistent now


def test_the_consistency_check_reads_only_live_work(ledger):
    """Its cost must not grow with history: every table it reads is searched by an index."""
    for sql, args in REPAIR_QUERIES:
        plan = [row[-1] for row in ledger._db.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall()]
        full_scans = [step for step in plan if step.startswith("SCAN") and "INDEX" not in step]
        assert not full_scans, (sql, plan)
