"""Search waves and early stopping end to end: the `fleet` CLI, the local backend, a stand-in workload with a
known optimum and a training-loss curve (tests/fixtures/searchwork), a controller killed with -9."""
from __future__ import annotations

import json
import os
import signal

import pytest
from fleet_cli import SEARCHWORK, make_project, teardown

from fleet.core.ledger_rows import NewExperiment
from fleet.core.wave_spec import SearchSpec
from fleet.research.study import WaveStudy, preview_asks, study_path
from fleet.types import ClusterState, ExperimentState
from fleet.workspace import Workspace

SEARCH = """\
name: s
env: {TIME_BUDGET: 0.3}
experiments:
  - {description: baseline}
search:
  trials: 10
  seed: 2
  space:
    MATRIX_LR: {low: 0.004, high: 0.4, log: true}
    WEIGHT_DECAY: {low: 0.0, high: 0.2}
    DEPTH: {choices: [2, 4, 8]}
"""


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys, fixture=SEARCHWORK)
    yield runner
    teardown(runner)


def _study(fleet) -> WaveStudy:
    return WaveStudy(study_path(Workspace(fleet.root).state, "s"), "s", SearchSpec(1, {}))


def test_a_killed_controller_resumes_the_search_with_every_trial_asked_once(fleet):
    fleet.write("s.yaml", SEARCH)
    code, _, err = fleet("wave", "s.yaml")
    assert code == 0, err
    ledger = fleet.ledger

    def asked() -> int:
        return sum(1 for e in ledger.experiments(wave="s") if e.trial is not None and e.state != ExperimentState.PLANNED)

    fleet.wait_until(lambda: asked() >= 3)
    os.kill(int(ledger.get_meta("controller_pid")), signal.SIGKILL)
    assert asked() < 10  # killed mid-search: trials were still to be asked
    board = fleet.json("wait", "s", "--timeout", "120")  # starts a new controller, which resumes the study
    runs = [e for e in fleet.ledger.experiments(wave="s") if e.trial is not None]
    assert sorted(e.trial for e in runs) == list(range(10))  # exactly `trials` trials, each once
    assert all(e.state == ExperimentState.DONE for e in runs)
    # Each ran once: an attempt recorded just before the kill whose job never reached its slot is given up
    # (`lost`, never started) and the experiment submitted again; no job of one experiment ran twice.
    for e in runs:
        started = [a for a in fleet.ledger.attempts(e.id) if a.started_at is not None]
        assert len(started) == 1, fleet.ledger.attempts(e.id)
    trials = _study(fleet).trials()
    assert [t.number for t in trials] == list(range(10)) and {t.state for t in trials} == {"COMPLETE"}
    assert len({e.config_key for e in runs}) == 10  # no configuration asked twice
    for trial in trials:  # what ran is what the study asked, and the study knows how it scored
        (run,) = [e for e in runs if e.trial == trial.number]
        assert run.config["DEPTH"] == str(trial.params["DEPTH"])
        assert trial.value == pytest.approx(fleet.ledger.result(run.id).val_bpb)
    assert {r["experiment"] for r in board["rows"]} == {e.id for e in fleet.ledger.experiments(wave="s")}

    # `fleet promote` works on a search wave like on any other: the best trials that beat the baseline on the
    # screen, against it (one that did not beat it is left out, and stderr says so)
    # (the runs are wall-clock bound, so which trials beat the baseline varies with the machine's load)
    (base,) = [fleet.ledger.result(e.id).val_bpb for e in fleet.ledger.experiments(wave="s") if e.trial is None]
    ranked = sorted((fleet.ledger.result(e.id).val_bpb, e.config_key) for e in runs)
    best = [key for v, key in ranked if v < base][:2]
    waves = len(fleet.ledger.waves())
    code, out, err = fleet("promote", "s", "--top", "2", "--seeds", "2", "--json")
    if not best:  # none beat it: nothing queued, and the error names the top 2 to force
        assert code == 2 and "nothing queued" in err and len(fleet.ledger.waves()) == waves
        forced = err.split("`fleet promote --experiments ")[1].split("`")[0].split()
        assert {fleet.ledger.experiment(e).config_key for e in forced} == {key for _, key in ranked[:2]}
        code, out, err = fleet("promote", "--experiments", *forced, "--seeds", "2", "--json")
        best = [key for _, key in ranked[:2]]
    assert code == 0, err
    plan = json.loads(out)
    promoted = {e.config_key for e in fleet.ledger.experiments(wave=plan["wave"]) if e.description != "baseline"}
    assert promoted == set(best)
    assert ("did not beat the baseline" in err) == (len(best) < 2)
    fleet("cancel", "--wave", plan["wave"])


