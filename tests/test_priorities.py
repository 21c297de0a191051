"""Priorities through the real controller, on clusters that run FIFO queues on a fake clock.

A validation wave submitted behind a long screen must start all of its experiments before the
screen's remaining ones, including the screen jobs already sitting in the clusters' queues (those
are swapped out and run later), and every experiment must still finish exactly once.
"""
from __future__ import annotations

from fifo_backend import FifoBackend

from fleet.config import FleetConfig, Tier
from fleet.core.controller import Controller
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ATTEMPT_WITHDRAWN, NewExperiment
from fleet.types import ClusterState, ExperimentState, parse_job_name
from fleet.workspace import Workspace

CONFIG = FleetConfig(tiers={"screen": Tier(seeds=1), "validate": Tier(seeds=1, priority=10)}, queue_depth=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(tmp_path, clusters=("c1", "c2")):
    clock = Clock()
    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path, clock=clock)
    backend = FifoBackend(clock, {name: "H100" for name in clusters})
    for name in clusters:
        ledger.upsert_cluster(name, backend.name, "H100", ClusterState.UP)
    controller = Controller(workspace, ledger, backend, CONFIG, clock=clock, launcher=lambda target: backend)
    return clock, ledger, backend, controller


def experiments(n: int, seconds: int, label: str) -> list[NewExperiment]:
    return [NewExperiment({"TIME_BUDGET": str(seconds)}, f"{label}{i}", 0, "", f"{label}{i}") for i in range(n)]


def run_until_done(clock, ledger, controller, step_s=5.0, limit=2000):
    for _ in range(limit):
        controller.cycle()
        if not ledger.has_unfinished_work():
            return
        clock.now += step_s
    raise AssertionError(f"not done: {ledger.counts()}")


def starts_by_experiment(backend) -> dict[str, float]:
    """experiment id -> when its job that ran to the end started."""
    out = {}
    for cluster in backend.clusters_.values():
        for job in cluster.jobs:
            if job.ended_at is not None and job.state.value == "succeeded":
                out[parse_job_name(job.name)[0]] = job.started_at
    return out


def test_a_validate_wave_submitted_after_a_long_screen_starts_before_the_screens_remaining_ones(tmp_path):
    clock, ledger, backend, controller = setup(tmp_path)
    ledger.add_wave("screen", "screen", {}, "snap", experiments(20, 100, "s"), priority=0)
    while ledger.counts("screen").get("done", 0) < 3:
        controller.cycle()
        clock.now += 5
    remaining = {e.id for e in ledger.experiments(wave="screen")
                 if e.state in (ExperimentState.PENDING, ExperimentState.QUEUED)}
    queued_then = {e.id for e in ledger.experiments(wave="screen", states=[ExperimentState.QUEUED])}
    assert queued_then, "a screen job must be waiting in a cluster's queue when the validate wave arrives"
    ledger.add_wave("validate", "validate", {}, "snap", experiments(4, 100, "v"), priority=10)
    run_until_done(clock, ledger, controller)

    starts = starts_by_experiment(backend)
    validate = [e.id for e in ledger.experiments(wave="validate")]
    last_validate_start = max(starts[v] for v in validate)
    first_remaining_start = min(starts[s] for s in remaining)
    assert last_validate_start <= first_remaining_start, (
        {v: starts[v] for v in validate}, {s: starts[s] for s in sorted(remaining)})
    # the screen jobs that sat in the queues were swapped out, not run first
    withdrawn = {a.experiment_id for a in ledger.attempts() if a.state == ATTEMPT_WITHDRAWN}
    assert withdrawn and withdrawn <= queued_then
    # exactly once: one result each, one job that ran to the end each, none counted as a failed try
    every = ledger.experiments()
    assert all(e.state == ExperimentState.DONE for e in every) and len(ledger.results()) == 24
    ran = [parse_job_name(j.name)[0] for c in backend.clusters_.values() for j in c.jobs if j.started_at is not None]
    assert sorted(ran) == sorted(e.id for e in every), "a job ran twice, or a withdrawn one started"
    assert all(e.attempts == 1 for e in every)


