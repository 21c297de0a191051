"""The controller against a scripted backend: decisions and bookkeeping, no processes."""
from __future__ import annotations

from fleet.backends.base import Backend, BackendError, BackendUnavailable, NotSubmitted
from fleet.config import FleetConfig
from fleet.core.controller import (
    MAX_ATTEMPTS,
    MAX_LOG_FETCHES,
    REFUSED_REST_S,
    Controller,
)
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import NewExperiment
from fleet.types import ClusterInfo, ClusterState, ExperimentState, JobInfo, JobState
from fleet.workspace import Workspace

SUMMARY = "---\nval_bpb: 1.25\nnum_steps: 10\ntraining_seconds: 1.0\nEXPERIMENT_STATUS: done\n"


class ScriptedBackend(Backend):
    """One cluster whose jobs finish at once; log fetches fail `log_failures` times first,
    submissions are refused (NotSubmitted) `refusals` times first, and queue polls fail `outages`
    times first."""

    name = "scripted"

    def __init__(self, log_failures: int = 0, refusals: int = 0, outages: int = 0, archives: bool = False) -> None:
        self.outages = outages  # queue polls that fail as if the API server were restarting
        self.archives = archives  # finished jobs leave `queues()` at once and only `archived_jobs` has them
        self.jobs: list[JobInfo] = []
        self.log_failures = log_failures
        self.log_calls = 0
        self.refusals = refusals
        self.submit_calls = 0

    def up(self, names, accelerators):
        return [ClusterInfo(n, a) for n, a in zip(names, accelerators)]

    def clusters(self):
        return [ClusterInfo("c1", "H100")]

    def submit(self, cluster, job):
        self.submit_calls += 1
        if self.submit_calls <= self.refusals:
            raise NotSubmitted(f"cluster {cluster!r} is not up (status INIT)")
        self.jobs.append(JobInfo(len(self.jobs) + 1, job.job_name, JobState.SUCCEEDED, 1.0, 2.0, 0))
        return len(self.jobs)

    def queues(self, clusters):
        if self.outages > 0:
            self.outages -= 1
            raise BackendUnavailable("API server restarting")
        return {c: [j for j in self.jobs if not (self.archives and j.state.terminal)] for c in clusters}

    def archived_jobs(self, cluster, names):
        return [j for j in self.jobs if self.archives and j.state.terminal and j.name in names]

    def logs(self, cluster, job_id):
        self.log_calls += 1
        if self.log_calls <= self.log_failures:
            raise BackendError("log service hiccup")
        return SUMMARY

    def cancel(self, cluster, job_ids):
        pass

    def down(self, clusters):
        pass


def _setup(tmp_path, backend, clock=None):
    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path)
    ledger.upsert_cluster("c1", backend.name, "H100", ClusterState.UP)
    ledger.add_wave("w", "screen", {"timeout_s": 60}, "snap", [NewExperiment({}, "k", 0, "", "")])
    kwargs = {"clock": clock} if clock else {}
    return ledger, Controller(workspace, ledger, backend, FleetConfig(), **kwargs)


def test_a_failed_log_fetch_is_retried_not_recorded_as_a_crash(tmp_path):
    backend = ScriptedBackend(log_failures=2)
    ledger, controller = _setup(tmp_path, backend)
    for _ in range(4):
        controller.cycle()
    exp = ledger.experiments()[0]
    assert exp.state == ExperimentState.DONE
    assert ledger.result(exp.id).val_bpb == 1.25
    assert backend.log_calls == 3


def test_a_log_that_never_comes_gives_up_after_a_few_cycles(tmp_path):
    backend = ScriptedBackend(log_failures=100)
    ledger, controller = _setup(tmp_path, backend)
    for _ in range(MAX_LOG_FETCHES + 2):
        controller.cycle()
    exp = ledger.experiments()[0]
    assert exp.state == ExperimentState.CRASH
    assert backend.log_calls == MAX_LOG_FETCHES
    saved = (tmp_path / ".fleet" / "logs" / f"{exp.id}.a1.log").read_text()
    assert f"could not fetch logs after {MAX_LOG_FETCHES} tries" in saved


def test_a_refused_submission_costs_no_try_and_rests_the_cluster(tmp_path):
    now = [1000.0]
    backend = ScriptedBackend(refusals=MAX_ATTEMPTS + 1)  # more refusals than an experiment has tries
    ledger, controller = _setup(tmp_path, backend, clock=lambda: now[0])
    controller.cycle()
    exp = ledger.experiments()[0]
    assert (exp.state, exp.attempts, backend.submit_calls) == (ExperimentState.PENDING, 0, 1)
    assert ledger.clusters()[0].state == ClusterState.UP  # one refusal does not lose the cluster
    controller.cycle()
    assert backend.submit_calls == 1  # resting: not refilled every cycle
    for _ in range(MAX_ATTEMPTS + 1):  # refused again after each rest, never counted as a try
        now[0] += REFUSED_REST_S + 1
        controller.cycle()
    now[0] += REFUSED_REST_S + 1
    controller.cycle()
    controller.cycle()
    exp = ledger.experiments()[0]
    assert (exp.state, exp.attempts) == (ExperimentState.DONE, 1)
    assert backend.submit_calls == MAX_ATTEMPTS + 2


