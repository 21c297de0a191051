"""Crash the controller at every point of a small wave's life; each time, the next one finishes it exactly once.

The points are the ledger's writes, two each (just before a transaction commits, just after it),
so every gap between two writes is hit, with whatever backend call or file I/O happens in it
(`fleet.core.faults`). For each point N, a fresh project runs the wave under a controller armed
to fail at point N, either with an exception (in this process) or with SIGKILL (a controller
process started with FLEET_FAULT_AT=N:kill). Then `fleet wait` must return, having started a new
controller, with every experiment finished exactly once with its true result: the same as in a
run without a crash, one job per experiment that ran to its end, one result row each.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fleet_cli import TINYWORK, FleetRunner

from fleet.backends.slot_queue import END_LINE, SlotQueue
from fleet.core import faults
from fleet.core.daemon import controller_lock, run_controller
from fleet.core.ledger import Ledger
from fleet.types import parse_job_name
from fleet.workspace import Workspace

# Two that finish (different true results) and one whose true result is a crash, on two slots:
# a job runs, one waits behind it, results are collected while others still run.
WAVE = """\
name: life
env: {TIME_BUDGET: 0.2}
experiments:
  - {MATRIX_LR: 0.02}
  - {MATRIX_LR: 0.05}
  - {CRASH: 1}
"""
MAX_POINTS = 80  # a bound on the enumeration, far above the ~20-30 points of this wave's life


class Project:
    def __init__(self, root: Path, monkeypatch, capsys) -> None:
        shutil.copytree(TINYWORK, root)
        self.root = root
        self.capsys = capsys
        self.cli = FleetRunner(root, capsys)  # (code, stdout, stderr) of one `fleet` command
        monkeypatch.chdir(root)
        monkeypatch.setenv("FLEET_ROOT", str(root))
        (root / "life.yaml").write_text(WAVE)
        with controller_lock(Workspace(root)) as got:  # submit only: the test starts the controller
            assert got
            assert self.cli("wave", "life.yaml", "--json")[0] == 0

    def outcome(self) -> dict[str, tuple[str, float | None]]:
        ledger = Ledger(Workspace(self.root).ledger_path)
        results = ledger.results()
        return {e.id: (e.state.value, results[e.id].val_bpb if e.id in results else None)
                for e in ledger.experiments()}

    def assert_finished_exactly_once(self, truth: dict[str, tuple[str, float | None]], where: str) -> None:
        ledger = Ledger(Workspace(self.root).ledger_path)
        assert self.outcome() == truth, where
        assert len(ledger.results()) == len(truth), where
        ran: dict[str, int] = {}
        for slot in (self.root / ".fleet" / "local").iterdir():
            for job in SlotQueue(slot).jobs():
                text = Path(job.log).read_text() if Path(job.log).exists() else ""
                if text.rstrip("\n").rsplit("\n", 1)[-1].startswith(END_LINE.format(code="")):
                    exp = parse_job_name(job.name)[0]
                    ran[exp] = ran.get(exp, 0) + 1
        assert ran == {exp: 1 for exp in truth}, f"{where}: jobs that ran to their end: {ran}"
        for exp in truth:
            ended = [a.state for a in ledger.attempts(exp) if a.state in ("succeeded", "failed")]
            assert len(ended) == 1, f"{where}: {exp} attempts {ledger.attempts(exp)}"

    def wait(self, where: str) -> None:
        code, _, err = self.cli("wait", "--timeout", "120", "--json")
        assert code == 0, f"{where}: fleet wait failed: {err}"


@pytest.fixture
def project(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", "cpu,cpu")
    monkeypatch.delenv("FLEET_BACKEND", raising=False)
    monkeypatch.delenv(faults.ENV, raising=False)
    made: list[Project] = []

    def make(name: str) -> Project:
        made.append(Project(tmp_path / name, monkeypatch, capsys))
        return made[-1]

    yield make
    for p in made:
        p.cli("down", "--all", "-y")


def reference(project) -> dict[str, tuple[str, float | None]]:
    """The wave's true results: one life with no crash."""
    clean = project("clean")
    assert run_controller(Workspace(clean.root)) == 0
    truth = clean.outcome()
    assert sorted(state for state, _ in truth.values()) == ["crash", "done", "done"]
    clean.assert_finished_exactly_once(truth, "without a crash")
    return truth


def test_an_exception_at_every_point_of_a_waves_life(project):
    truth = reference(project)
    covered = 0
    for at in range(1, MAX_POINTS + 1):
        p = project(f"raise-{at}")
        faults.arm(at, "raise")
        try:
            run_controller(Workspace(p.root))
        except faults.InjectedFault:
            pass  # raised where the controller's own loop does not catch it (while it starts)
        finally:
            fired = faults.passed() >= at
            faults.disarm()
        if not fired:  # the life had fewer points: all of them are covered
            p.assert_finished_exactly_once(truth, "past the last point")
            break
        p.wait(f"exception at point {at}")
        p.assert_finished_exactly_once(truth, f"exception at point {at}")
        covered += 1
    else:
        pytest.fail(f"the wave's life has more than {MAX_POINTS} points")
    print(f"\ncrash points covered (exception): {covered}")
    assert covered >= 12  # a wave of three never has fewer: start, submit, run, finish each


def test_a_sigkill_at_every_point_of_a_waves_life(project):
    truth = reference(project)
    covered = 0
    for at in range(1, MAX_POINTS + 1):
        p = project(f"kill-{at}")
        proc = subprocess.run([sys.executable, "-m", "fleet.core.daemon", str(p.root)], cwd=p.root,
                              env={**os.environ, faults.ENV: f"{at}:kill"}, capture_output=True, timeout=120)
        if proc.returncode != -signal.SIGKILL:  # the life had fewer points: all of them are covered
            assert proc.returncode == 0, proc.stderr.decode()
            p.assert_finished_exactly_once(truth, "past the last point")
            break
        p.wait(f"SIGKILL at point {at}")
        p.assert_finished_exactly_once(truth, f"SIGKILL at point {at}")
        covered += 1
    else:
        pytest.fail(f"the wave's life has more than {MAX_POINTS} points")
    print(f"\ncrash points covered (SIGKILL): {covered}")
    assert covered >= 12