def test_dry_run_shows_the_space_and_the_first_asks_and_submits_nothing(fleet):
    fleet.write("s.yaml", SEARCH)
    out = fleet.json("wave", "s.yaml", "--dry-run")
    assert [e["label"] for e in out["experiments"]] == ["baseline"]
    search = out["search"]
    assert search["space"]["WEIGHT_DECAY"] == {"low": 0.0, "high": 0.2, "log": False, "kind": "float"}
    assert search["space"]["DEPTH"]["choices"] == [2, 4, 8]
    spec = SearchSpec(10, {}, seed=2)
    from fleet.research.search import space_from_json

    expected = preview_asks(SearchSpec(10, space_from_json(search["space"]), "tpe", 2), len(search["first_asks"]))
    assert len(search["first_asks"]) == 4  # two local slots, two places each
    assert [a["DEPTH"] for a in search["first_asks"]] == [e["DEPTH"] for e in expected]
    assert spec.trials == search["trials"]
    code, text, _ = fleet("wave", "s.yaml", "--dry-run")
    assert code == 0 and "MATRIX_LR: float in [0.004, 0.4], log scale" in text and "first 4 configurations" in text
    assert fleet.ledger.waves() == []


@pytest.mark.parametrize("block, expected", [
    ("search: {trials: 0, space: {DEPTH: {low: 1, high: 4}}}", "`search.trials` = 0"),
    ("search: {trials: 3, sampler: tpee, space: {DEPTH: {low: 1, high: 4}}}", "tpe, cmaes, gp or random"),
    ("search: {trials: 3, space: {MATRIX_LRR: {low: 0.01, high: 0.1}}}", "unknown knob; did you mean MATRIX_LR?"),
    ("search: {trials: 3, space: {MATRIX_LR: {low: 0.1, high: 0.01}}}", "`low` (0.1) must be below `high` (0.01)"),
    ("search: {trials: 3, space: {MATRIX_LR: {low: 0, high: 0.1, log: true}}}", "`log: true` needs positive bounds"),
    ("search: {trials: 3, space: {DEPTH: {choices: []}}}", "`search.space.DEPTH.choices` is empty"),
    ("search: {trials: 3, space: {DEPTH: {low: 1, high: 100}}}", "`search.space.DEPTH.high` = '100'"),
    ("search: {trials: 3, space: {DEPTH: {low: 1.5, high: 4}}}", "DEPTH is an int knob"),
    ("search: {trials: 3, space: {SEED: {low: 1, high: 4}}}", "SEED is set by the fleet"),
    ("search: {trials: 3, space: {DEPTH: {low: 1, hi: 4}}}", "did you mean `high`?"),
    ("search: {trials: 3, space: {}}", "`search.space`"),
    ("search: {trials: 3, space: {DEPTH: {low: 1, high: 4}}}\ngrid: {DEPTH: [2]}", "either gridded or searched"),
    ("early_stop: {at: [0.25, 0.5], margin: 0.1}", "`early_stop.at[1]` = 0.5 is at or after the warmdown start"),
    ("env: {WARMDOWN_RATIO: 0.8}\nearly_stop: {at: [0.25], margin: 0.1}", "env.WARMDOWN_RATIO"),
    ("early_stop: {at: [0.3, 0.2], margin: 0.1}", "increasing order"),
    ("early_stop: {at: [1.5], margin: 0.1}", "between 0 and 1"),
])
def test_a_bad_search_or_early_stop_block_is_refused_with_one_line(fleet, block, expected):
    fleet.write("bad.yaml", "name: bad\n" + block + "\n")
    code, out, err = fleet("wave", "bad.yaml")
    assert code == 2, err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert fleet.ledger.waves() == []


def test_a_clearly_bad_run_is_pruned_and_the_good_ones_run_to_the_end(tmp_path, monkeypatch, capsys):
    # Three slots: the wave's order puts its baseline third, and it must run beside the bad run to be its reference.
    fleet = make_project(tmp_path, monkeypatch, capsys, slots="cpu,cpu,cpu", fixture=SEARCHWORK)
    try:
        _prune_a_bad_run(fleet)
    finally:
        teardown(fleet)


