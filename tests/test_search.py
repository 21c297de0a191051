"""Search waves: the pure decisions, the study's durability, and whole searches through the controller.

The whole searches run in-process: the real controller, the real search hook and Optuna study, the
real knob check of a stand-in workload whose score is a known function of its knobs
(tests/fixtures/searchwork), and a backend whose jobs take two controller cycles to finish, so that
several trials are always in flight (parallel asks) as on a fleet.
"""
from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import pytest
from fleet_cli import SEARCHWORK, load_script

from fleet.backends.base import Backend
from fleet.cli.search_view import planned_trials
from fleet.config import FleetConfig, load_config
from fleet.core.controller import Controller
from fleet.core.knobs import KnobInfo
from fleet.core.ledger import Ledger
from fleet.core.materialize import CodeStore
from fleet.core.wave import load_wave
from fleet.core.wave_spec import SearchDim, SearchSpec
from fleet.core.workload import workload_for
from fleet.research.search import (
    RunOutcome,
    default_startup_trials,
    dim_kind,
    sampler_seed,
    trial_config,
    trial_outcome,
    unasked_trials,
)
from fleet.research.search_checks import check_search_wave
from fleet.research.search_hook import SEARCH_KIND, SearchDriver
from fleet.research.study import WaveStudy, preview_asks, study_path
from fleet.types import ClusterInfo, ClusterState, ExperimentState, JobInfo, JobState
from fleet.workspace import Workspace

searchwork = load_script(SEARCHWORK / "train" / "train.py", "searchwork_train")
OPTIMUM = 1.0  # searchwork's score at MATRIX_LR=0.04, WEIGHT_DECAY=0.05, DEPTH=4 (seed noise aside)


# ---- pure decisions ---------------------------------------------------------------------------------------


def test_the_trials_left_to_ask_are_the_planned_ones_the_study_has_not_asked():
    P, Q, D, C = ExperimentState.PLANNED, ExperimentState.PENDING, ExperimentState.DONE, ExperimentState.CANCELLED
    trials = {0: [D, D], 1: [Q, Q], 2: [P, P], 3: [C, C], 4: [P, P]}
    assert unasked_trials(trials, asked=2) == [2, 4]  # 3 was cancelled while planned: never asked for
    assert unasked_trials(trials, asked=3) == [4]  # 2 was asked by a controller that died before filling it
    assert unasked_trials(trials, asked=5) == [] and unasked_trials({}, asked=0) == []


@pytest.mark.parametrize("runs, state, value", [
    ([RunOutcome(ExperimentState.DONE, 1.0), RunOutcome(ExperimentState.DONE, 2.0)], "complete", 1.5),
    ([RunOutcome(ExperimentState.DONE, 1.0), RunOutcome(ExperimentState.CRASH)], "complete", 1.0),
    ([RunOutcome(ExperimentState.DONE, 1.0), RunOutcome(ExperimentState.RUNNING)], "running", None),
    ([RunOutcome(ExperimentState.PRUNED), RunOutcome(ExperimentState.CRASH)], "pruned", None),
    ([RunOutcome(ExperimentState.CRASH), RunOutcome(ExperimentState.TIMEOUT)], "fail", None),
    ([RunOutcome(ExperimentState.CANCELLED)], "fail", None),
    ([RunOutcome(ExperimentState.DONE, float("nan"))], "fail", None),
    ([RunOutcome(ExperimentState.PLANNED)], "running", None),
])
def test_trial_outcome(runs, state, value):
    outcome = trial_outcome(runs)
    assert outcome.state == state and outcome.value == value


def test_a_trials_configuration_is_the_env_plus_rounded_samples():
    config = trial_config({"MATRIX_LR": 0.0345678912, "DEPTH": 6, "ACT": "relu"}, {"TIME_BUDGET": 300, "DEPTH": 4})
    assert config == {"TIME_BUDGET": "300", "MATRIX_LR": "0.03457", "DEPTH": "6", "ACT": "relu"}


@pytest.mark.parametrize("dim, knob_type, kind, problem", [
    (SearchDim(0, 1), "float", "float", None),          # whole-number bounds on a float knob still sample floats
    (SearchDim(2, 8), "int", "int", None),
    (SearchDim(2.0, 8.0), "int", "int", None),
    (SearchDim(2, 8.5), "int", "int", "whole-number bounds"),
    (SearchDim(0, 8, log=True), "int", "int", "needs `low` >= 1"),
    (SearchDim(0, 1), "str", "float", "give its values as `choices`"),
    (SearchDim(choices=("a", "b")), "str", "choice", None),
])
def test_a_range_samples_what_the_knob_is(dim, knob_type, kind, problem):
    got_kind, got_problem = dim_kind("K", dim, KnobInfo("K", knob_type), "search.space.K")
    assert got_kind == kind
    assert (got_problem is None) if problem is None else (problem in got_problem)


