"""The fleet-operations commands through the CLI on the local backend: priorities and tracks on
waves, `fleet bump`, `status --track`, `wave --dry-run` running every knob check, progress lines of
`wave --wait`, `wait --until-idle`, and `fleet controller run` in the foreground."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fleet_cli import make_project, teardown

from fleet.core.daemon import controller_lock
from fleet.core.drain import ClusterWork, PendingRun, dry_in
from fleet.core.ledger import Ledger
from fleet.types import ClusterState, ExperimentState
from fleet.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
QUICK = "name: quick\nenv: {TIME_BUDGET: 0.05}\ngrid:\n  MATRIX_LR: [0.02, 0.03, 0.04]\n"


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FLEET_TRACK", raising=False)
    runner = make_project(tmp_path, monkeypatch, capsys)
    yield runner
    teardown(runner)


# --- priorities and tracks on waves ----------------------------------------------------------------
def test_waves_get_their_tiers_priority_and_a_track(fleet, monkeypatch):
    fleet.write("s.yaml", "name: s\nenv: {TIME_BUDGET: 0.05, HANG: 1}\ngrid: {MATRIX_LR: [0.01, 0.02, 0.03]}\n")
    screen = fleet.json("wave", "s.yaml")
    assert (screen["priority"], screen["track"]) == (0, "")
    fleet.write("v.yaml", "name: v\ntier: validate\nenv: {TIME_BUDGET: 0.05}\nexperiments: [{}]\n")
    validate = fleet.json("wave", "v.yaml", "--track", "agent-a")
    assert (validate["priority"], validate["track"]) == (10, "agent-a")  # validation goes ahead by default
    monkeypatch.setenv("FLEET_TRACK", "agent-b")
    fleet.write("t.yaml", "name: t\npriority: -3\nenv: {TIME_BUDGET: 0.05, HANG: 1}\nexperiments: [{}]\n")
    low = fleet.json("wave", "t.yaml")
    assert (low["priority"], low["track"]) == (-3, "agent-b")
    explicit = fleet.json("wave", "t.yaml", "--priority", "7")
    assert explicit["priority"] == 7

    status = fleet.json("status", "--track", "agent-b")
    assert [w["id"] for w in status["waves"]] == ["t", "t-2"] and status["track"] == "agent-b"
    assert {w["id"]: w["priority"] for w in fleet.json("status")["waves"]} == {"s": 0, "v": 10, "t": -3, "t-2": 7}
    code, _, err = fleet("status", "--track", "nobody")
    assert code == 2 and "--track 'nobody' has no waves" in err

    bumped = fleet.json("bump", "t")
    assert (bumped["was"], bumped["priority"]) == (-3, 8)  # one above the other unfinished wave of its track
    assert fleet.ledger.wave("t").priority == 8
    assert fleet.json("bump", "s", "--priority", "-1")["priority"] == -1
    fleet("cancel", "--wave", "s")
    fleet("cancel", "--wave", "t")
    fleet("cancel", "--wave", "t-2")


@pytest.mark.parametrize("args, message", [
    (["--priority", "1001"], "--priority is '1001', but must be an integer from -1000 to 1000"),
    (["--priority", "high"], "--priority is 'high'"),
    (["--track", "Agent A"], "--track is 'Agent A', but a track is lowercase letters"),
])
def test_bad_priority_or_track_is_one_line_and_submits_nothing(fleet, args, message):
    fleet.write("q.yaml", QUICK)
    code, _, err = fleet("wave", "q.yaml", *args)
    assert code == 2 and message in err
    assert fleet.ledger.waves() == []


def test_bump_an_unknown_wave(fleet):
    code, _, err = fleet("bump", "nope")
    assert code == 2 and "wave 'nope' does not exist" in err


# --- dry-run: every check a submission makes -------------------------------------------------------
@pytest.fixture
def real_workload(fleet):
    """The repository's own train/ (its knob rules need no torch to be checked)."""
    shutil.rmtree(fleet.root / "train")
    shutil.copytree(REPO / "train", fleet.root / "train", ignore=shutil.ignore_patterns("__pycache__"))
    return fleet


