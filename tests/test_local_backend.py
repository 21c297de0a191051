"""The local backend: the shared contract, plus what only a local machine can show."""
from __future__ import annotations

import json
import os
import signal
import time

from backend_contract import (
    BackendContract,
    snapshot,
    wait_terminal,
    write_contract_project,
)

from fleet.backends.local import LocalBackend
from fleet.config import FleetConfig, LocalConfig
from fleet.types import JobSpec, JobState
from fleet.workspace import Workspace


def make_local(tmp_path, slots=2):
    write_contract_project(tmp_path)
    workspace = Workspace(tmp_path).ensure()
    backend = LocalBackend(workspace, FleetConfig(local=LocalConfig(slots=slots)))
    names = [f"local-{i + 1:02d}" for i in range(slots)]
    backend.up(names, ["cpu"] * slots)
    return backend, workspace, names


class TestLocalContract(BackendContract):
    def backend_setup(self, tmp_path):
        return make_local(tmp_path)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (containers' PID 1 may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_process_group(tmp_path):
    backend, workspace, names = make_local(tmp_path, slots=1)
    # The job starts a grandchild that would outlive a naive kill of the job's shell.
    (tmp_path / "work" / "job.sh").write_text("sleep 300 &\necho child $!\nwait\n")
    snap = snapshot(workspace, "v1")
    job_id = backend.submit(names[0], JobSpec("exp-t", 1, snap, {}, timeout_s=1.0))
    job = wait_terminal(backend, names[0], [job_id], timeout=20)[job_id]
    assert job.state == JobState.TIMEOUT
    child = int(backend.logs(names[0], job_id).split("child ")[1].split()[0])
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_jobs_survive_the_runner_being_killed(tmp_path):
    backend, workspace, names = make_local(tmp_path, slots=1)
    snap = snapshot(workspace, "v1")
    first = backend.submit(names[0], JobSpec("exp-1", 1, snap, {"SLEEP": "1.0"}, timeout_s=60))
    second = backend.submit(names[0], JobSpec("exp-2", 1, snap, {}, timeout_s=60))
    runner_lock = workspace.local / names[0] / "runner.lock"
    deadline = time.monotonic() + 10
    while not any(j.state == JobState.RUNNING for j in backend.queues(names)[names[0]]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Kill the runner (not the job): the job keeps going, a new runner re-adopts it and goes on.
    out = os.popen(f"fuser {runner_lock} 2>/dev/null").read().split()
    runner_pids = [int(p) for p in out if p.strip().isdigit()]
    for pid in runner_pids:
        os.kill(pid, signal.SIGKILL)
    jobs = wait_terminal(backend, names[0], [first, second], timeout=30)
    assert jobs[first].state == JobState.SUCCEEDED
    assert jobs[second].state == JobState.SUCCEEDED
    assert "code v1" in backend.logs(names[0], first)


def test_a_runner_dying_right_after_starting_a_job_does_not_start_it_twice(tmp_path):
    from fleet.backends.slot_queue import SlotQueue
    from fleet.backends.slot_runner import SlotRunner

    marks = tmp_path / "starts.txt"
    queue = SlotQueue(tmp_path / "slot")
    queue.ensure_runner = lambda: None  # submit without starting a runner
    queue.submit("exp-001.a1", f"echo start $$ >> {marks}; sleep 1", str(tmp_path), {}, 60, str(tmp_path / "job.log"))
    child = os.fork()
    if child == 0:  # a runner killed (OOM, kill -9) after it started the job, before it recorded that
        runner = SlotRunner(tmp_path / "slot")
        real_start = runner._start

        def start_then_die(job_id, spec):
            real_start(job_id, spec)
            os._exit(137)

        runner._start = start_then_die
        runner.run_forever()
        os._exit(0)
    os.waitpid(child, 0)
    SlotQueue(tmp_path / "slot").ensure_runner()  # what the next queues() call does
    deadline = time.monotonic() + 20
    while SlotQueue(tmp_path / "slot").jobs()[0].state != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(marks.read_text().split("start")) - 1 == 1


def test_a_second_copy_started_before_the_first_claimed_the_job_follows_the_first(tmp_path):
    """A runner died between starting a job and recording it, and the next runner looked for the
    job's claim a moment before the first copy made it: it starts a second copy, which finds the
    job claimed and steps aside. The runner must follow the first copy to its end, not call the
    job failed (exit 97) while the first copy runs unsupervised."""
    from fleet.backends.slot_queue import CLAIM_LOST, END_LINE, SlotQueue
    from fleet.backends.slot_runner import SlotRunner

    marks = tmp_path / "starts.txt"
    queue = SlotQueue(tmp_path / "slot")
    queue.ensure_runner = lambda: None
    job_id = queue.submit("exp-001.a1", f"echo start >> {marks}; sleep 1; echo finished", str(tmp_path),
                          {"PATH": os.environ["PATH"]}, 60, str(tmp_path / "job.log"))
    child = os.fork()
    if child == 0:  # the first runner: starts the job, then dies before recording it
        runner = SlotRunner(tmp_path / "slot")
        runner._start(job_id, json.loads(runner._spec(job_id).read_text()))
        os._exit(137)
    os.waitpid(child, 0)
    claim = tmp_path / "slot" / "jobs" / f"{job_id:06d}.claim" / "pid"
    deadline = time.monotonic() + 10
    while not claim.exists():  # the first copy has claimed the job
        assert time.monotonic() < deadline
        time.sleep(0.02)

    class LookedTooEarly(SlotRunner):
        def _claimed(self, job_id: int) -> bool:
            return False  # its check ran just before the first copy's mkdir

    LookedTooEarly(tmp_path / "slot")._run(job_id)
    job = SlotQueue(tmp_path / "slot").job(job_id)
    assert (job.state, job.exit_code) == ("succeeded", 0), job
    assert job.exit_code != CLAIM_LOST
    assert marks.read_text() == "start\n"  # the job's body ran once
    log = (tmp_path / "job.log").read_text()
    assert log.count("finished") == 1 and log.rstrip().endswith(END_LINE.format(code=0))


def test_a_torn_down_slots_runner_exits_at_once_and_the_slot_works_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_RUNNER_IDLE_S", "600")  # without the tear-down it would idle for ten minutes
    backend, workspace, names = make_local(tmp_path, slots=1)
    from fleet.backends.slot_queue import SlotQueue

    queue = SlotQueue(workspace.local / names[0])
    snap = snapshot(workspace, "v1")
    job_id = backend.submit(names[0], JobSpec("exp-1", 1, snap, {"SLEEP": "30"}, timeout_s=60))
    deadline = time.monotonic() + 10
    while not any(j.state == JobState.RUNNING for j in backend.queues(names)[names[0]]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    backend.down(names)
    deadline = time.monotonic() + 15
    while queue.runner_alive():
        assert time.monotonic() < deadline, "the runner outlived the tear-down"
        time.sleep(0.05)
    assert queue.job(job_id).state == "cancelled"
    backend.up(names, ["cpu"])  # up again: a new job runs (the tear-down's mark does not stop it)
    again = backend.submit(names[0], JobSpec("exp-2", 1, snap, {}, timeout_s=60))
    assert wait_terminal(backend, names[0], [again], timeout=30)[again].state == JobState.SUCCEEDED