def test_startup_trials_and_sampler_seeds():
    assert [default_startup_trials(t) for t in (1, 8, 24, 48, 400)] == [2, 2, 6, 10, 10]
    seeds = {sampler_seed(s, asked) for s in range(3) for asked in range(50)}
    assert len(seeds) == 150  # no two (seed, cycle) pairs share a sampler seed


# ---- the study on disk --------------------------------------------------------------------------------------

SPEC = SearchSpec(6, {"MATRIX_LR": SearchDim(0.004, 0.4, True, kind="float"),
                      "DEPTH": SearchDim(1, 8, kind="int")}, "tpe", 3)


def test_a_reopened_study_has_every_trial_and_asks_new_numbers(tmp_path):
    path = tmp_path / "w.journal"
    first = WaveStudy(path, "w", SPEC).ask(3)
    assert [t.number for t in first] == [0, 1, 2]
    assert first == [t for t in WaveStudy(path, "w", SPEC).trials()]  # the same trials, params and all
    again = WaveStudy(path, "w", SPEC).ask(2)
    assert [t.number for t in again] == [3, 4]
    params = [tuple(sorted(t.params.items())) for t in first + again]
    assert len(set(params)) == 5


def test_the_first_asks_of_a_dry_run_are_what_the_wave_asks(tmp_path):
    asked = WaveStudy(tmp_path / "w.journal", "w", SPEC).ask(4)
    assert preview_asks(SPEC, 4) == [t.params for t in asked]


def test_a_torn_last_line_is_dropped_and_the_study_reads_on(tmp_path):
    path = tmp_path / "w.journal"
    WaveStudy(path, "w", SPEC).ask(2)
    with open(path, "ab") as f:
        f.write(b'{"op_code": 4, "worker_id": "x", "trial_id": 1')  # a write cut short by kill -9
    study = WaveStudy(path, "w", SPEC)
    study.ask(1)
    assert [t.number for t in WaveStudy(path, "w", SPEC).trials()] == [0, 1, 2]


def test_a_trial_asked_with_some_knobs_unset_is_completed_not_asked_again(tmp_path):
    import optuna

    path = tmp_path / "w.journal"
    study = WaveStudy(path, "w", SPEC)
    raw = optuna.Study("w", study.storage)
    trial = raw.ask()  # a controller killed after the trial was created, before all its knobs were drawn
    trial.suggest_float("MATRIX_LR", 0.004, 0.4, log=True)
    params = WaveStudy(path, "w", SPEC).complete_params(trial.number)
    assert set(params) == {"MATRIX_LR", "DEPTH"} and params["MATRIX_LR"] == trial.params["MATRIX_LR"]
    assert len(WaveStudy(path, "w", SPEC).trials()) == 1


# ---- whole searches, in-process -----------------------------------------------------------------------------


class FunctionBackend(Backend):
    """`n` clusters; a job runs the cycle after it is submitted and finishes the cycle after that (having
    used 300 GPU-seconds), scoring searchwork's objective of its knobs."""

    name = "function"

    def __init__(self, n: int) -> None:
        self.n = n
        self.jobs: dict[str, list[list]] = {f"c{i}": [] for i in range(n)}  # cluster -> [job id, name, envs, age]
        self.submitted: list[dict[str, str]] = []

    def up(self, names, accelerators):
        return [ClusterInfo(n, a) for n, a in zip(names, accelerators)]

    def clusters(self):
        return [ClusterInfo(name, "cpu") for name in self.jobs]

    def submit(self, cluster, job):
        queue = self.jobs[cluster]
        queue.append([len(queue) + 1, job.job_name, dict(job.envs), 0])
        self.submitted.append(dict(job.envs))
        return len(queue)

    def queues(self, clusters):
        out = {}
        for cluster in clusters:
            infos = []
            for job in self.jobs[cluster]:
                job[3] += 1
                state = JobState.RUNNING if job[3] == 1 else JobState.SUCCEEDED
                infos.append(JobInfo(job[0], job[1], state, 1.0, 301.0 if state == JobState.SUCCEEDED else None,
                                     0 if state == JobState.SUCCEEDED else None))  # 300 GPU-seconds each
            out[cluster] = infos
        return out

    def logs(self, cluster, job_id):
        envs = self.jobs[cluster][job_id - 1][2]
        value = searchwork.objective(float(envs.get("MATRIX_LR", 0.04)), float(envs.get("WEIGHT_DECAY", 0.0)),
                                     int(envs.get("DEPTH", 2)), int(envs.get("SEED", 0)))
        return f"---\nval_bpb: {value:.6f}\nnum_steps: 10\ntraining_seconds: 1.0\nEXPERIMENT_STATUS: done\n"

    def cancel(self, cluster, job_ids):
        pass

    def down(self, clusters):
        pass