@pytest.mark.parametrize("wave, message", [
    ("grid: {MATRIX_LRR: [0.03]}", "`grid.MATRIX_LRR`: unknown knob; did you mean MATRIX_LR?"),
    ("grid: {DEPTH: [-1]}", "knob DEPTH='-1' is below the minimum 1"),
    # the combination rule: the fix keeps the value under test and is offered first
    ("env: {PRESET: gpu}\ngrid: {TOTAL_BATCH_SIZE: [32768]}",
     "e.g. DEVICE_BATCH_SIZE=16 (keeps TOTAL_BATCH_SIZE=32768) or TOTAL_BATCH_SIZE=262144"),  # 128 * 2048
])
def test_dry_run_runs_the_full_knob_and_combination_check(real_workload, wave, message):
    fleet = real_workload
    fleet.write("w.yaml", f"name: w\n{wave}\n")
    code, out, err = fleet("wave", "w.yaml", "--dry-run")
    assert code == 2, out
    assert message in err
    assert fleet.ledger.waves() == [] and fleet.ledger.clusters() == []  # nothing submitted, nothing brought up


def test_dry_run_of_a_good_wave_lists_it_and_records_nothing(real_workload):
    fleet = real_workload
    fleet.write("w.yaml", "name: w\nenv: {PRESET: gpu, DEVICE_BATCH_SIZE: 16}\ngrid: {TOTAL_BATCH_SIZE: [32768]}\n")
    dry = fleet.json("wave", "w.yaml", "--dry-run")
    assert len(dry["experiments"]) == 1 and dry["priority"] == 0
    assert fleet.ledger.waves() == []


# --- progress while waiting ------------------------------------------------------------------------
def test_wave_wait_prints_one_line_per_finished_experiment_when_not_on_a_terminal(fleet):
    fleet.write("q.yaml", QUICK.replace("name: quick", "name: quick\ndescription: '[bold]x[/bold]'"))
    code, out, err = fleet("wave", "q.yaml", "--wait")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("quick-")]
    assert len(lines) == 3, err
    assert sorted(line.split()[-1] for line in lines) == ["[1/3]", "[2/3]", "[3/3]"]
    assert all(" done " in f" {line} " and "val_bpb=" in line for line in lines)
    assert any("MATRIX_LR=0.04" in line for line in lines)


# --- wait --until-idle -----------------------------------------------------------------------------
@pytest.mark.parametrize("clusters, pending, expected", [
    # the pending run goes to the cluster that frees first
    ([ClusterWork("a", "H100", 100.0), ClusterWork("b", "H100", 10.0)], [PendingRun("screen", 50.0)],
     {"a": 100.0, "b": 60.0}),
    # a tier's runs go only to its accelerator: the H200 runs dry while the H100 has work
    ([ClusterWork("h1", "H100", 0.0), ClusterWork("h2", "H200", 30.0)],
     [PendingRun("screen", 100.0), PendingRun("screen", 100.0)], {"h1": 200.0, "h2": 30.0}),
    # nothing queued or pending: dry now
    ([ClusterWork("a", "H100", 0.0)], [], {"a": 0.0}),
])
def test_dry_in_table(clusters, pending, expected):
    assert dry_in(clusters, pending, {"screen": ["H100"]}) == pytest.approx(expected)


def test_until_idle_returns_when_a_cluster_runs_dry_soon_and_waits_while_it_does_not(fleet):
    fleet.write("long.yaml", "name: long\nenv: {TIME_BUDGET: 600, HANG: 1}\ngrid: {MATRIX_LR: [0.01, 0.02, 0.03, 0.04]}\n")
    fleet.json("wave", "long.yaml")
    # 4 runs of 10+ minutes on 2 slots: no slot runs dry within a minute
    code, _, err = fleet("wait", "--until-idle", "1", "--timeout", "2")
    assert code == 1 and "gave up waiting after 2s; the first cluster runs dry in" in err
    code, out, err = fleet("wait", "--until-idle", "60", "--json")
    soon = json.loads(out)
    assert {c["cluster"] for c in soon["idle_soon"]} == {"local-01", "local-02"}
    assert "running dry within 60 min" in err  # the hint's `fleet next` looks as far ahead as the wait did
    assert all(10 * 60 <= c["dry_in_s"] <= 60 * 60 for c in soon["idle_soon"])
    fleet("cancel", "--wave", "long")
    fleet.wait_until(lambda: not fleet.ledger.has_unfinished_work())
    now = fleet.json("wait", "--until-idle")  # default 5 minutes; an idle fleet is dry now
    assert all(c["dry_in_s"] == 0 for c in now["idle_soon"])
    code, _, err = fleet("wait", "long", "--until-idle", "5")
    assert code == 2 and "drop the wave id" in err


