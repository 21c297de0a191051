"""End to end through the `fleet` CLI on the SkyPilot backend, over the fake SDK (FLEET_SKY_SDK).

The background controller is a separate process, so it reaches the fake through the same
environment variable; the fake keeps its clusters on disk and runs their jobs as processes.
"""
from __future__ import annotations

import os
import signal

import pytest
from fleet_cli import make_project, teardown

from fleet.core.fleet_size import launches_under_way
from fleet.testing import fake_sky

WAVE = "name: big\nenv: {TIME_BUDGET: 0.3}\ngrid:\n  MATRIX_LR: [0.01, 0.02, 0.03, 0.04, 0.05]\n  DEPTH: [1, 2, 3, 4, 5, 6, 7, 8]\n"


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys)
    monkeypatch.setenv("FLEET_SKY_SDK", "fleet.testing.fake_sky")
    monkeypatch.setenv("FAKE_SKY_HOME", str(tmp_path / "fake-sky"))
    monkeypatch.setenv("FLEET_BACKEND", "sky")
    yield runner
    teardown(runner)


def _job_names(tmp_path) -> list[str]:
    from fleet.backends.slot_queue import SlotQueue

    return [j.name for q in (tmp_path / "fake-sky").glob("clusters/*/queue") for j in SlotQueue(q).jobs(archived=True)]


def test_wave_survives_lost_clusters_and_a_killed_controller(fleet, tmp_path):
    up = fleet.json("up", "--clusters", "8", "--accelerators", "H100:1,H200:1")
    assert sorted(c["accelerator"] for c in up["clusters"]) == ["H100"] * 4 + ["H200"] * 4
    fleet.write("big.yaml", WAVE)
    fleet.json("wave", "big.yaml")
    ledger = fleet.ledger
    fleet.wait_until(lambda: ledger.counts("big").get("done", 0) >= 6)
    # two clusters vanish mid-wave (preempted, evicted) ...
    fake_sky.kill_cluster("gpu-02")
    fake_sky.kill_cluster("gpu-07")
    fleet.wait_until(lambda: ledger.counts("big").get("done", 0) >= 14)
    # ... and the controller is killed with -9
    os.kill(int(ledger.get_meta("controller_pid")), signal.SIGKILL)
    assert ledger.counts("big").get("done", 0) < 40, "the kill must land mid-wave"
    board = fleet.json("wait", "big", "--timeout", "240")
    assert len(board["rows"]) == 40 and all(r["state"] == "done" for r in board["rows"])
    lost = {c.name for c in ledger.clusters() if c.state.value == "lost"}
    assert lost == {"gpu-02", "gpu-07"}
    # the fleet keeps the size `fleet up` recorded: each lost cluster was replaced while work was queued
    fleet.wait_until(lambda: not launches_under_way(ledger), timeout=120)
    replacements = {c.name: c.replaces for c in ledger.clusters() if c.replaces}
    assert sorted(replacements.values()) == ["gpu-02", "gpu-07"], replacements
    for exp in ledger.experiments(wave="big"):
        succeeded = [a for a in ledger.attempts(exp.id) if a.state == "succeeded"]
        assert len(succeeded) == 1, (exp.id, ledger.attempts(exp.id))
    names = _job_names(tmp_path)
    setups = [n for n in names if n == "fleet-setup"]  # each cluster's launch ran its setup as job 1
    assert len(setups) == 8, setups  # the 6 clusters that survived and the 2 replacements
    experiments = [n for n in names if n != "fleet-setup"]
    assert len(experiments) == len(set(experiments)), "a job was submitted twice"
    # status reads the ledger only, whatever the backend
    status = fleet.json("status")
    assert status["backend"] == "sky" and len(status["clusters"]) == 10
    assert {c["name"]: c["replaces"] for c in status["clusters"] if c["replaces"]} == replacements
    assert status["fleet_size"]["target"] == 8 and status["fleet_size"]["live"] == 8
