"""`fleet controller run`: the controller in the foreground, where it outlives the agent's shell.

Every `fleet` command starts a background controller when work is queued, and it exits once the
work is done. Run in the foreground instead (tmux, a systemd unit, a pod with the project on a
volume, next to a SkyPilot API server in the cluster), it stays up: idle, it waits for the next
wave; stopped by a problem for the user to fix, it looks again every minute. Closing the laptop
does not stop the fleet.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from fleet.cli.context import CONTROLLER_HOOKS, Context
from fleet.core.daemon import PROBLEM_RETRY_S, controller_running, terminate_on_signal, run_controller
from fleet.core.hooks import load_hook
from fleet.errors import FleetError, InputError

TAKE_OVER_WAIT_S = 30.0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("controller", parents=[common], help="run the controller in the foreground (tmux, systemd, a pod)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    run = actions.add_parser("run", parents=[common], help="run it here until stopped (Ctrl-C or SIGTERM)")
    run.add_argument("--take-over", action="store_true",
                     help="stop a background controller that is running now and take its place (safe: the ledger "
                          "is resumed exactly where it was)")
    run.add_argument("--retry", type=float, default=PROBLEM_RETRY_S, metavar="SECONDS",
                     help=f"after a problem (no clusters, a broken task file), look again after this long "
                          f"(default {PROBLEM_RETRY_S:.0f})")
    run.set_defaults(func=cmd_controller_run)
    p.set_defaults(func=_no_action)


def _no_action(ctx: Context, args: argparse.Namespace) -> int:
    raise InputError("`fleet controller` needs an action: `fleet controller run`")


def cmd_controller_run(ctx: Context, args: argparse.Namespace) -> int:
    if not args.retry > 0:
        raise InputError(f"--retry is {args.retry}, but must be a positive number of seconds (e.g. --retry 60)")
    workspace = ctx.workspace.ensure()
    ledger = ctx.ledger
    if controller_running(workspace):
        pid = ledger.get_meta("controller_pid")
        if not args.take_over:
            raise FleetError(f"a controller is already running (pid {pid}); `fleet controller run --take-over` "
                             "stops it and runs here instead")
        _stop_other(workspace, pid)
    logging.getLogger().setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    signal.signal(signal.SIGTERM, terminate_on_signal)  # recorded as the reason it stopped
    ctx.sink.info(f"controller running in the foreground (pid {os.getpid()}); Ctrl-C stops it, the fleet's "
                  "clusters and queued work stay")
    try:
        code = run_controller(workspace, persistent=True, problem_retry_s=args.retry,
                              hooks=[load_hook(name) for name in CONTROLLER_HOOKS])
    except KeyboardInterrupt:
        code = 0
    except SystemExit as exc:  # SIGTERM
        ctx.sink.info(str(exc))
        code = 0
    last = json.loads(ledger.get_meta("controller_exit") or "{}")
    ctx.sink.data({"stopped": last.get("reason", ""), "pid": os.getpid()},
                  lambda c: c.print(f"controller stopped: {last.get('reason', '')}"))
    return code


def _stop_other(workspace, pid: str | None) -> None:
    """SIGTERM the running controller and wait for its lock (it records why it stopped)."""
    if pid and pid.isdigit():
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + TAKE_OVER_WAIT_S
    while controller_running(workspace):
        if time.monotonic() > deadline:
            raise FleetError(f"the running controller (pid {pid}) did not stop within {TAKE_OVER_WAIT_S:.0f}s; "
                             f"stop it with `kill {pid}` and run this again")
        time.sleep(0.2)
    print(f"took over from the controller (pid {pid})", file=sys.stderr)