def _prune_a_bad_run(fleet):
    fleet.write("e.yaml", """\
name: e
env: {TIME_BUDGET: 3, LOG_POINTS: 30, WARMDOWN_RATIO: 0.3}
experiments:
  - {description: baseline}
  - {MATRIX_LR: 0.6, description: bad}
  - {MATRIX_LR: 0.045, description: good}
  - {WEIGHT_DECAY: 0.05, description: better}
early_stop: {at: [0.2, 0.5], margin: 0.2}
""")
    board = fleet.json("wave", "e.yaml", "--wait")
    rows = {r["label"]: r for r in board["rows"]}
    assert rows["bad"]["state"] == "pruned" and rows["bad"]["rank"] is None and rows["bad"]["val_bpb"] is None
    assert {rows[k]["state"] for k in ("baseline", "good", "better")} == {"done"}
    result = fleet.ledger.result(rows["bad"]["experiment"])
    assert result.outcome == "pruned" and "trails the baseline" in result.reason
    assert 0.2 <= result.metrics["last_progress"] < 0.7  # stopped before its budget ended, before the warmdown
    assert result.metrics["last_loss"] > result.metrics["reference_loss"] + 0.2
    assert "loss" in result.tail and 0 < result.gpu_seconds < 3
    code, tsv, _ = fleet("results", "--format", "tsv")
    status = {line.split("\t")[0]: line.split("\t")[3] for line in tsv.splitlines()[1:]}
    assert status[rows["bad"]["experiment"]] == "pruned"  # not a crash, and never a verdict

    # The efficiency accounting sees the pruned run's GPU time, in status, the report, the dashboard and the plot.
    eff = fleet.json("status")["efficiency"]
    assert eff["best_experiment"] == board["rows"][0]["experiment"] and eff["waste"]["pruned"] > 0
    assert eff["gpu_hours_to_best"] <= eff["gpu_hours"]
    code, _, err = fleet("report", "-o", "report.md")
    assert code == 0, err
    report = (fleet.root / "report.md").read_text()
    assert "## Efficiency" in report and "until each new best" in report and "pruned " in report
    code, out, _ = fleet("watch", "--once")
    assert code == 0 and "efficiency" in out
    plot = fleet.json("plot", "--x", "gpu-hours", "-o", "frontier.png")
    assert plot["best"] == pytest.approx(eff["best"]) and (fleet.root / "frontier.png").stat().st_size > 0


def test_a_promote_of_a_search_wave_is_judged_on_the_trials_own_runs(fleet):
    # WARMDOWN_RATIO: 1 is spelled "1.0" once defaults are filled in, and DEPTH 2 is the default: the keys of the
    # trials' runs must be those a promote wave's runs get, or its verdict finds no pair of runs at all.
    fleet.write("k.yaml", """\
name: k
env: {TIME_BUDGET: 0.3, WARMDOWN_RATIO: 1}
experiments:
  - {description: baseline}
search:
  trials: 3
  seed: 1
  space:
    MATRIX_LR: {low: 0.004, high: 0.4, log: true}
    DEPTH: {choices: [2, 4]}
""")
    fleet.json("wave", "k.yaml", "--wait")
    trials = [e for e in fleet.ledger.experiments(wave="k") if e.trial is not None]
    assert {e.state for e in trials} == {ExperimentState.DONE}
    # the best trial by name: whether it beat the baseline on this wall-clock-bound screen varies from run to run
    best = min(trials, key=lambda e: fleet.ledger.result(e.id).val_bpb)
    plan = fleet.json("promote", "--experiments", best.id, "--max-seeds", "3", "--min-effect", "0.01")
    (candidate,) = plan["candidates"]
    fleet.json("wait", plan["wave"], "--timeout", "120")
    report = fleet.json("verdict", plan["wave"])
    (judged,) = report["candidates"]
    assert judged["config_key"] == candidate["config_key"]
    runs = [e for e in fleet.ledger.experiments(wave=plan["wave"]) if e.config_key == candidate["config_key"]]
    assert runs and judged["n"] == len(runs)  # every run of the candidate is one pair of the verdict
    assert judged["verdict"] in {"keep", "discard", "inconclusive"} and report["complete"]


def test_a_searchs_planned_trials_are_work_left_for_next_and_the_journal(fleet):
    # Right after submitting: one trial chosen (pending), five not chosen yet (planned), on two idle slots.
    ledger = fleet.ledger
    for name in ("cpu-0", "cpu-1"):
        ledger.upsert_cluster(name, "local", "cpu", ClusterState.UP)
    ledger.add_wave("s", "screen", {"env": {"TIME_BUDGET": 60}}, "snap",
                    [NewExperiment({}, "", 0, "", f"trial {k} (not chosen yet)", trial=k) for k in range(6)],
                    kind="search")
    ledger.fill_trial("s", 0, [NewExperiment({"TIME_BUDGET": "60", "MATRIX_LR": "0.05"}, "k0", 0, "", "MATRIX_LR=0.05",
                                             "snap", "snap", "snap", trial=0)])
    nxt = fleet.json("next", "--horizon", "5")
    (wave,) = nxt["in_flight"]
    assert (wave["wave"], wave["finished"], wave["total"]) == ("s", 0, 6)
    # six runs of 60 s plus a minute's start-up each, three after another on each of the two slots
    assert wave["eta_s"] == pytest.approx(3 * 120, abs=1)
    assert all(c["dry_in_s"] == pytest.approx(3 * 120, abs=1) for c in nxt["clusters"])
    assert "fill" not in [a["kind"] for a in nxt["actions"]]  # the search keeps both slots busy past the horizon
    fleet.json("journal")
    text = (fleet.root / "journal.md").read_text()
    assert "not chosen yet" not in text and "crashed" not in text
