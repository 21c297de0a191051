"""Keeps exactly one controller process per workspace alive while there is work.

`fleet wave` and `fleet wait` call `ensure_controller`; the controller holds an flock on
`.fleet/controller.lock` for its whole life, so a controller killed with -9 frees the lock at
once and the next `fleet` command starts a new one, which reconciles the ledger with the backend.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fleet.backends import make_backend
from fleet.backends.local import default_slots
from fleet.backends.slot_queue import try_flock
from fleet.config import FleetConfig, load_config
from fleet.core import faults
from fleet.core.controller import Controller
from fleet.core.fleet_size import fleet_target
from fleet.core.hooks import CycleHook, Extension, load_hook, split_hooks
from fleet.core.ledger import Ledger
from fleet.errors import DiskProblem
from fleet.types import ClusterState
from fleet.workspace import Workspace

log = logging.getLogger("fleet.core.daemon")


def controller_lock(workspace: Workspace) -> contextlib.AbstractContextManager[bool]:
    return try_flock(workspace.state / "controller.lock")


def controller_running(workspace: Workspace) -> bool:
    with controller_lock(workspace) as got:
        return not got


def ensure_controller(workspace: Workspace, ledger: Ledger, *, explicit: bool = False,
                      hooks: Sequence[str] = ()) -> bool:
    """Start a controller in the background if work is left, clusters are up and none runs.

    Every `fleet` command calls this on its way out, so a controller killed mid-wave is resumed by
    whatever the user (or agent) runs next; the new one reconciles the ledger with the backend.
    A controller that stopped on a problem for the user to fix (a failing setup) is restarted only
    by a command that asks for work to run (`explicit`: wave, wait, up, release, cancel), not by
    `fleet status` in an agent's loop. Returns True if it started one.
    """
    if not ledger.has_unfinished_work():
        return False
    if not ledger.clusters([ClusterState.UP]) and fleet_target(ledger) is None:
        return False  # nothing could run it; a fleet with a recorded size launches replacements
    problem = ledger.get_meta("controller_error") or ""
    if problem and not problem.startswith("retrying") and not explicit:
        return False
    if controller_running(workspace):
        return False
    workspace.logs.mkdir(parents=True, exist_ok=True)
    out = open(workspace.logs / "controller.log", "ab")
    subprocess.Popen(
        [sys.executable, "-m", "fleet.core.daemon", str(workspace.root), *(f"--hook={h}" for h in hooks)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, cwd=str(workspace.root),
    )
    out.close()
    return True


@contextlib.contextmanager
def _take_controller_lock(workspace: Workspace):
    """The lock, waiting up to a second: `controller_running()` in another process holds it briefly."""
    for _ in range(10):
        with controller_lock(workspace) as got:
            if got:
                yield True
                return
        time.sleep(0.1)
    yield False


def backend_name(ledger: Ledger) -> str:
    return ledger.get_meta("backend") or "local"


def bring_up_local(workspace: Workspace, ledger: Ledger, config: FleetConfig, count: int | None = None) -> list[str]:
    """Register local slots `local-01…` in the ledger (and on disk); returns their names."""
    backend = make_backend("local", workspace, config)
    labels = default_slots(config)
    if count is not None:
        labels = [labels[i % len(labels)] for i in range(count)]
    names = [f"local-{i + 1:02d}" for i in range(len(labels))]
    for info in backend.up(names, labels):
        ledger.upsert_cluster(info.name, "local", info.accelerator, info.state)
    return names


def record_exit(ledger: Ledger, reason: str) -> None:
    """Why this controller exits, for `fleet status` and the next controller (best effort: the
    disk may be why)."""
    entry = json.dumps({"pid": os.getpid(), "reason": reason, "at": time.time()})
    try:
        ledger.set_meta("controller_exit", entry)
    except (DiskProblem, sqlite3.Error) as exc:
        log.error("could not record why the controller exits (%s): %s", reason, exc)


def record_start_failure(workspace: Workspace, problem: str) -> None:
    """A controller that cannot start records why as the controller's error (best effort)."""
    try:
        ledger = Ledger(workspace.ledger_path)
        ledger.set_meta("controller_error", problem)
        ledger.set_meta("controller_error_at", str(time.time()))
        record_exit(ledger, f"crashed: {problem}")
    except Exception as exc:  # noqa: BLE001 - the disk or the ledger may be the problem; the log still has it
        log.error("could not record why the controller did not start (%s): %s", problem, exc)


