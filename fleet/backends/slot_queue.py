"""A durable FIFO job queue for one slot, with `sky exec` semantics, kept in a directory.

The queue is files (one JSON spec and one JSON state per job) plus a detached runner process
that starts jobs one at a time in submission order. Everything survives the death of the process
that submitted the jobs: the runner has its own session, each job has its own process group and
writes its exit status to a file, and a restarted runner re-adopts a job that is still running.

This module imports only the standard library so the runner starts in milliseconds.

    <slot>/jobs/000001.json    spec: name, script, cwd, env, timeout_s, log (mode 0600: env may hold secrets)
    <slot>/jobs/000001.state   state: pending|running|succeeded|failed|timeout|cancelled|lost, times, pid
    <slot>/jobs/000001.exit    the job's exit status, written by the job's own shell
    <slot>/jobs/000001.claim/  made by the job's own shell before it runs (mkdir is atomic): one copy runs
    <slot>/jobs/000001.cancel  a cancel request
    <slot>/runner.lock         held by the live runner

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

TERMINAL = ("succeeded", "failed", "timeout", "cancelled", "lost")  # lost: vanished without an exit status
END_LINE = "[fleet] exit code {code}"  # the last line of every job's log, written after the job ends
CLAIM_LOST = 97  # a second copy of a job exits with this: another copy claimed the job first
KILL_GRACE_S = 5.0
IDLE_EXIT_S = float(os.environ.get("FLEET_RUNNER_IDLE_S", "120"))
POLL_S = 0.02


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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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

    def _lock(self, name: str = "queue.lock", blocking: bool = True):
        return try_flock(self.root / name, blocking)

    # --- client API --------------------------------------------------------------------------
    def job_ids(self) -> list[int]:
        if not self.jobs_dir.exists():
            return []
        return sorted(int(p.stem) for p in self.jobs_dir.glob("*.json"))

    def submit(self, name: str, script: str, cwd: str, env: dict[str, str], timeout_s: float, log: str) -> int:
        """Queue a job that runs `script` in `cwd` with exactly `env` (nothing inherited)."""
        self.jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock():
            ids = self.job_ids()
            job_id = (ids[-1] + 1) if ids else 1
            now = time.time()
            _write_json(self._state(job_id), {"state": "pending"})
            _write_json(
                self._spec(job_id),
                {"name": name, "script": script, "cwd": cwd, "env": env, "timeout_s": timeout_s,
                 "log": log, "submitted_at": now},
            )
        self.ensure_runner()
        return job_id

    def jobs(self) -> list[QueuedJob]:
        return [job for job in map(self.job, self.job_ids()) if job is not None]

    def job(self, job_id: int) -> QueuedJob | None:
        """One job, from its own files (never the whole queue); None for a job this queue does not have."""
        spec = _read_json(self._spec(job_id))
        if spec is None:
            return None
        state = _read_json(self._state(job_id)) or {"state": "pending"}
        status = state["state"]
        if status == "pending" and self._cancel(job_id).exists():
            status = "cancelled"
        return QueuedJob(job_id, spec["name"], status, spec["log"], spec["submitted_at"],
                         state.get("started_at"), state.get("ended_at"), state.get("exit_code"))

    def log_path(self, job_id: int) -> str | None:
        """Where the job writes its output; None for a job this queue does not have."""
        spec = _read_json(self._spec(job_id))
        return None if spec is None else spec["log"]

    def cancel(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            if self._spec(job_id).exists():
                self._cancel(job_id).touch()
        self.ensure_runner()

    def runner_alive(self) -> bool:
        with self._lock("runner.lock", blocking=False) as got:
            return not got

    def ensure_runner(self) -> None:
        """Start the runner if none holds the runner lock and there is work to do."""
        if self.runner_alive():
            return
        if not any(j.state in ("pending", "running") for j in self.jobs()):
            return
        log = open(self.root / "runner.log", "ab")
        subprocess.Popen(
            [sys.executable, "-m", "fleet.backends.slot_queue", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd=str(self.root), env=_runner_env(),
        )
        log.close()

    def kill_all(self) -> None:
        """Cancel every queued job and kill the running one (tear-down)."""
        self.cancel([j.job_id for j in self.jobs() if j.state in ("pending", "running")])
        for job_id in self.job_ids():
            state = _read_json(self._state(job_id)) or {}
            if state.get("state") == "running" and state.get("pgid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(state["pgid"], signal.SIGKILL)


RUNNER_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "FLEET_RUNNER_IDLE_S")


def _runner_env() -> dict[str, str]:
    """The runner needs little (its jobs get their own env from their specs): no secrets in it."""
    env = {k: os.environ[k] for k in RUNNER_ENV if k in os.environ}
    env["PYTHONPATH"] = _package_parent()
    return env


def _package_parent() -> str:
    parent = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return parent + (os.pathsep + existing if existing else "")


class _Runner(SlotQueue):
    """The runner: one per slot, started detached; exits after a while with nothing to do."""

    def run_forever(self) -> None:
        with self._lock("runner.lock", blocking=False) as got:
            if not got:
                return  # another runner owns this slot
            idle_since = time.monotonic()
            while True:
                job_id = self._next_job()
                if job_id is None:
                    if time.monotonic() - idle_since > IDLE_EXIT_S:
                        return
                    time.sleep(POLL_S)
                    continue
                self._run(job_id)
                idle_since = time.monotonic()

    def _next_job(self) -> int | None:
        """The oldest job that is running (to re-adopt) or pending; cancelled ones are closed."""
        for job_id in self.job_ids():
            state = _read_json(self._state(job_id)) or {"state": "pending"}
            if state["state"] == "running":
                return job_id
            if state["state"] == "pending":
                if self._cancel(job_id).exists():
                    _write_json(self._state(job_id), {"state": "cancelled", "ended_at": time.time()})
                    continue
                return job_id
        return None

    def _run(self, job_id: int) -> None:
        spec = _read_json(self._spec(job_id))
        state = _read_json(self._state(job_id)) or {"state": "pending"}
        if spec is None:
            return
        if state["state"] == "running" or self._claimed(job_id):
            # Started by an earlier runner (maybe one that died before it could say so): adopt it.
            pid, started, proc = state.get("pid") or self._claimed_pid(job_id), state.get("started_at"), None
            started = started or time.time()
            _write_json(self._state(job_id), {"state": "running", "started_at": started, "pid": pid, "pgid": pid})
        else:
            proc, started = self._start(job_id, spec), time.time()
            pid = proc.pid
            _write_json(self._state(job_id), {"state": "running", "started_at": started, "pid": pid, "pgid": pid})
        outcome, code = self._wait(job_id, proc, pid, started, float(spec["timeout_s"]))
        other = self._claimed_pid(job_id) if proc is not None and code == CLAIM_LOST else None
        if other is not None and other != proc.pid:
            # Our copy found the job claimed by another: a runner that died between starting it and
            # recording that did start it. Follow that copy to its end instead of calling it failed.
            pid = other
            _write_json(self._state(job_id), {"state": "running", "started_at": started, "pid": pid, "pgid": pid})
            outcome, code = self._wait(job_id, None, pid, started, float(spec["timeout_s"]))
        _write_json(
            self._state(job_id),
            {"state": outcome, "started_at": started, "ended_at": time.time(), "exit_code": code, "pid": pid},
        )

    def _claimed(self, job_id: int) -> bool:
        return self._claim(job_id).exists()

    def _claimed_pid(self, job_id: int) -> int | None:
        """The pid a job's wrapper wrote into its claim (it may take a moment to appear)."""
        for _ in range(50):
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int((self._claim(job_id) / "pid").read_text().strip())
            time.sleep(0.02)
        return None

    def _start(self, job_id: int, spec: dict) -> subprocess.Popen:
        script_path = self.jobs_dir / f"{job_id:06d}.sh"
        script_path.write_text(spec["script"])
        exit_path = self._exit(job_id)
        Path(spec["log"]).parent.mkdir(parents=True, exist_ok=True)
        log = open(spec["log"], "ab")
        # The job's own shell claims the job (mkdir is atomic: a second copy started by a runner that
        # re-adopts too eagerly exits at once), records its pid, runs the job, ends the log with
        # END_LINE (missing when the log could not be written to the end) and records its exit
        # status, so the job is known even if this runner dies at any moment.
        end = END_LINE.format(code="%s")
        wrapper = (f'mkdir "$3" 2>/dev/null || exit {CLAIM_LOST}; echo $$ > "$3/pid"; '
                   f'bash "$1"; code=$?; printf "\\n{end}\\n" $code; '
                   'echo $code > "$2.tmp" && mv "$2.tmp" "$2"; exit $code')
        proc = subprocess.Popen(
            ["bash", "-c", wrapper, "fleet-job", str(script_path), str(exit_path), str(self._claim(job_id))],
            cwd=spec["cwd"], env=dict(spec["env"]), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        return proc

    def _wait(self, job_id: int, proc, pid: int, started: float, timeout_s: float) -> tuple[str, int | None]:
        finished = threading.Event()
        if proc is not None:
            threading.Thread(target=lambda: (proc.wait(), finished.set()), daemon=True).start()
        while True:
            if proc is None and (self._exit(job_id).exists() or not _pid_alive(pid)):
                finished.set()
            if finished.is_set():
                return self._outcome(job_id, proc)
            if self._cancel(job_id).exists():
                self._kill(pid, finished)
                return "cancelled", None
            if time.time() - started > timeout_s:
                self._kill(pid, finished)
                return "timeout", None
            finished.wait(0.1 if proc is not None else POLL_S * 5)

    def _outcome(self, job_id: int, proc) -> tuple[str, int | None]:
        code = proc.returncode if proc is not None else None
        if code is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                code = int(self._exit(job_id).read_text().strip())
        if code is None:
            return "lost", None  # vanished without an exit status (a reboot, a full disk): not its own failure
        if code < 0 and self._cancel(job_id).exists():
            return "cancelled", None  # killed by a tear-down (`kill_all`), not failed
        return ("succeeded" if code == 0 else "failed"), code

    def _kill(self, pgid: int, finished: threading.Event) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after a grace period."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.time() + KILL_GRACE_S
        while time.time() < deadline and not finished.is_set() and _pid_alive(pgid):
            finished.wait(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    _Runner(Path(sys.argv[1])).run_forever()
