"""End to end on the local backend with a tiny workload: waves, crashes, timeouts, a killed controller."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from fleet_cli import make_project, teardown

from fleet.types import ExperimentState

GRID = """\
name: grid
env: {TIME_BUDGET: 0.1}
grid:
  MATRIX_LR: [0.02, 0.04, 0.06]
  WEIGHT_DECAY: [0.0, 0.1]
experiments:
  - {description: crashes, CRASH: 1}
"""


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys)
    yield runner
    teardown(runner)


def test_wave_wait_leaderboard_and_exports(fleet):
    fleet.write("grid.yaml", GRID)
    board = fleet.json("wave", "grid.yaml", "--wait")
    rows = {r["experiment"]: r for r in board["rows"]}
    assert len(rows) == 7
    done = [r for r in board["rows"] if r["state"] == "done"]
    assert len(done) == 6 and all(r["val_bpb"] is not None for r in done)
    assert done[0]["label"] == "MATRIX_LR=0.04 WEIGHT_DECAY=0.0"  # the known optimum ranks first
    assert [r["rank"] for r in done] == list(range(1, 7))
    crash = rows["grid-007"]
    assert crash["state"] == "crash" and "exit code 1" in crash["reason"]
    # the ledger keeps the crash's last log lines
    assert "RuntimeError: boom" in fleet.ledger.result("grid-007").tail

    code, tsv, _ = fleet("results", "--format", "tsv")
    lines = tsv.splitlines()
    assert code == 0 and lines[0].split("\t") == ["experiment", "val_bpb", "memory_gb", "status", "description"]
    statuses = {line.split("\t")[0]: line.split("\t")[3] for line in lines[1:]}
    # the status is the verdict on the run's configuration; nothing was validated: "screen", never a running best
    assert statuses["grid-007"] == "crash" and set(statuses.values()) == {"screen", "crash"}

    code, out, _ = fleet("logs", "grid-003", "--tail", "20")
    assert code == 0 and "val_bpb:" in out and "EXPERIMENT_STATUS: done" in out

    status = fleet.json("status")
    assert status["best"]["experiment"] == done[0]["experiment"]
    assert status["waves"][0]["finished"] == 7
    assert {c["name"] for c in status["clusters"]} == {"local-01", "local-02"}


def test_bad_wave_is_rejected_and_nothing_submitted(fleet):
    fleet.write("typo.yaml", "name: t\ngrid:\n  MATRIX_LRR: [0.1]\n")
    code, _, err = fleet("wave", "typo.yaml")
    assert code == 2 and "MATRIX_LRR" in err and "MATRIX_LR" in err
    fleet.write("bad.yaml", "name: t\ngrid:\n  MATRIX_LR: [abc]\n")
    code, _, err = fleet("wave", "bad.yaml")
    assert code == 2 and "MATRIX_LR" in err and "abc" in err
    assert fleet.ledger.waves() == []


def test_timeout_kills_a_hung_experiment(fleet):
    fleet.write("hang.yaml", "name: hang\nexperiments:\n  - {HANG: 1}\n  - {HANG: 0}\n")
    board = fleet.json("wave", "hang.yaml", "--wait", "--timeout", "2")
    states = {r["experiment"]: r["state"] for r in board["rows"]}
    assert states == {"hang-001": "timeout", "hang-002": "done"}


def test_cancel_a_wave(fleet):
    fleet.write("slow.yaml", "name: slow\nenv: {TIME_BUDGET: 20}\ngrid:\n  DEPTH: [1, 2, 3, 4, 5, 6]\n")
    fleet.json("wave", "slow.yaml")
    fleet.wait_until(lambda: fleet.ledger.counts("slow").get("running", 0) >= 1)
    cancelled = fleet.json("cancel", "--wave", "slow")["cancelled"]
    assert len(cancelled) == 6
    fleet.json("wait", "slow", "--timeout", "30")
    assert fleet.ledger.counts("slow") == {"cancelled": 6}


def test_controller_killed_mid_wave_resumes_exactly_once(fleet):
    fleet.write("many.yaml", "name: many\nenv: {TIME_BUDGET: 0.4}\ngrid:\n  SEED_OFFSET_DUMMY: [1]\n"
                .replace("  SEED_OFFSET_DUMMY: [1]\n", "  MATRIX_LR: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]\n  DEPTH: [1, 2]\n"))
    fleet.json("wave", "many.yaml")
    ledger = fleet.ledger
    fleet.wait_until(lambda: ledger.counts("many").get("done", 0) >= 2)
    pid = int(ledger.get_meta("controller_pid"))
    os.kill(pid, signal.SIGKILL)
    counts = ledger.counts("many")
    assert counts.get("done", 0) < 12, "the kill must land mid-wave"
    board = fleet.json("wait", "many", "--timeout", "120")
    assert len(board["rows"]) == 12 and all(r["state"] == "done" for r in board["rows"])
    # exactly once: one successful attempt per experiment, and no job ran twice on any slot
    for exp in ledger.experiments(wave="many"):
        succeeded = [a for a in ledger.attempts(exp.id) if a.state == "succeeded"]
        assert len(succeeded) == 1, (exp.id, ledger.attempts(exp.id))
    from fleet.backends.slot_queue import SlotQueue

    slots = (fleet.root / ".fleet" / "local").glob("local-*")
    job_names = [j.name for slot in slots for j in SlotQueue(slot).jobs(archived=True)]
    assert len(job_names) == len(set(job_names)) >= 12


def _run_capped_wave(fleet, cap_line: str = "") -> list:
    """Run a 4-experiment wave against a 1.8 GPU-second cap; returns the experiments it held."""
    fleet.write("cap.yaml", f"name: cap\n{cap_line}env: {{TIME_BUDGET: 1}}\ngrid:\n  DEPTH: [1, 2, 3, 4]\n")
    fleet.json("wave", "cap.yaml", "--wait")
    counts = fleet.ledger.counts("cap")
    assert counts.get("held", 0) >= 2 and counts.get("done", 0) >= 1
    return fleet.ledger.experiments(wave="cap", states=[ExperimentState.HELD])


def test_budget_cap_holds_work_until_released(fleet):
    fleet.write("fleet.yaml", "max_gpu_hours: 0.0005\n")  # 1.8 GPU-seconds
    held = _run_capped_wave(fleet)
    assert "max_gpu_hours" in held[0].reason
    released = fleet.json("release")["released"]
    assert set(released) == {e.id for e in held}
    fleet.json("wait", "cap", "--timeout", "60")  # released work runs past the cap
    assert fleet.ledger.counts("cap") == {"done": 4}


def test_wave_budget_cap(fleet):
    held = _run_capped_wave(fleet, "max_gpu_hours: 0.0005\n")
    assert "max_gpu_hours of wave cap" in held[0].reason


def test_status_and_results_never_import_skypilot(fleet):
    fleet.write("grid.yaml", "name: g\nexperiments:\n  - {DEPTH: 1}\n")
    fleet.json("wave", "grid.yaml", "--wait")
    code = (
        "import sys; from fleet.cli.main import main\n"
        "assert main(['status', '--json']) == 0\n"
        "assert main(['results', '--json']) == 0\n"
        "assert main(['results', '--format', 'tsv']) == 0\n"
        "bad = [m for m in sys.modules if m == 'sky' or m.startswith('sky.')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=fleet.root, capture_output=True, text=True,
                          env={**os.environ, "FLEET_ROOT": str(fleet.root)})
    assert proc.returncode == 0, proc.stderr


def test_failing_setup_stops_the_controller_with_the_fix(fleet):
    task = fleet.root / "experiment.yaml"
    task.write_text(task.read_text().replace('echo setup ran >> "${TINYWORK_SETUP_LOG:-/dev/null}"',
                                             'echo "no data here" >&2; exit 7'))
    fleet.write("one.yaml", "name: one\nexperiments:\n  - {DEPTH: 1}\n")
    fleet.json("wave", "one.yaml")
    code, _, err = fleet("wait", "one", "--timeout", "60")
    assert code == 1
    assert "setup failed (exit 7)" in err and "no data here" in err
    # nothing was burnt: the experiment waits, pending, for the fix, however often anyone looks
    code, _, _ = fleet("wait", "one", "--timeout", "60")
    assert code == 1
    for _ in range(3):
        fleet.json("status")  # an agent's polling does not restart a controller stopped for a fix
    assert fleet.ledger.counts("one") == {"pending": 1}
    assert fleet.ledger.experiment("one-001").attempts == 0
    task.write_text(task.read_text().replace('echo "no data here" >&2; exit 7', "true"))
    board = fleet.json("wait", "one", "--timeout", "60")
    assert [r["state"] for r in board["rows"]] == ["done"]


def test_jobs_use_the_fleets_python_without_an_activated_venv(fleet, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # `python` here may be another interpreter, or none
    fleet.write("one.yaml", "name: one\nexperiments:\n  - {DEPTH: 1}\n")
    board = fleet.json("wave", "one.yaml", "--wait")
    assert [r["state"] for r in board["rows"]] == ["done"]


def test_any_fleet_command_resumes_a_dead_controller(fleet):
    fleet.write("slow.yaml", "name: slow\nenv: {TIME_BUDGET: 0.5}\ngrid:\n  DEPTH: [1, 2, 3, 4, 5, 6]\n")
    fleet.json("wave", "slow.yaml")
    ledger = fleet.ledger
    fleet.wait_until(lambda: ledger.get_meta("controller_pid") and ledger.counts("slow").get("running", 0) >= 1)
    os.kill(int(ledger.get_meta("controller_pid")), signal.SIGKILL)
    time.sleep(0.3)
    fleet.json("status")  # a read-only command notices and starts a new controller on its way out
    fleet.wait_until(lambda: ledger.counts("slow").get("done", 0) == 6, timeout=60)


def test_down_is_not_undone_and_wait_says_why(fleet):
    fleet.write("slow.yaml", "name: slow\nenv: {TIME_BUDGET: 1.5}\ngrid:\n  DEPTH: [1, 2, 3, 4, 5, 6]\n")
    fleet.json("wave", "slow.yaml")
    fleet.json("down", "--all", "-y")
    code, _, err = fleet("wait", "slow", "--timeout", "30")
    assert code == 1 and "no clusters are up" in err and "fleet up" in err
    assert fleet.ledger.counts("slow").get("done", 0) == 0
    fleet.json("up")
    board = fleet.json("wait", "slow", "--timeout", "120")
    assert [r["state"] for r in board["rows"]] == ["done"] * 6


def test_flag_values_are_checked(fleet):
    fleet.write("one.yaml", "name: one\nexperiments:\n  - {DEPTH: 1}\n")
    for bad in ("-5", "0", "abc"):
        code, _, err = fleet("wave", "one.yaml", "--timeout", bad)
        assert code == 2 and "--timeout" in err and "positive" in err
    assert fleet.ledger.waves() == []
    code, _, err = fleet("results", "--json", "--format", "tsv")
    assert code == 2 and "--format" in err
    code, _, err = fleet("results", "-o", str(fleet.root / "no" / "such" / "dir.json"))
    assert code == 2 and "cannot write --output" in err


def test_errors_are_json_documents_for_agents(fleet):
    fleet.write("bad.yaml", "name: t\nseeds: -1\n")
    code, out, err = fleet("wave", "bad.yaml", "--json")
    import json as _json
    doc = _json.loads(out)
    assert code == 2 and doc["exit_code"] == 2 and "seeds" in doc["error"] and "seeds" in err
    code, out, _ = fleet("status", "--no-such-flag", "--json")
    assert code == 2 and _json.loads(out)["exit_code"] == 2