# --- the controller in the foreground --------------------------------------------------------------
def test_controller_run_stays_up_between_waves_and_stops_on_sigterm(fleet):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    fleet.write("q.yaml", QUICK)
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "controller", "run", "--retry", "1"], cwd=fleet.root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fleet.wait_until(lambda: fleet.ledger.get_meta("controller_pid") == str(proc.pid), timeout=60)
        fleet.json("wave", "q.yaml")
        fleet.wait_until(lambda: fleet.ledger.counts("quick").get("done", 0) == 3, timeout=120)
        assert proc.poll() is None  # no work left, still running
        fleet.json("wave", "q.yaml")  # the next wave: the same controller runs it
        fleet.wait_until(lambda: fleet.ledger.counts("quick-2").get("done", 0) == 3, timeout=120)
        assert fleet.ledger.get_meta("controller_pid") == str(proc.pid)
        code, _, err = fleet("controller", "run")
        assert code == 1 and f"a controller is already running (pid {proc.pid})" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    exit_record = json.loads(fleet.ledger.get_meta("controller_exit"))
    assert exit_record["pid"] == proc.pid and "SIGTERM" in exit_record["reason"]
    assert all(e.state == ExperimentState.DONE for e in fleet.ledger.experiments())


def test_two_tracks_share_two_local_slots_about_evenly(fleet):
    """A real run at small scale: both tracks queued before the controller starts, equal experiments."""
    grid = "[" + ", ".join(f"0.0{i}" for i in range(1, 10)) + ", 0.1]"
    for track in ("a", "b"):
        fleet.write(f"{track}.yaml", f"name: {track}\ntrack: {track}\nenv: {{TIME_BUDGET: 0.3}}\n"
                                     f"grid: {{MATRIX_LR: {grid}}}\n")
    with controller_lock(Workspace(fleet.root)) as held:  # no controller starts until both are queued
        assert held
        fleet.json("wave", "a.yaml")
        fleet.json("wave", "b.yaml")
    fleet.json("wait")
    ledger = fleet.ledger
    intervals = {"a": [], "b": []}
    for attempt in ledger.attempts():
        if attempt.state == "succeeded":
            intervals[attempt.experiment_id.split("-")[0]].append((attempt.started_at, attempt.ended_at))
    # the window where both tracks had work: until the first track's last run ended
    end = min(max(e for _, e in runs) for runs in intervals.values())
    used = {t: sum(max(0.0, min(e, end) - s) for s, e in runs) for t, runs in intervals.items()}
    share = used["a"] / (used["a"] + used["b"])
    print(f"track a's share of the cluster-time while both had work: {share:.3f}")
    assert share == pytest.approx(0.5, abs=0.15), (share, intervals)


def test_replacements_show_in_status_and_watch(fleet):
    from fleet.core.fleet_size import FleetTarget, record_target
    from fleet.types import ClusterState

    ledger = fleet.ledger
    record_target(ledger, FleetTarget(2, ("cpu",), "local", "local"))
    ledger.upsert_cluster("local-01", "local", "cpu", ClusterState.UP)
    ledger.upsert_cluster("local-02", "local", "cpu", ClusterState.LOST)
    ledger.upsert_cluster("local-03", "local", "cpu", ClusterState.UP, replaces="local-02")
    status = fleet.json("status")
    assert {c["name"]: c["replaces"] for c in status["clusters"]} == {
        "local-01": None, "local-02": None, "local-03": "local-02"}
    assert status["fleet_size"] == {"target": 2, "live": 2, "launching": [], "last_failure": None}
    code, out, _ = fleet("status")
    assert code == 0 and "clusters (2 of 2 up or launching)" in out and "up (replaces local-02)" in out
    code, out, _ = fleet("watch", "--once")
    assert code == 0 and "(replaces local-02)" in out


