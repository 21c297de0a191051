"""Kill the controller (SIGKILL) at every point of a small search wave's life; each time the next one finishes
it with the same trials, each asked once and run once.

The points are the ledger's writes, two each (just before and just after each commit; `fleet.core.faults`),
so every gap is hit, including the one between asking the study for a configuration (Optuna's journal)
and writing it into the trial's planned run (`fill_trial`), and the one between a trial's last result and
telling the study (`mark_told`). The sampler is `random`, whose asks depend only
on the wave's seed and the trial number, so every life must end exactly as a life without a crash does:
the same configurations with the same results, two trials in the study, one job per run that ran to its end.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fleet_cli import SEARCHWORK, FleetRunner

from fleet.backends.slot_queue import END_LINE, SlotQueue
from fleet.core import faults
from fleet.cli.context import CONTROLLER_HOOKS
from fleet.core.daemon import controller_lock
from fleet.core.ledger import Ledger
from fleet.core.wave_spec import SearchSpec
from fleet.research.study import WaveStudy, study_path
from fleet.types import parse_job_name
from fleet.workspace import Workspace

WAVE = """\
name: s
env: {TIME_BUDGET: 0.1}
search:
  trials: 2
  sampler: random
  seed: 7
  space:
    MATRIX_LR: {low: 0.01, high: 0.1, log: true}
    DEPTH: {choices: [2, 4]}
"""
MAX_POINTS = 60  # far above the ~20 points of this wave's life


class Project:
    def __init__(self, root: Path, capsys) -> None:
        shutil.copytree(SEARCHWORK, root)
        self.root = root
        self.capsys = capsys
        self.cli = FleetRunner(root, capsys)  # (code, stdout, stderr) of one `fleet` command
        os.chdir(root)
        os.environ["FLEET_ROOT"] = str(root)
        (root / "s.yaml").write_text(WAVE)
        with controller_lock(Workspace(root)) as got:  # submit only: the test starts the controller
            assert got
            assert self.cli("wave", "s.yaml", "--json")[0] == 0

    def controller(self, fault: str | None) -> int:
        env = {**os.environ, **({faults.ENV: fault} if fault else {})}
        command = [sys.executable, "-m", "fleet.core.daemon", str(self.root), *(f"--hook={h}" for h in CONTROLLER_HOOKS)]
        proc = subprocess.run(command, cwd=self.root, env=env, capture_output=True, timeout=120)
        return proc.returncode

    def outcome(self) -> dict[str, tuple]:
        ledger = Ledger(Workspace(self.root).ledger_path)
        results = ledger.results()
        return {e.id: (e.trial, e.state.value, e.config.get("MATRIX_LR"), e.config.get("DEPTH"),
                       results[e.id].val_bpb if e.id in results else None) for e in ledger.experiments()}

    def assert_same_life(self, truth: dict[str, tuple], where: str) -> None:
        assert self.outcome() == truth, where
        study = WaveStudy(study_path(Workspace(self.root).state, "s"), "s", SearchSpec(2, {}))
        trials = study.trials()
        assert [(t.number, t.state) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")], f"{where}: {trials}"
        assert Ledger(Workspace(self.root).ledger_path).untold_trials() == 0, where
        ran: dict[str, int] = {}
        for slot in (self.root / ".fleet" / "local").iterdir():
            for job in SlotQueue(slot).jobs():
                text = Path(job.log).read_text() if Path(job.log).exists() else ""
                if text.rstrip("\n").rsplit("\n", 1)[-1].startswith(END_LINE.format(code="")):
                    exp = parse_job_name(job.name)[0]
                    ran[exp] = ran.get(exp, 0) + 1
        assert ran == {exp: 1 for exp in truth}, f"{where}: jobs that ran to their end: {ran}"


@pytest.fixture
def project(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", "cpu,cpu")
    monkeypatch.delenv("FLEET_BACKEND", raising=False)
    monkeypatch.delenv(faults.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLEET_ROOT", str(tmp_path))
    made: list[Project] = []

    def make(name: str) -> Project:
        made.append(Project(tmp_path / name, capsys))
        return made[-1]

    yield make
    for p in made:
        os.chdir(p.root)
        os.environ["FLEET_ROOT"] = str(p.root)
        p.cli("down", "--all", "-y")


def test_a_sigkill_at_every_point_of_a_search_waves_life(project):
    clean = project("clean")
    assert clean.controller(None) == 0
    truth = clean.outcome()
    assert sorted(t for t, *_ in truth.values()) == [0, 1] and {s for _, s, *_ in truth.values()} == {"done"}
    clean.assert_same_life(truth, "without a crash")
    covered = 0
    for at in range(1, MAX_POINTS + 1):
        p = project(f"kill-{at}")
        code = p.controller(f"{at}:kill")
        if code != -signal.SIGKILL:  # the life had fewer points: all of them are covered
            assert code == 0
            p.assert_same_life(truth, "past the last point")
            break
        code, _, err = p.cli("wait", "--timeout", "120", "--json")  # starts a new controller, which resumes
        assert code == 0, f"SIGKILL at point {at}: fleet wait failed: {err}"
        p.assert_same_life(truth, f"SIGKILL at point {at}")
        covered += 1
    else:
        pytest.fail(f"the wave's life has more than {MAX_POINTS} points")
    print(f"\ncrash points covered (SIGKILL, search wave): {covered}")
    assert covered >= 10  # two trials: each filled, started, submitted, run and finished