def test_without_priorities_the_queue_is_first_in_first_out(tmp_path):
    """The same run with equal priorities: the screen goes on first, so the acceptance above can fail."""
    clock, ledger, backend, controller = setup(tmp_path)
    ledger.add_wave("screen", "screen", {}, "snap", experiments(20, 100, "s"))
    while ledger.counts("screen").get("done", 0) < 3:
        controller.cycle()
        clock.now += 5
    remaining = {e.id for e in ledger.experiments(wave="screen")
                 if e.state in (ExperimentState.PENDING, ExperimentState.QUEUED)}
    ledger.add_wave("later", "screen", {}, "snap", experiments(4, 100, "v"))
    run_until_done(clock, ledger, controller)
    starts = starts_by_experiment(backend)
    later = [e.id for e in ledger.experiments(wave="later")]
    assert max(starts[v] for v in later) > min(starts[s] for s in remaining)
    assert not any(a.state == ATTEMPT_WITHDRAWN for a in ledger.attempts())


def test_a_swapped_job_whose_cancel_fails_is_cancelled_as_an_orphan(tmp_path):
    clock, ledger, backend, controller = setup(tmp_path, clusters=("c1",))
    ledger.add_wave("screen", "screen", {}, "snap", experiments(4, 100, "s"))
    controller.cycle()  # c1: one running, one queued
    backend.cancel_fails = True
    ledger.add_wave("validate", "validate", {}, "snap", experiments(1, 100, "v"), priority=10)
    report = controller.cycle()
    assert report.swapped == 1
    withdrawn = [a for a in ledger.attempts() if a.state == ATTEMPT_WITHDRAWN]
    job = next(j for j in backend.clusters_["c1"].jobs if j.job_id == withdrawn[0].job_id)
    assert job.state.value == "pending"  # the cancel failed: it still sits in the queue
    backend.cancel_fails = False
    report = controller.cycle()
    assert report.orphans == 1 and job.state.value == "cancelled"
    run_until_done(clock, ledger, controller)
    assert all(e.state == ExperimentState.DONE for e in ledger.experiments())
    ran = [parse_job_name(j.name)[0] for j in backend.clusters_["c1"].jobs if j.started_at is not None]
    assert sorted(ran) == sorted(e.id for e in ledger.experiments())


def test_a_job_that_started_is_never_withdrawn(tmp_path):
    clock, ledger, backend, controller = setup(tmp_path, clusters=("c1",))
    ledger.add_wave("screen", "screen", {}, "snap", experiments(2, 100, "s"))
    controller.cycle()
    controller.cycle()  # the first job is seen running
    queued = next(a for a in ledger.attempts(active=True) if a.state == "pending")
    running = next(a for a in ledger.attempts(active=True) if a.state == "running")
    assert not ledger.withdraw_attempt(running, "test")
    ledger.mark_running(queued, clock.now)  # it started after the controller's last read
    assert not ledger.withdraw_attempt(queued, "test")
    assert ledger.experiment(queued.experiment_id).state == ExperimentState.RUNNING


class Search:
    """A wave source that makes one experiment per free slot, up to `budget` (what a search wave would)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.made = 0

    def capacity(self, wave) -> int:
        return self.budget - self.made

    def produce(self, ledger, wave, count):
        count = min(count, self.budget - self.made)
        self.made += count
        return ledger.add_experiments(wave.id, [NewExperiment({"TIME_BUDGET": "50"}, f"x{self.made}-{i}", 0, "", "")
                                                for i in range(count)])


def test_an_on_demand_wave_gets_experiments_made_when_slots_free_and_runs_them_once(tmp_path):
    clock, ledger, backend, controller = setup(tmp_path)
    search = Search(budget=5)
    controller.sources["search"] = search
    ledger.add_wave("s", "screen", {}, "snap", [], kind="search", priority=5)
    ledger.add_wave("screen", "screen", {}, "snap", experiments(6, 50, "s"))
    controller.cycle()
    made = [e.id for e in ledger.experiments(wave="s")]
    assert made == ["s-001", "s-002", "s-003", "s-004"]  # priority 5: it takes the four free slots
    run_until_done(clock, ledger, controller)
    assert search.made == 5 and len(ledger.experiments(wave="s")) == 5
    assert all(e.state == ExperimentState.DONE and e.attempts == 1 for e in ledger.experiments())