@pytest.mark.parametrize("args, message", [
    (("wait", "--timeout", "abc"), "--timeout is 'abc', but must be a positive number of seconds (e.g. --timeout 1200)"),
    (("wait", "--until-idle", "-1"), "--until-idle is '-1', but must be a positive number of minutes"),
    (("next", "--horizon", "inf"), "--horizon is 'inf', but must be a positive number of minutes (e.g. --horizon 5)"),
    (("wave", "w.yaml", "--timeout", "0"), "--timeout is '0', but must be a positive number of seconds"),
])
def test_a_bad_duration_is_one_line_naming_the_flag_and_the_fix(fleet, args, message):
    code, _, err = fleet(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_an_unknown_knob_names_its_line_and_never_offers_seed(real_workload):
    fleet = real_workload
    fleet.write("w.yaml", "name: w\nenv: {TIME_BUDGET: 8}\ngrid:\n  MATRIX_LRR: [0.03]\n")
    code, _, err = fleet("wave", "w.yaml", "--dry-run")
    assert code == 2 and "w.yaml:4: `grid.MATRIX_LRR`: unknown knob; did you mean MATRIX_LR?" in err, err
    valid = err.split("(valid: ")[1].rstrip(")\n").split(", ")
    assert "MATRIX_LR" in valid and "SEED" not in valid  # the fleet sets SEED; a wave cannot
    fleet.write("s.yaml", "name: s\nexperiments:\n  - {SEED: 3}\n")
    code, _, err = fleet("wave", "s.yaml", "--dry-run")
    assert code == 2 and "s.yaml:3: `experiments[0].SEED`: SEED is set by the fleet" in err, err


def test_on_cpu_slots_the_combination_check_is_the_cpu_presets(real_workload, monkeypatch):
    """8 * the cpu preset's MAX_SEQ_LEN 128 = 1024: right for CPU slots, wrong for the gpu preset's 2048."""
    fleet = real_workload
    fleet.write("b.yaml", "name: b\nexperiments:\n  - {TOTAL_BATCH_SIZE: 1024, DEVICE_BATCH_SIZE: 8}\n")
    code, _, err = fleet("wave", "b.yaml", "--dry-run")
    assert code == 0, err  # this fleet's slots are CPU slots (FLEET_LOCAL_ACCELERATORS=cpu,cpu)
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", "H100")
    code, _, err = fleet("wave", "b.yaml", "--dry-run")
    assert code == 2 and "DEVICE_BATCH_SIZE*MAX_SEQ_LEN=8*2048" in err, err


def test_results_takes_the_wave_as_an_argument_too(fleet):
    fleet.write("w.yaml", "name: w\nenv: {TIME_BUDGET: 0.05}\nexperiments:\n  - {description: baseline}\n")
    fleet.json("wave", "w.yaml", "--wait")
    assert fleet.json("results", "w") == fleet.json("results", "--wave", "w")
    code, _, err = fleet("results", "w", "--wave", "x")
    assert code == 2 and "two waves asked for" in err
    code, _, err = fleet("results", "nope")
    assert code == 2 and "does not exist" in err


def test_every_code_store_of_a_cpu_fleet_assumes_the_cpu_device(tmp_path, monkeypatch):
    """What the fleet's code store (`fleet wave`, and the controller's sequential pairs, backfill and search
    trials alike) assumes of the hardware, from the clusters up, else the local slots to come."""
    from fleet.config import load_config
    from fleet.core.materialize import assumed_knobs
    from fleet.workspace import Workspace

    ledger = Ledger(Workspace(tmp_path).ensure().ledger_path)
    config = load_config(tmp_path)
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", "cpu,cpu")
    assert assumed_knobs(ledger, config) == {"DEVICE": "cpu"}  # nothing up yet: the slots the first wave brings up
    ledger.upsert_cluster("local-01", "local", "H100", ClusterState.UP)
    assert assumed_knobs(ledger, config) == {}  # a GPU slot: either preset may run
    ledger.upsert_cluster("local-01", "local", "cpu", ClusterState.UP)
    assert assumed_knobs(ledger, config) == {"DEVICE": "cpu"}
    ledger.set_meta("backend", "sky")
    ledger.upsert_cluster("local-01", "local", "cpu", ClusterState.DOWN)
    assert assumed_knobs(ledger, config) == {}  # nothing up on SkyPilot: the hardware is not known here
