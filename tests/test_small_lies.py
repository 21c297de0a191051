"""Small promises the CLI and controller used to break: output files in the format asked for, --limit
everywhere, logs found after the project moved, a validation tier that waits for its own hardware."""
from __future__ import annotations

import json
import shutil

import pytest
from fleet_cli import make_project, teardown
from test_controller import ScriptedBackend

from fleet.backends.base import NotSubmitted
from fleet.config import FleetConfig, Tier
from fleet.core.controller import REFUSED_REST_S, Controller
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import NewExperiment
from fleet.types import ClusterInfo, ClusterState, ExperimentState
from fleet.workspace import Workspace


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys)
    yield runner
    teardown(runner)


def test_results_files_are_in_the_format_asked_for_and_limit_applies_everywhere(fleet):
    fleet.write("four.yaml", "name: four\nenv: {TIME_BUDGET: 0.05}\ngrid:\n  MATRIX_LR: [0.02, 0.03, 0.04, 0.05]\n")
    fleet.json("wave", "four.yaml", "--wait")
    board = fleet.root / "board.txt"
    code, _, err = fleet("results", "--format", "table", "-o", str(board))
    assert code == 0, err
    text = board.read_text()
    assert "leaderboard" in text and "MATRIX_LR=0.04" in text and not text.lstrip().startswith("{")
    code, _, _ = fleet("results", "--format", "json", "-o", str(fleet.root / "board.json"))
    assert code == 0 and len(json.loads((fleet.root / "board.json").read_text())["rows"]) == 4

    best_two = fleet.json("results", "--limit", "2")["rows"]
    assert [r["rank"] for r in best_two] == [1, 2]
    code, tsv, _ = fleet("results", "--format", "tsv", "--limit", "2")
    assert code == 0 and len(tsv.splitlines()) == 1 + 2
    code, table, _ = fleet("results", "--limit", "2")
    # two sections, each cut to 2: the configurations by their mean, then the runs
    assert code == 0 and sum("MATRIX_LR=" in line for line in table.splitlines()) == 2 + 2
    code, _, err = fleet("results", "--limit", "0")
    assert code == 2 and "--limit" in err


def test_logs_are_found_after_the_project_moves(fleet, tmp_path, monkeypatch):
    fleet.write("one.yaml", "name: one\nenv: {TIME_BUDGET: 0.05}\nexperiments:\n  - {DEPTH: 1}\n")
    fleet.json("wave", "one.yaml", "--wait")
    stored = fleet.ledger.attempts("one-001")[0].log_path
    assert not stored.startswith("/") and stored.startswith(".fleet/logs/")  # relative to the project
    fleet("down", "--all", "-y")
    moved = tmp_path / "moved"
    shutil.move(str(fleet.root), moved)
    monkeypatch.chdir(moved)
    monkeypatch.setenv("FLEET_ROOT", str(moved))
    fleet.root = moved
    code, out, _ = fleet("logs", "one-001")
    assert code == 0 and "val_bpb:" in out


class RefusesH200(ScriptedBackend):
    """Two clusters; the H200 refuses the next submission (it is restarting), the H100 takes anything."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse_h200 = 1
        self.placed: list[tuple[str, str]] = []

    def clusters(self):
        return [ClusterInfo("h100", "H100"), ClusterInfo("h200", "H200")]

    def submit(self, cluster, job):
        if cluster == "h200" and self.refuse_h200 > 0:
            self.refuse_h200 -= 1
            raise NotSubmitted("cluster 'h200' is not up (status INIT)")
        self.placed.append((job.experiment_id, cluster))
        return super().submit(cluster, job)

    def queues(self, clusters):
        return {c: [j for j in self.jobs if (j.name.split(".a")[0], c) in self.placed] for c in clusters}


def test_a_validation_experiment_waits_for_its_resting_accelerator(tmp_path):
    """A refusal rests the H200 for a while; the validate tier must wait for it, not spill onto the
    H100 (a validation wave never mixes accelerators)."""
    now = [1000.0]
    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path, clock=lambda: now[0])
    for name, acc in (("h100", "H100"), ("h200", "H200")):
        ledger.upsert_cluster(name, "scripted", acc, ClusterState.UP)
    ledger.add_wave("v", "validate", {"timeout_s": 60}, "snap", [NewExperiment({}, "k", s, "", "") for s in range(2)])
    config = FleetConfig(tiers={"validate": Tier(accelerators=["H200"], seeds=2)})
    backend = RefusesH200()
    controller = Controller(workspace, ledger, backend, config, clock=lambda: now[0])
    controller.cycle()  # the H200 refuses the first; the H200 now rests
    controller.cycle()
    assert backend.placed == [("v-002", "h200")]
    assert ledger.experiment("v-001").state == ExperimentState.PENDING  # waiting, not on the H100
    now[0] += REFUSED_REST_S + 1
    for _ in range(3):
        controller.cycle()
    assert {c for _, c in backend.placed} == {"h200"}
    assert ledger.counts("v") == {"done": 2}


def test_a_failed_wait_after_queueing_says_the_wave_is_queued(fleet):
    task = fleet.root / "experiment.yaml"
    task.write_text(task.read_text().replace('echo setup ran >> "${TINYWORK_SETUP_LOG:-/dev/null}"',
                                             'echo "no data here" >&2; exit 7'))
    fleet.write("one.yaml", "name: one\nexperiments:\n  - {DEPTH: 1}\n")
    code, _, err = fleet("wave", "one.yaml", "--wait")
    assert code == 1
    assert "wave one is queued" in err and "Do not submit it again" in err and "`fleet wait one`" in err
    assert "setup failed (exit 7)" in err  # and why waiting failed
    assert [w.id for w in fleet.ledger.waves()] == ["one"]