def test_a_passing_backend_outage_is_retried_with_backoff_not_a_crash(tmp_path):
    backend = ScriptedBackend(outages=3)
    ledger, controller = _setup(tmp_path, backend)
    sleeps: list[float] = []
    assert controller.run(poll_s=0.2, idle_exit_s=0.0, sleep=sleeps.append) == "idle"
    assert sleeps[:3] == [0.2, 1.4, 3.8]  # backoff doubles (plus 1 s) while the outage lasts
    assert ledger.experiments()[0].state == ExperimentState.DONE
    assert ledger.get_meta("controller_error") == ""  # the retry notice went away with the outage


def test_a_job_that_finished_out_of_the_queues_view_is_found_in_the_archive_not_rerun(tmp_path):
    backend = ScriptedBackend(archives=True)  # as if no controller watched while the job finished
    ledger, controller = _setup(tmp_path, backend)
    controller.cycle()
    controller.cycle()
    exp = ledger.experiments()[0]
    assert (exp.state, exp.attempts, backend.submit_calls) == (ExperimentState.DONE, 1, 1)
    assert ledger.result(exp.id).val_bpb == 1.25


def test_pending_work_behind_a_long_head_for_full_clusters_is_still_placed(tmp_path):
    # The controller reads only the head of the pending list when that fills the free places; here
    # the head (100 experiments for H200, whose one cluster fills at once) cannot, so it reads on.
    backend = ScriptedBackend()
    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path)
    ledger.upsert_cluster("h100", backend.name, "H100", ClusterState.UP)
    ledger.upsert_cluster("h200", backend.name, "H200", ClusterState.UP)
    ledger.add_wave("big", "validate", {"timeout_s": 60}, "snap",
                    [NewExperiment({"I": str(i)}, f"k{i}", 0, "", "") for i in range(100)])
    _, (late,) = ledger.add_wave("late", "screen", {"timeout_s": 60}, "snap", [NewExperiment({}, "k", 0, "", "")])
    Controller(workspace, ledger, backend, FleetConfig(queue_depth=2)).cycle()
    assert ledger.experiment(late.id).state == ExperimentState.QUEUED
    placed = {a.cluster for a in ledger.attempts() if a.experiment_id.startswith("big")}
    assert placed == {"h200"} and len(ledger.attempts()) == 3


def test_cycle_hooks_see_what_finished_and_may_add_work(tmp_path):
    """The hook a sequential validation uses: after results are recorded, before work is placed."""
    backend = ScriptedBackend()
    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path)
    ledger.upsert_cluster("c1", backend.name, "H100", ClusterState.UP)
    ledger.add_wave("w", "screen", {"timeout_s": 60}, "snap", [NewExperiment({}, "k", 0, "", "")])
    calls: list = []

    def hook(workspace_, ledger_, config, finished):
        calls.append(None if finished is None else list(finished))
        if finished and len(ledger_.experiments()) < 3:
            return len(ledger_.add_experiments("w", [NewExperiment({}, "k", len(ledger_.experiments()), "", "")]))
        return 0

    def broken(workspace_, ledger_, config, finished):
        raise RuntimeError("a bug in a hook")

    controller = Controller(workspace, ledger, backend, FleetConfig(), hooks=[broken, hook])
    assert controller.run(poll_s=0.0, idle_exit_s=0.0, sleep=lambda s: None) == "idle"
    assert calls[0] is None  # the first cycle looks at everything (a controller may have died mid-way)
    assert calls[1:] == [["w-001"], ["w-002"], ["w-003"]]
    assert [e.state for e in ledger.experiments()] == [ExperimentState.DONE] * 3  # the added runs ran too


class PlannedSearch:
    """A wave source like a search's: each slot it is given fills its next planned experiment."""

    def capacity(self, wave):
        return sum(e.state == ExperimentState.PLANNED for e in self.ledger.experiments(wave=wave.id))

    def produce(self, ledger, wave, count):
        planned = [e for e in ledger.experiments(wave=wave.id) if e.state == ExperimentState.PLANNED][:count]
        for e in planned:
            filled = NewExperiment(e.config, e.config_key, e.seed, "", "", "snap", "snap", "snap")
            ledger.fill_trial(wave.id, e.trial, [filled])
        return [ledger.experiment(e.id) for e in planned]


def test_an_older_search_wave_is_placed_before_newer_waves_of_its_priority(tmp_path):
    times = iter(float(t) for t in range(1000, 2000))
    backend = ScriptedBackend()
    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path, clock=lambda: next(times))
    ledger.upsert_cluster("c1", backend.name, "H100", ClusterState.UP)
    ledger.upsert_cluster("c2", backend.name, "H100", ClusterState.UP)
    _, trials = ledger.add_wave("search", "screen", {"timeout_s": 60}, "snap",
                                [NewExperiment({"T": str(i)}, f"t{i}", 0, "", "", trial=i)
                                 for i in range(6)], kind="search")
    for name in ("g1", "g2", "g3"):  # the agent keeps submitting
        ledger.add_wave(name, "screen", {"timeout_s": 60}, "snap",
                        [NewExperiment({"I": str(i)}, f"k{i}", 0, "", "") for i in range(4)])
    source = PlannedSearch()
    source.ledger = ledger
    Controller(workspace, ledger, backend, FleetConfig(queue_depth=2), sources={"search": source}).cycle()
    placed = {a.experiment_id for a in ledger.attempts()}
    assert placed == {t.id for t in trials[:4]}  # the search's trials took all four places
