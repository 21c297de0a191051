"""A full disk: never a crash of the experiment, the controller says which path and the fix, nothing lost.

The end-to-end test puts a project on a small tmpfs and fills it while experiments run (where the
platform lets the test mount one: root, or skipped). The others inject ENOSPC where the kernel
really returns it, by pointing a file the fleet writes at /dev/full, so they run everywhere.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from backend_contract import snapshot, wait_terminal
from fleet_cli import TINYWORK, FleetRunner
from test_controller import SUMMARY, ScriptedBackend, _setup
from test_local_backend import make_local

from fleet.backends.base import LogIncomplete
from fleet.backends.slot_queue import END_LINE, SlotQueue
from fleet.errors import DiskProblem
from fleet.types import ExperimentState, JobSpec, parse_job_name

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full to inject ENOSPC")


@needs_dev_full
def test_a_log_that_cannot_be_saved_stops_the_controller_and_is_collected_later(tmp_path):
    backend = ScriptedBackend()
    ledger, controller = _setup(tmp_path, backend)
    exp = ledger.experiments()[0]
    tmp_log = tmp_path / ".fleet" / "logs" / f".{exp.id}.a1.log.tmp"
    tmp_log.symlink_to(DEV_FULL)  # every write to it fails with ENOSPC, as on a full disk
    stopped = controller.run(poll_s=0.0, idle_exit_s=0.0, sleep=lambda s: None)
    saved = tmp_path / ".fleet" / "logs" / f"{exp.id}.a1.log"
    assert f"cannot write {saved}" in stopped and "No space left on device" in stopped and "df -h" in stopped
    assert f"the log of {exp.id}" in stopped
    assert ledger.get_meta("controller_error") == stopped
    assert ledger.experiment(exp.id).state in (ExperimentState.QUEUED, ExperimentState.RUNNING)  # not a crash
    assert ledger.result(exp.id) is None and len(ledger.attempts(exp.id, active=True)) == 1

    tmp_log.unlink()  # space is freed
    assert controller.run(poll_s=0.0, idle_exit_s=0.0, sleep=lambda s: None) == "idle"
    assert ledger.experiment(exp.id).state == ExperimentState.DONE and ledger.result(exp.id).val_bpb == 1.25
    assert backend.submit_calls == 1  # collected again, not run again
    assert (tmp_path / ".fleet" / "logs" / f"{exp.id}.a1.log").read_text() == SUMMARY


@needs_dev_full
def test_a_local_job_whose_log_was_cut_short_says_so(tmp_path):
    backend, workspace, names = make_local(tmp_path, slots=1)
    snap = snapshot(workspace, "v1")
    log = workspace.logs / "exp-1.a1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.symlink_to(DEV_FULL)  # the job's output hits a full disk
    job_id = backend.submit(names[0], JobSpec("exp-1", 1, snap, {}, timeout_s=60))
    wait_terminal(backend, names[0], [job_id])
    log.unlink()
    log.write_text("code v1\n")  # what a full disk leaves: the start of the log, not its end
    with pytest.raises(LogIncomplete, match="cut short"):
        backend.logs(names[0], job_id)
    log.write_text(f"code v1\n\n{END_LINE.format(code=0)}\n")  # a complete log reads as before
    assert "code v1" in backend.logs(names[0], job_id)


class CutShortOnce(ScriptedBackend):
    """The first job's log was cut short by a full disk; the rerun's is whole."""

    def logs(self, cluster, job_id):
        if job_id == 1:
            raise LogIncomplete("the log was cut short")
        return super().logs(cluster, job_id)


def test_a_cut_short_log_is_run_again_at_no_cost_never_a_crash(tmp_path):
    backend = CutShortOnce()
    ledger, controller = _setup(tmp_path, backend)
    exp = ledger.experiments()[0]
    assert controller.run(poll_s=0.0, idle_exit_s=0.0, sleep=lambda s: None) == "idle"
    assert ledger.experiment(exp.id).state == ExperimentState.DONE and ledger.result(exp.id).val_bpb == 1.25
    assert [a.state for a in ledger.attempts(exp.id)] == ["log_lost", "succeeded"]
    assert ledger.experiment(exp.id).attempts == 1  # the lost log did not cost a try


def test_while_the_disk_is_full_a_cut_short_log_stops_the_controller(tmp_path, monkeypatch):
    backend = CutShortOnce()
    ledger, controller = _setup(tmp_path, backend)
    full = DiskProblem(tmp_path / ".fleet", "the fleet's state directory", "only 0 kB free on its disk")
    checks = iter([None, full])  # the cycle's quick check passes; the one after the cut log does not
    monkeypatch.setattr(controller.workspace.__class__, "disk_problem", lambda self, probe=True: next(checks, None))
    stopped = controller.run(poll_s=0.0, idle_exit_s=0.0, sleep=lambda s: None)
    assert stopped == str(full) and "df -h" in stopped
    exp = ledger.experiments()[0]
    assert ledger.result(exp.id) is None and [a.state for a in ledger.attempts(exp.id)] == ["pending"]


# --- end to end on a real full disk ---------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC tests above cover the logic")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_disk_that_fills_up_mid_wave_loses_nothing_and_crashes_nothing(small_disk, monkeypatch, capsys):
    root = small_disk / "project"
    shutil.copytree(TINYWORK, root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("FLEET_ROOT", str(root))
    monkeypatch.setenv("FLEET_LOCAL_ACCELERATORS", "cpu,cpu")
    monkeypatch.delenv("FLEET_BACKEND", raising=False)
    fleet = FleetRunner(root, capsys)
    try:
        fleet.write("four.yaml", "name: four\nenv: {TIME_BUDGET: 1.5}\ngrid:\n  DEPTH: [1, 2, 3, 4]\n")
        fleet.json("wave", "four.yaml")
        ledger = fleet.ledger
        fleet.wait_until(lambda: ledger.counts("four").get("running", 0) == 2)
        filler = _fill(small_disk)  # while two run (and print their results only at the end)

        code, _, err = fleet("wait", "four", "--timeout", "60")
        assert code == 1
        assert str(root / ".fleet") in err and "df -h" in err, err  # names the disk and the fix
        assert ledger.counts("four").get("crash", 0) == 0
        assert str(root / ".fleet") in fleet.json("status")["controller"]["error"]

        # The two that ran finish while the disk is still full: their output cannot be written.
        pids = [int(p.read_text()) for p in (root / ".fleet" / "local").glob("*/jobs/*.claim/pid")]
        assert len(pids) == 2
        fleet.wait_until(lambda: not any(_alive(pid) for pid in pids))
        filler.unlink()  # space is freed
        board = fleet.json("wait", "four", "--timeout", "120")
        assert [r["state"] for r in board["rows"]] == ["done"] * 4
        assert all(r["val_bpb"] is not None for r in board["rows"])
        # the two whose output hit the full disk ran again (they were not recorded as crashes)
        assert sorted(len(ledger.attempts(e.id)) for e in ledger.experiments(wave="four")) == [1, 1, 2, 2]
        ran: dict[str, int] = {}
        for slot in (root / ".fleet" / "local").iterdir():
            for job in SlotQueue(slot).jobs():
                text = Path(job.log).read_text() if Path(job.log).exists() else ""
                if text.rstrip("\n").rsplit("\n", 1)[-1].startswith(END_LINE.format(code="")):
                    ran[parse_job_name(job.name)[0]] = ran.get(parse_job_name(job.name)[0], 0) + 1
        assert ran == {f"four-00{i}": 1 for i in range(1, 5)}  # each ran to its end once
    finally:
        fleet("down", "--all", "-y")  # the fixture's lazy unmount copes with shells still exiting


class AlwaysCutShort(ScriptedBackend):
    def logs(self, cluster, job_id):
        raise LogIncomplete("the log was cut short")


def test_a_log_lost_again_and_again_is_a_crash_that_says_so(tmp_path):
    from fleet.core.controller import MAX_ATTEMPTS

    backend = AlwaysCutShort()
    ledger, controller = _setup(tmp_path, backend)
    assert controller.run(poll_s=0.0, idle_exit_s=0.0, sleep=lambda s: None) == "idle"
    exp = ledger.experiments()[0]
    assert exp.state == ExperimentState.CRASH
    assert f"cut short {MAX_ATTEMPTS} times" in ledger.result(exp.id).reason
    assert backend.submit_calls == MAX_ATTEMPTS
