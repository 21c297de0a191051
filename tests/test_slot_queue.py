"""A slot queue's index of live jobs, its archive of finished ones, and a runner woken by clients.

Big histories are built directly as files (what a slot holds after thousands of jobs), not by
running thousands of jobs.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from fleet.backends import slot_archive
from fleet.backends.local import LocalBackend
from fleet.backends.slot_queue import KEEP_FINISHED, SlotQueue
from fleet.config import FleetConfig, LocalConfig
from fleet.types import JobState
from fleet.workspace import Workspace

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event in ("open", "os.scandir", "os.listdir"):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside `files_opened`


class files_opened:
    """Every path opened or listed inside the block."""

    def __enter__(self) -> list[str]:
        global _opened
        _opened = []
        return _opened

    def __exit__(self, *exc) -> None:
        global _opened
        _opened = None


def record(job_id: int, state: str = "succeeded", name: str | None = None) -> dict:
    return {"job_id": job_id, "name": name or f"job-{job_id:05d}", "state": state, "log": f"/logs/{job_id}.log",
            "submitted_at": 1000.0 + job_id, "started_at": 1000.5 + job_id, "ended_at": 1001.0 + job_id,
            "exit_code": 0 if state == "succeeded" else None}


def write_job(queue: SlotQueue, rec: dict, *, with_identity: bool = True) -> None:
    """A job's files as a runner leaves them (`with_identity=False`: a state without the job's name,
    as slots written before states carried it)."""
    queue.jobs_dir.mkdir(parents=True, exist_ok=True)
    job_id = rec["job_id"]
    queue._spec(job_id).write_text(json.dumps({"name": rec["name"], "script": "true", "cwd": "/", "env": {},
                                               "timeout_s": 60, "log": rec["log"], "submitted_at": rec["submitted_at"]}))
    state = {k: rec[k] for k in ("state", "started_at", "ended_at", "exit_code")}
    if with_identity:
        state.update(name=rec["name"], log=rec["log"], submitted_at=rec["submitted_at"])
    queue._state(job_id).write_text(json.dumps(state))
    if rec["state"] in ("succeeded", "failed"):
        queue._exit(job_id).write_text(f"{rec['exit_code']}\n")
        queue._script(job_id).write_text("true\n")
        queue._claim(job_id).mkdir()
        (queue._claim(job_id) / "pid").write_text("123\n")


def archive_lines(queue: SlotQueue) -> list[int]:
    """The job id of every whole line of the archive, duplicates included."""
    ids = []
    for line in queue.archive.read_text().splitlines():
        try:
            ids.append(json.loads(line)["job_id"])
        except json.JSONDecodeError:
            continue  # a torn line
    return ids


def test_a_slot_with_5000_finished_jobs_answers_queues_from_its_index(tmp_path):
    workspace = Workspace(tmp_path).ensure()
    backend = LocalBackend(workspace, FleetConfig(local=LocalConfig(slots=1)))
    backend.up(["local-01"], ["cpu"])
    queue = SlotQueue(workspace.local / "local-01")
    slot_archive.append(queue.archive, [record(i) for i in range(1, 5001)])
    for i in range(5001, 5001 + KEEP_FINISHED):
        write_job(queue, record(i))
    write_job(queue, record(5001 + KEEP_FINISHED, state="running"))
    with queue._lock("runner.lock"):  # a runner is alive: queues() must not start one
        with files_opened() as opened:
            jobs = backend.queues(["local-01"])["local-01"]
    assert [j.job_id for j in jobs] == list(range(5001, 5002 + KEEP_FINISHED))
    assert jobs[-1].state == JobState.RUNNING
    assert not any("archive" in path for path in opened)
    assert len(opened) <= 2 * (KEEP_FINISHED + 1) + 8  # its live entries and a few fixed files, not 5,000
    # The rare caller that missed a job's end still finds it, with what the runner recorded.
    (found,) = backend.archived_jobs("local-01", ["job-00042"])
    assert (found.job_id, found.state, found.ended_at, found.exit_code) == (42, JobState.SUCCEEDED, 1043.0, 0)
    assert queue.log_path(42) == "/logs/42.log"  # where its log is, from the archive


def test_compaction_archives_every_finished_job_once_and_keeps_the_live_ones(tmp_path):
    queue = SlotQueue(tmp_path / "slot")
    total = 150  # more than two archive batches
    for i in range(1, total + 1):
        write_job(queue, record(i), with_identity=i % 2 == 0)  # old-format states are archived too
    write_job(queue, record(total + 1, state="running"))
    write_job(queue, record(total + 2, state="pending"))
    before = {j.job_id: j for j in queue.jobs()}

    archived = queue.compact()

    assert archived == total - KEEP_FINISHED
    assert archive_lines(queue) == list(range(1, total - KEEP_FINISHED + 1))
    assert queue.job_ids() == list(range(total - KEEP_FINISHED + 1, total + 3))
    everything = {j.job_id: j for j in queue.jobs(archived=True)}
    assert everything == before  # nothing lost, nothing changed
    left = {p.name.split(".")[0] for p in queue.jobs_dir.iterdir()}
    assert left == {f"{i:06d}" for i in queue.job_ids()}  # no scaffolding of archived jobs remains
    assert queue.compact() == 0  # nothing more until more jobs finish


def test_a_compaction_cut_short_is_finished_without_archiving_a_job_twice(tmp_path):
    queue = SlotQueue(tmp_path / "slot")
    for i in range(1, 41):
        write_job(queue, record(i))
    # A compaction that died after appending its batch (and half a line more) but before deleting
    # any file: the jobs are in both places.
    slot_archive.append(queue.archive, [record(i) for i in range(1, 21)])
    with open(queue.archive, "a") as fh:
        fh.write('{"job_id": 21, "name": "job-000')
    queue._state(1).unlink()  # ...and it had removed one job's entry, not yet its other files

    queue.compact(keep=5)

    assert sorted(archive_lines(queue)) == list(range(1, 36))
    assert len(archive_lines(queue)) == 35  # each once
    assert [j.job_id for j in queue.jobs(archived=True)] == list(range(1, 41))
    assert not queue._spec(1).exists()  # the stray files of the half-removed job went too


def test_job_ids_are_never_reused_after_compaction(tmp_path):
    queue = SlotQueue(tmp_path / "slot")
    queue.ensure_runner = lambda: None  # submit without starting a runner
    for i in range(1, 41):
        write_job(queue, record(i))
    queue.compact()
    assert queue.submit("next", "true", "/", {}, 60, str(tmp_path / "x.log")) == 41
    write_job(queue, record(41, name="next"))  # it ran
    queue.compact(keep=0)  # compacted to nothing: the count goes on from the archive
    assert queue.job_ids() == []
    assert queue.submit("after", "true", "/", {}, 60, str(tmp_path / "y.log")) == 42


def test_an_idle_runner_is_woken_by_a_submission(tmp_path, monkeypatch):
    # It would look on its own only every 10 minutes: the second job runs because the submission wakes it.
    monkeypatch.setenv("FLEET_RUNNER_WAKE_S", "600")
    monkeypatch.setenv("FLEET_RUNNER_IDLE_S", "600")
    queue = SlotQueue(tmp_path / "slot")
    first = queue.submit("first", "true", str(tmp_path), {}, 60, str(tmp_path / "1.log"))
    _wait_for(lambda: queue.job(first).state == "succeeded")
    runner = _runner_pid(queue)
    try:
        time.sleep(0.2)  # let it settle into its wait (either way, the wake-up byte waits in the FIFO)
        assert queue.runner_alive()
        second = queue.submit("second", "true", str(tmp_path), {}, 60, str(tmp_path / "2.log"))
        _wait_for(lambda: queue.job(second).state == "succeeded")
        assert _runner_pid(queue) == runner  # the same runner, woken, not a new one
    finally:
        os.kill(runner, signal.SIGKILL)


def test_a_start_delay_holds_the_job_pending_and_a_cancel_meanwhile_stops_it(tmp_path):
    queue = SlotQueue(tmp_path / "slot")
    marks = tmp_path / "ran"
    first = queue.submit("first", "true", str(tmp_path), {}, 60, str(tmp_path / "1.log"), start_delay_s=0.5)
    second = queue.submit("second", f"touch {marks}", str(tmp_path), {}, 60, str(tmp_path / "2.log"),
                          start_delay_s=30)
    _wait_for(lambda: queue.job(first).state == "succeeded")
    job = queue.job(first)
    assert job.started_at - job.submitted_at >= 0.5
    assert queue.job(second).state == "pending"
    queue.cancel([second])
    _wait_for(lambda: (_read_state(queue, second) or {}).get("state") == "cancelled")
    assert not marks.exists()


def _read_state(queue: SlotQueue, job_id: int) -> dict | None:
    try:
        return json.loads(queue._state(job_id).read_text())
    except FileNotFoundError:
        return None


def _runner_pid(queue: SlotQueue) -> int:
    out = os.popen(f"fuser {queue.root / 'runner.lock'} 2>/dev/null").read().split()
    pids = [int(p) for p in out if p.strip().isdigit()]
    assert len(pids) == 1, pids
    return pids[0]


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_archive_readers_skip_torn_and_foreign_lines(tmp_path):
    path = Path(tmp_path / "archive.jsonl")
    slot_archive.append(path, [record(1), record(2)])
    with open(path, "a") as fh:
        fh.write('not json\n["a list"]\n{"job_id": "3", "name": "x"}\n{"job_id": 2, "name": "job-00002", "state": "failed"\n')
    assert [r["job_id"] for r in slot_archive.read_records(path)] == [1, 2]
    slot_archive.append(path, [record(3)])  # after a torn line: starts on a line of its own
    assert [r["job_id"] for r in slot_archive.read_records(path)] == [1, 2, 3]