WAVE = """\
name: s
search:
  trials: {trials}
  sampler: {sampler}
  seed: {seed}
  space:
    MATRIX_LR: {{low: 0.004, high: 0.4, log: true}}
    WEIGHT_DECAY: {{low: 0.0, high: 0.2}}
    DEPTH: {{low: 1, high: 8}}
"""


def _search_project(tmp_path: Path, wave_text: str, clusters: int):
    root = tmp_path / "project"
    shutil.copytree(SEARCHWORK, root)
    (root / "s.yaml").write_text(wave_text)
    workspace = Workspace(root).ensure()
    config = load_config(root)
    workload = workload_for(root, config)
    snapshot = workload.snapshot(workspace.snapshots)
    spec = check_search_wave(load_wave(root / "s.yaml", config.tiers), CodeStore(workload, workspace.snapshots),
                             snapshot)
    ledger = Ledger(workspace.ledger_path)
    ledger.add_wave(spec.name, spec.tier, spec.to_json(), snapshot, planned_trials(spec, 1), kind="search")
    backend = FunctionBackend(clusters)
    for info in backend.clusters():
        ledger.upsert_cluster(info.name, backend.name, info.accelerator, ClusterState.UP)
    return workspace, ledger, backend, FleetConfig(queue_depth=1)


def _controller(workspace, ledger, backend, config) -> Controller:
    """The controller as the research extension makes it: the search watches each cycle and is the source of
    search waves' experiments."""
    driver = SearchDriver(workspace, ledger, config)
    return Controller(workspace, ledger, backend, config, watchers=[driver], sources={SEARCH_KIND: driver})


def _run(workspace, ledger, backend, config, max_cycles: int = 200) -> int:
    controller = _controller(workspace, ledger, backend, config)
    for cycle in range(max_cycles):
        if not ledger.has_unfinished_work():
            return cycle
        controller.cycle()
    raise AssertionError(f"the search did not finish in {max_cycles} cycles")


def best_found(tmp_path: Path, sampler: str, seed: int, trials: int) -> float:
    workspace, ledger, backend, config = _search_project(tmp_path / f"{sampler}{seed}",
                                                         WAVE.format(trials=trials, sampler=sampler, seed=seed), 4)
    _run(workspace, ledger, backend, config)
    values = [r.val_bpb for r in ledger.results().values() if r.val_bpb is not None]
    assert len(values) == trials
    return min(values)


def test_tpe_finds_the_optimum_and_beats_random_at_the_same_budget(tmp_path):
    trials, seeds = 24, range(4)
    tpe = [best_found(tmp_path, "tpe", s, trials) for s in seeds]
    rand = [best_found(tmp_path, "random", s, trials) for s in seeds]
    # Near the optimum (the space's scores span 1.0 .. ~3.8): within 0.05 on average, 0.1 at worst.
    assert statistics.mean(tpe) < OPTIMUM + 0.05 and max(tpe) < OPTIMUM + 0.1, tpe
    # Better than random on average over the seeds, at the same number of trials.
    assert statistics.mean(tpe) < statistics.mean(rand), (tpe, rand)


def test_every_trial_runs_once_with_the_configuration_the_study_holds(tmp_path):
    workspace, ledger, backend, config = _search_project(
        tmp_path, WAVE.format(trials=10, sampler="tpe", seed=0).replace("name: s\n", "name: s\nseeds: 2\n"), 3)
    _run(workspace, ledger, backend, config)
    study = WaveStudy(study_path(workspace.state, "s"), "s", SearchSpec(10, {}))
    trials = study.trials()
    assert [t.number for t in trials] == list(range(10)) and {t.state for t in trials} == {"COMPLETE"}
    runs = ledger.experiments(wave="s")
    assert len(runs) == 20 and all(e.state == ExperimentState.DONE for e in runs)
    assert len(backend.submitted) == 20  # each run submitted once
    for trial in trials:
        mine = [e for e in runs if e.trial == trial.number]
        assert sorted(e.seed for e in mine) == [0, 1]
        assert {e.config["DEPTH"] for e in mine} == {str(trial.params["DEPTH"])}
        # the study was told the mean over the trial's two seeds
        values = [ledger.result(e.id).val_bpb for e in mine]
        assert math.isclose(trial.value, statistics.mean(values), rel_tol=1e-9)


