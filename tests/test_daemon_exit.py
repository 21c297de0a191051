"""Every controller exit records why; a controller killed without a word is noticed by the next one."""
from __future__ import annotations

import json
import logging

from fleet_cli import TINYWORK

from fleet.core.backup import BACKUP_EVERY_S, backups
from fleet.config import load_config
from fleet.core.daemon import bring_up_local, run_controller
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import NewExperiment
from fleet.workspace import Workspace


def _project(tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "project"
    shutil.copytree(TINYWORK, root)
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", "cpu")
    workspace = Workspace(root).ensure()
    return workspace, Ledger(workspace.ledger_path)


def test_a_stop_records_its_reason(tmp_path, monkeypatch):
    workspace, ledger = _project(tmp_path, monkeypatch)
    ledger.add_wave("w", "screen", {}, "s", [NewExperiment({}, "k", 0, "", "")])  # work, but no cluster up
    assert run_controller(workspace) == 1
    exit_record = json.loads(ledger.get_meta("controller_exit"))
    assert exit_record["reason"].startswith("stopped: no clusters are up")
    assert str(exit_record["pid"]) == ledger.get_meta("controller_pid")


def test_idle_records_its_reason_and_a_silent_death_is_noticed(tmp_path, monkeypatch, caplog):
    workspace, ledger = _project(tmp_path, monkeypatch)
    bring_up_local(workspace, ledger, load_config(workspace.root))
    ledger.set_meta("controller_pid", "999999")  # a controller that died by SIGKILL: no exit recorded
    with caplog.at_level(logging.WARNING, logger="fleet.core.daemon"):
        assert run_controller(workspace) == 0
    assert "(pid 999999) exited without saying why" in caplog.text
    assert json.loads(ledger.get_meta("controller_exit"))["reason"] == "idle: no work left"


def test_the_controller_backs_the_ledger_up_when_it_starts_and_every_interval(tmp_path):
    from test_controller import ScriptedBackend, _setup

    now = [1_000_000.0]
    ledger, controller = _setup(tmp_path, ScriptedBackend(), clock=lambda: now[0])
    sleeps = []

    def sleep(seconds: float) -> None:  # each poll of the loop takes a third of the interval
        sleeps.append(seconds)
        now[0] += BACKUP_EVERY_S / 3

    assert controller.run(poll_s=0.2, idle_exit_s=BACKUP_EVERY_S, sleep=sleep) == "idle"
    elapsed = now[0] - 1_000_000.0
    assert len(backups(ledger.path)) == min(3, 1 + int(elapsed // BACKUP_EVERY_S))


def test_a_controller_that_cannot_load_its_hooks_says_so_and_the_wait_ends(tmp_path, monkeypatch, capsys):
    """A controller that dies before its first cycle (here: a hook's module missing, as when a dependency
    is not installed) records why; `fleet wave --wait` reports it instead of starting controller after
    controller until its timeout."""
    from fleet_cli import make_project, teardown

    from fleet.cli import wait_cmds, wave_cmds

    runner = make_project(tmp_path, monkeypatch, capsys)
    try:
        broken = ("fleet_no_such_module:hook",)
        monkeypatch.setattr(wave_cmds, "CONTROLLER_HOOKS", broken)
        monkeypatch.setattr(wait_cmds, "CONTROLLER_HOOKS", broken)
        runner.write("w.yaml", "name: w\nexperiments:\n  - {description: baseline}\n")
        code, _, err = runner("wave", "w.yaml", "--wait", "--timeout", "120")
        assert code != 0
        assert "the controller stopped: cannot load the controller's hooks" in err, err
        assert "fleet_no_such_module" in err and "gave up waiting" not in err
    finally:
        teardown(runner)