def _previous_exit(ledger: Ledger) -> None:
    """Say when the last controller died without recording why (SIGKILL, power loss)."""
    pid = ledger.get_meta("controller_pid")
    last = json.loads(ledger.get_meta("controller_exit") or "{}")
    if pid and str(last.get("pid")) != pid:
        log.warning("the previous controller (pid %s) exited without saying why (killed?); resuming its work", pid)


PROBLEM_RETRY_S = 60.0  # a foreground controller stopped by a problem looks again after this long
IDLE_POLL_S = 2.0  # a foreground controller with no work reads the ledger this often


def run_controller(workspace: Workspace, *, persistent: bool = False, problem_retry_s: float = PROBLEM_RETRY_S,
                   should_stop=lambda: False, hooks: Sequence[CycleHook | Extension] = ()) -> int:
    """Run the controller in this process while it holds the workspace's lock.

    In the background (`persistent` False) it exits once no work is left. In the foreground
    (`fleet controller run`: tmux, systemd, a pod) it stays: when idle it waits for new work, and
    after a problem for the user to fix (no clusters, a broken task file) it records it and looks
    again every `problem_retry_s` seconds. `should_stop` ends the foreground loop (tests). `hooks`
    are the cycle hooks and extensions the layers above named (`fleet.core.hooks`).
    """
    config = load_config(workspace.root)
    ledger = Ledger(workspace.ledger_path)
    faults.arm_from_env()  # tests only: FLEET_FAULT_AT crashes this controller at a chosen point
    with _take_controller_lock(workspace) as got:
        if not got:
            return 0
        _previous_exit(ledger)
        ledger.set_meta("controller_pid", str(os.getpid()))
        try:
            name = backend_name(ledger)
            backend = make_backend(name, workspace, config)
            known = {c.name for c in ledger.clusters([ClusterState.UP])}
            for info in backend.clusters():  # re-adopt clusters the ledger forgot (or never saw)
                if info.state == ClusterState.UP and info.name not in known:
                    ledger.upsert_cluster(info.name, name, info.accelerator, info.state)
            cycle_hooks, extensions = split_hooks(hooks)
            added = [e.extend(workspace, ledger, backend, config) for e in extensions]
            controller = Controller(workspace, ledger, backend, config, hooks=cycle_hooks,
                                    watchers=[w for a in added for w in a.watchers],
                                    sources={k: v for a in added for k, v in a.sources.items()})
            while True:
                stopped = controller.run(idle_exit_s=30.0 if persistent else 1.0)
                if not persistent or should_stop():
                    break
                if stopped == "idle":
                    log.info("no work left; waiting for a wave (`fleet wave FILE`)")
                    while not ledger.has_unfinished_work() and not should_stop():
                        ledger.set_meta("controller_heartbeat", str(time.time()))
                        time.sleep(IDLE_POLL_S)
                else:
                    log.warning("looking again in %.0fs (fix it meanwhile): %s", problem_retry_s, stopped)
                    time.sleep(problem_retry_s)
                if should_stop():
                    break
        except BaseException as exc:  # a crash outside the loop, or SIGTERM: still say why
            record_exit(ledger, f"stopped: {exc}" if isinstance(exc, SystemExit) else f"crashed: {exc!r}")
            raise
        record_exit(ledger, "idle: no work left" if stopped == "idle" else f"stopped: {stopped}")
    if stopped != "idle":
        return 1
    # Work may have arrived between the last check and the lock's release: take it on.
    if not persistent and ledger.has_unfinished_work():
        return run_controller(workspace, hooks=hooks)
    return 0


def terminate_on_signal(signum: int, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise SystemExit(f"terminated by signal {signal.Signals(signum).name}")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, terminate_on_signal)  # a `kill` is recorded as the reason, not lost
    args = sys.argv[1:]
    paths = [a for a in args if not a.startswith("--hook=")]
    root = Path(paths[0]) if paths else Path.cwd()
    try:
        hooks = [load_hook(a.split("=", 1)[1]) for a in args if a.startswith("--hook=")]
    except Exception as exc:
        # e.g. a dependency missing from the environment: say so where `fleet wait` and `fleet status`
        # look, or a waiter would start controller after controller that die before their first cycle
        record_start_failure(Workspace(root.resolve()), f"cannot load the controller's hooks: {exc!r}; "
                                                        "reinstall (`bash scripts/install.sh`) and wait again")
        raise
    started = time.time()
    try:
        return run_controller(Workspace(root.resolve()), hooks=hooks)
    finally:
        log.info("controller exiting after %.1fs", time.time() - started)


if __name__ == "__main__":
    sys.exit(main())