def test_queues_stay_full_while_trials_are_left(tmp_path):
    workspace, ledger, backend, config = _search_project(tmp_path, WAVE.format(trials=9, sampler="tpe", seed=0), 3)
    controller = _controller(workspace, ledger, backend, config)
    busy = []
    while ledger.has_unfinished_work():
        controller.cycle()
        busy.append(len(ledger.attempts(active=True)))
    assert busy[:3] == [3, 3, 3]  # every cluster has a job from the first cycle on
    assert sum(1 for e in ledger.experiments(wave="s") if e.state == ExperimentState.DONE) == 9


def test_a_controller_killed_between_ask_and_fill_fills_the_same_trial_on_restart(tmp_path):
    workspace, ledger, backend, config = _search_project(tmp_path, WAVE.format(trials=4, sampler="random", seed=5), 2)
    hook = SearchDriver(workspace, ledger, config)
    study = hook._study(ledger.wave("s"))
    asked = study.ask(1)[0]  # the ask is durable; then the controller dies before filling the ledger
    _run(workspace, ledger, backend, config)
    runs = {e.trial: e for e in ledger.experiments(wave="s")}
    assert len(runs) == 4 and len(WaveStudy(study_path(workspace.state, "s"), "s", SearchSpec(4, {})).trials()) == 4
    assert float(runs[asked.number].config["MATRIX_LR"]) == pytest.approx(asked.params["MATRIX_LR"], rel=1e-3)


def test_a_configuration_the_workload_refuses_fails_its_trial_not_the_wave(tmp_path):
    # The sampler never leaves the space, so hand the hook what the workload forbids (DEPTH above its max, 64),
    # as a combination the workload refuses (e.g. a batch size that does not divide) would reach it.
    text = WAVE.format(trials=6, sampler="random", seed=1).replace("DEPTH: {low: 1, high: 8}",
                                                                    "DEPTH: {choices: [2, 4]}")
    workspace, ledger, backend, config = _search_project(tmp_path, text, 2)
    hook = SearchDriver(workspace, ledger, config)
    wave = ledger.wave("s")
    trial = hook._study(wave).ask(1)[0]
    bad = {**trial.params, "DEPTH": 65}  # as if the sampler had proposed what the workload forbids
    hook._fill(wave, {trial.number: bad}, hook._runs_by_trial("s"))
    (run,) = [e for e in ledger.experiments(wave="s") if e.trial == trial.number]
    assert run.state == ExperimentState.CRASH and "refused" in run.reason and "DEPTH" in run.reason
    _run(workspace, ledger, backend, config)
    states = {t.number: t.state for t in hook._study(wave).trials()}
    assert states[trial.number] == "FAIL" and len(states) == 6


def test_a_budget_cap_stops_the_asking_until_release(tmp_path):
    workspace, ledger, backend, config = _search_project(tmp_path, WAVE.format(trials=8, sampler="tpe", seed=0), 2)
    with ledger.tx() as db:  # room for 3 runs of the default 300 s budget
        db.execute("UPDATE waves SET max_gpu_hours = ? WHERE id = 's'", (3 * 300 / 3600 + 1e-6,))
    cycles = _run(workspace, ledger, backend, config)
    counts = ledger.counts("s")
    assert counts["done"] == 3 and counts["held"] >= 1  # asked while there was room, then held: no more asks
    asked = len(WaveStudy(study_path(workspace.state, "s"), "s", SearchSpec(8, {})).trials())
    assert asked == counts["done"] + counts["held"] and counts["planned"] == 8 - asked
    assert cycles < 50  # the controller went idle instead of spinning on planned trials
    for _ in range(8):  # `fleet release` runs what is held; the search asks on, and the cap holds again
        for exp in ledger.experiments(wave="s", states=[ExperimentState.HELD]):
            ledger.release(exp.id)
        _run(workspace, ledger, backend, config)
    assert ledger.counts("s") == {"done": 8}


def test_a_cancelled_search_stops_asking_and_its_asked_trials_are_told_failed(tmp_path):
    workspace, ledger, backend, config = _search_project(tmp_path, WAVE.format(trials=6, sampler="tpe", seed=0), 2)
    controller = _controller(workspace, ledger, backend, config)
    controller.cycle()  # two trials asked and submitted
    for exp in ledger.experiments(wave="s"):
        ledger.set_state(exp.id, ExperimentState.CANCELLED, "cancelled by user",
                         only_from=(ExperimentState.PLANNED, ExperimentState.PENDING, ExperimentState.QUEUED,
                                    ExperimentState.RUNNING))
    cycles = _run(workspace, ledger, backend, config)
    assert cycles < 20 and not ledger.has_unfinished_work()  # nothing left to ask or tell: idle, not spinning
    trials = WaveStudy(study_path(workspace.state, "s"), "s", SearchSpec(6, {})).trials()
    assert [(t.number, t.state) for t in trials] == [(0, "FAIL"), (1, "FAIL")]
    assert ledger.untold_trials() == 0 and ledger.counts("s") == {"cancelled": 6}
