"""The runner of one slot's queue (`fleet.backends.slot_queue`): started detached as
`python -m fleet.backends.slot_runner SLOT`, it starts the slot's jobs one at a time in submission
order, records how each ended, compacts finished ones into the archive, and exits after a while
with nothing to do. Like the queue it imports only the standard library, so it starts in
milliseconds.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fleet.backends.slot_queue import (
    CLAIM_LOST,
    COMPACT_AT,
    END_LINE,
    IDLE_EXIT_S,
    KILL_GRACE_S,
    POLL_S,
    STOP,
    WAKE_S,
    SlotQueue,
    _pid_alive,
    _read_json,
    _write_json,
)


class SlotRunner(SlotQueue):
    """The runner: one per slot, started detached; exits after a while with nothing to do."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._done_through = 0  # every job id up to this one is finished: never looked at again

    def run_forever(self) -> None:
        with self._lock("runner.lock", blocking=False) as got:
            if not got:
                return  # another runner owns this slot
            wake = self._open_wake()
            try:
                idle_since = time.monotonic()
                while True:
                    job_id = self._next_job()
                    if job_id is None:
                        left = IDLE_EXIT_S - (time.monotonic() - idle_since)
                        if left <= 0 or (self.root / STOP).exists():  # idle too long, or torn down
                            return
                        self._sleep(wake, min(left, WAKE_S))
                        continue
                    self._run(job_id)
                    if len(self.job_ids()) > COMPACT_AT:
                        self.compact()
                    idle_since = time.monotonic()
            finally:
                os.close(wake)

    def _open_wake(self) -> int:
        path = self.root / "wake"
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        # Read-write, so the FIFO always has a writer: no end-of-file, no busy loop between clients.
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)

    @staticmethod
    def _sleep(wake: int, timeout: float) -> None:
        """Until a client writes to the FIFO (or `timeout`); drains what is there."""
        ready, _, _ = select.select([wake], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake, 4096):
                    pass

    def _next_job(self) -> int | None:
        """The oldest job that is running (to re-adopt) or pending; cancelled ones are closed."""
        for job_id in self.job_ids():
            if job_id <= self._done_through:
                continue
            state = _read_json(self._state(job_id))
            if state is None:
                continue
            if state["state"] == "running":
                return job_id
            if state["state"] == "pending":
                if not self._cancel(job_id).exists():
                    return job_id
                self._set_state(job_id, state, state="cancelled", ended_at=time.time())
            self._done_through = job_id  # every job before the one returned is finished
        return None

    def _set_state(self, job_id: int, known: dict, **fields) -> None:
        """Write the job's state, keeping its name, log and submission time (what readers need)."""
        ident = {k: known[k] for k in ("name", "log", "submitted_at") if k in known}
        _write_json(self._state(job_id), {**ident, **fields})

    def _run(self, job_id: int) -> None:
        spec = _read_json(self._spec(job_id))
        state = _read_json(self._state(job_id)) or {"state": "pending"}
        if spec is None:
            return
        if state["state"] == "running" or self._claimed(job_id):
            # Started by an earlier runner (maybe one that died before it could say so): adopt it.
            pid, started, proc = state.get("pid") or self._claimed_pid(job_id), state.get("started_at"), None
            started = started or time.time()
        else:
            if not self._wait_start_delay(job_id, float(spec.get("start_delay_s") or 0)):
                self._set_state(job_id, spec, state="cancelled", ended_at=time.time())
                return
            proc, started = self._start(job_id, spec), time.time()
            pid = proc.pid
        self._set_state(job_id, spec, state="running", started_at=started, pid=pid, pgid=pid)
        outcome, code = self._wait(job_id, proc, pid, started, float(spec["timeout_s"]))
        other = self._claimed_pid(job_id) if proc is not None and code == CLAIM_LOST else None
        if other is not None and other != proc.pid:
            # Our copy found the job claimed by another: a runner that died between starting it and
            # recording that did start it. Follow that copy to its end instead of calling it failed.
            pid = other
            self._set_state(job_id, spec, state="running", started_at=started, pid=pid, pgid=pid)
            outcome, code = self._wait(job_id, None, pid, started, float(spec["timeout_s"]))
        self._set_state(job_id, spec, state=outcome, started_at=started, ended_at=time.time(), exit_code=code, pid=pid)

    def _claimed(self, job_id: int) -> bool:
        return self._claim(job_id).exists()

    def _wait_start_delay(self, job_id: int, delay_s: float) -> bool:
        """Wait out a job's start delay; False if it was cancelled meanwhile."""
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            if self._cancel(job_id).exists():
                return False
            time.sleep(min(left, 0.05))
        return True

    def _claimed_pid(self, job_id: int) -> int | None:
        """The pid a job's wrapper wrote into its claim (it may take a moment to appear)."""
        for _ in range(50):
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int((self._claim(job_id) / "pid").read_text().strip())
            time.sleep(POLL_S)
        return None

    def _start(self, job_id: int, spec: dict) -> subprocess.Popen:
        script_path = self._script(job_id)
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
    SlotRunner(Path(sys.argv[1])).run_forever()
