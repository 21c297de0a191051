"""A durable FIFO job queue for one slot, with `sky exec` semantics, kept in a directory.

The queue is files (one JSON spec and one JSON state per job) plus a detached runner process
that starts jobs one at a time in submission order. Everything survives the death of the process
that submitted the jobs: the runner has its own session, each job has its own process group and
writes its exit status to a file, and a restarted runner re-adopts a job that is still running.

This module and the runner's (`slot_runner.py`) import only the standard library, so the runner
starts in milliseconds.

    <slot>/jobs/000001.json    spec: name, script, cwd, env, timeout_s, log (mode 0600: env may hold secrets)
    <slot>/jobs/000001.state   state: pending|running|succeeded|failed|timeout|cancelled|lost, with the
                               job's name, log and times (all that `jobs()` reads), pid
    <slot>/jobs/000001.exit    the job's exit status, written by the job's own shell
    <slot>/jobs/000001.claim/  made by the job's own shell before it runs (mkdir is atomic): one copy runs
    <slot>/jobs/000001.cancel  a cancel request
    <slot>/archive.jsonl       finished jobs compacted out of jobs/ (see slot_archive.py)
    <slot>/wake                a FIFO: a client writes a byte after each change, the idle runner waits on it
    <slot>/runner.lock         held by the live runner

Work per call follows what is live, not the slot's history: `jobs/` holds the queued and running
jobs and the last KEEP_FINISHED finished ones, and the runner moves older finished jobs into the
archive (their logs stay where their specs put them). An idle runner sleeps until a client wakes
it, instead of re-reading state files many times a second.

A job runs with exactly the environment in its spec (the backend decides what goes in it), and its
log ends with END_LINE, written by its shell after the job: a log without it was cut short.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleet.backends import slot_archive

TERMINAL = ("succeeded", "failed", "timeout", "cancelled", "lost")  # lost: vanished without an exit status
END_LINE = "[fleet] exit code {code}"  # the last line of every job's log, written after the job ends
CLAIM_LOST = 97  # a second copy of a job exits with this: another copy claimed the job first
KILL_GRACE_S = 5.0
IDLE_EXIT_S = float(os.environ.get("FLEET_RUNNER_IDLE_S", "120"))
# An idle runner also looks on its own this often, in case a client died between writing a job
# and waking it; normally a client's wake-up byte starts the job at once.
WAKE_S = float(os.environ.get("FLEET_RUNNER_WAKE_S", "1.0"))
POLL_S = 0.02  # re-adopting a job another runner started: how often to look for its pid and exit
STOP = "stop"  # a file: the slot was torn down; its runner exits as soon as it has nothing to run
KEEP_FINISHED = 16  # finished jobs left in jobs/: a reader that polls sees each one finish
COMPACT_AT = 2 * KEEP_FINISHED  # jobs/ entries past which the runner compacts (amortized: many at once)


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    name: str
    state: str
    log: str
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None


def _write_json(path: Path, data: dict) -> None:
    """Atomically, readable by the owner only (a spec's env may hold a token the user passed through)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_new(path: Path, data: dict) -> None:
    """A file nobody reads before the caller's next step, readable by the owner only (no rename:
    cheaper than `_write_json` for a spec, which a reader opens only once the job's state exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _queued(job_id: int, record: dict, state: str | None = None) -> QueuedJob:
    return QueuedJob(job_id, record["name"], state or record["state"], record["log"], record["submitted_at"],
                     record.get("started_at"), record.get("ended_at"), record.get("exit_code"))


@contextlib.contextmanager
def try_flock(path: Path, blocking: bool = False):
    """Hold an exclusive flock on `path` for the block; yields False if another process holds it.

    The kernel drops the lock when its holder dies, even by kill -9: that is what makes these
    locks safe for "is a runner/controller alive?".
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


class SlotQueue:
    """The client side: submit, list, cancel, kill. Safe to use from many processes at once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.archive = self.root / "archive.jsonl"

    # --- paths -------------------------------------------------------------------------------
    def _spec(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id:06d}.json"

    def _state(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id:06d}.state"

    def _exit(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id:06d}.exit"

    def _cancel(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id:06d}.cancel"

    def _claim(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id:06d}.claim"

    def _script(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id:06d}.sh"

    def _lock(self, name: str = "queue.lock", blocking: bool = True):
        return try_flock(self.root / name, blocking)

    # --- the index of live jobs --------------------------------------------------------------
    def job_ids(self) -> list[int]:
        """Ids of the jobs in jobs/: queued, running and recently finished (a job's state file is its entry)."""
        try:
            names = os.listdir(self.jobs_dir)
        except (FileNotFoundError, NotADirectoryError):  # no queue here (yet)
            return []
        return sorted(int(n[:-6]) for n in names if n.endswith(".state") and n[:-6].isdigit())

    def _record(self, job_id: int) -> dict | None:
        """A job's state with its name, log and submission time; None once it left jobs/."""
        state = _read_json(self._state(job_id))
        if state is None:
            return None
        if "name" not in state:  # a state written without the job's identity (an entry added by hand)
            spec = _read_json(self._spec(job_id))
            if spec is None:
                return None
            state = {"name": spec["name"], "log": spec["log"], "submitted_at": spec["submitted_at"], **state}
        return {"job_id": job_id, **state}

    def _live(self, job_id: int) -> QueuedJob | None:
        record = self._record(job_id)
        if record is None:
            return None
        state = record["state"]
        if state == "pending" and self._cancel(job_id).exists():
            state = "cancelled"
        return _queued(job_id, record, state)

    def _allocate_id(self) -> int:
        """The next job id (call with the queue lock held).

        jobs/ always holds the newest job (compaction keeps the newest finished ones), so ids go on
        from there; only a slot compacted to nothing resumes after the highest id in its archive.
        """
        ids = self.job_ids()
        return (ids[-1] if ids else slot_archive.last_id(self.archive)) + 1

    def peek_next_id(self) -> int:
        """The id the next submission will get, if no other comes first."""
        return self._allocate_id()

    # --- client API --------------------------------------------------------------------------
    def submit(self, name: str, script: str, cwd: str, env: dict[str, str], timeout_s: float, log: str,
               start_delay_s: float = 0.0, start: bool = True) -> int:
        """Queue a job that runs `script` in `cwd` with exactly `env` (nothing inherited); `start_delay_s` makes the runner wait that long before starting it (a modelled
        scheduler gap, as `fleet.testing.fake_sky` uses for SkyPilot's). With `start=False` the caller
        calls `ensure_runner()` itself, once after a batch."""
        self.jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / STOP).unlink(missing_ok=True)  # the slot is in use again
        with self._lock():
            job_id = self._allocate_id()
            now = time.time()
            spec = {"name": name, "script": script, "cwd": cwd, "env": env, "timeout_s": timeout_s,
                    "log": log, "submitted_at": now}
            if start_delay_s > 0:
                spec["start_delay_s"] = start_delay_s
            _write_new(self._spec(job_id), spec)  # nobody reads it before the state exists
            # The state file makes the job visible: written last, so a reader never sees half a job.
            _write_json(self._state(job_id), {"state": "pending", "name": name, "log": log, "submitted_at": now})
        if start:
            self.ensure_runner()
        return job_id

    def jobs(self, *, archived: bool = False) -> list[QueuedJob]:
        """The live jobs (queued, running, recently finished), oldest first; every job ever with `archived`."""
        live = [job for job in map(self._live, self.job_ids()) if job is not None]
        if not archived:
            return live
        seen = {job.job_id for job in live}
        old = [_queued(r["job_id"], r) for r in slot_archive.read_records(self.archive) if r["job_id"] not in seen]
        return sorted(old + live, key=lambda job: job.job_id)

    def job(self, job_id: int) -> QueuedJob | None:
        """One job, from its own files or its archive line (never the whole queue); None for a job this
        queue never had."""
        live = self._live(job_id)
        if live is not None:
            return live
        found = slot_archive.find(self.archive, job_ids=[job_id])
        return _queued(job_id, found[-1]) if found else None

    def archived(self, names: list[str]) -> list[QueuedJob]:
        """Archived jobs with these names (reads the whole archive: for the rare caller that missed them)."""
        return [_queued(r["job_id"], r) for r in slot_archive.find(self.archive, names=names)]

    def log_path(self, job_id: int) -> str | None:
        """Where the job writes its output; None for a job this queue does not have."""
        job = self.job(job_id)
        return None if job is None else job.log

    def cancel(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            if self._state(job_id).exists():
                self._cancel(job_id).touch()
        self.ensure_runner()

    def runner_alive(self) -> bool:
        with self._lock("runner.lock", blocking=False) as got:
            return not got

    def wake(self) -> None:
        """Tell the runner something changed (best effort: with no runner listening, nothing happens)."""
        try:
            fd = os.open(self.root / "wake", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # no FIFO yet, or no runner has it open (ENXIO): the runner that starts will look
        try:
            os.write(fd, b"!")
        except OSError:
            pass  # the pipe is full: the runner has wake-ups waiting already
        finally:
            os.close(fd)

    def ensure_runner(self) -> None:
        """Wake the runner, or start one if none holds the runner lock and there is work to do."""
        if self.runner_alive():
            self.wake()
            return
        if not any(j.state in ("pending", "running") for j in self.jobs()):
            return
        log = open(self.root / "runner.log", "ab")
        subprocess.Popen(
            [sys.executable, "-m", "fleet.backends.slot_runner", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd=str(self.root), env=_runner_env(),
        )
        log.close()

    def kill_all(self) -> None:
        """Cancel every queued job and kill the running one (tear-down); the runner exits once idle,
        rather than after its idle timeout."""
        if self.root.is_dir():  # a slot never used has no runner to stop
            (self.root / STOP).touch()
        self.cancel([j.job_id for j in self.jobs() if j.state in ("pending", "running")])
        for job_id in self.job_ids():
            state = _read_json(self._state(job_id)) or {}
            if state.get("state") == "running" and state.get("pgid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(state["pgid"], signal.SIGKILL)

    def compact(self, keep: int = KEEP_FINISHED) -> int:
        """Move finished jobs but the newest `keep` from jobs/ into the archive; returns how many."""
        return slot_archive.compact(self, keep)

    def finished_records(self) -> list[dict]:
        """The finished jobs in jobs/, oldest first, as archive records (call with the queue lock held)."""
        return [r for r in map(self._record, self.job_ids()) if r is not None and r["state"] in TERMINAL]

    def job_files(self, job_id: int) -> list[Path]:
        """Every file a job may have, its state first (the entry that makes it visible), its claim last."""
        exit_path = self._exit(job_id)
        return [self._state(job_id), self._spec(job_id), exit_path, exit_path.with_suffix(".exit.tmp"),
                self._cancel(job_id), self._script(job_id), self._claim(job_id)]


RUNNER_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "FLEET_RUNNER_IDLE_S", "FLEET_RUNNER_WAKE_S")


def _runner_env() -> dict[str, str]:
    """The runner needs little (its jobs get their own env from their specs): no secrets in it."""
    env = {k: os.environ[k] for k in RUNNER_ENV if k in os.environ}
    env["PYTHONPATH"] = _package_parent()
    return env


def _package_parent() -> str:
    parent = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return parent + (os.pathsep + existing if existing else "")
