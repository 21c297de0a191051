"""Fault injection: crash the controller at a chosen point of its life, to prove it recovers.

Off in production: nothing happens unless a test arms it, in-process with `arm(n)` or for a
controller process with `FLEET_FAULT_AT=N` (exception) or `FLEET_FAULT_AT=N:kill` (SIGKILL), which
`fleet.core.daemon` reads when a controller starts. The points are the ledger's writes, two each
(just before the transaction commits, and just after), so "crash at point N" covers every gap
between two writes, including the backend calls and file I/O that happen in it.
"""
from __future__ import annotations

import os
import signal

ENV = "FLEET_FAULT_AT"
MODES = ("raise", "kill")


class InjectedFault(Exception):
    """The crash a test asked for (an ordinary exception: the controller handles it like a bug)."""


class _State:
    at: int | None = None  # the point that fails (1-based); None: disarmed
    mode: str = "raise"
    passed: int = 0  # points passed since arming (or since the process started)


_state = _State()


def arm(at: int, mode: str = "raise") -> None:
    if at < 1 or mode not in MODES:
        raise ValueError(f"fault point {at!r} mode {mode!r}: need a point >= 1 and a mode in {MODES}")
    _state.at, _state.mode, _state.passed = at, mode, 0


def disarm() -> None:
    _state.at = None


def arm_from_env() -> None:
    """`FLEET_FAULT_AT=N[:kill]`: arm this process (a controller); ignored when unset or empty."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return
    at, _, mode = spec.partition(":")
    try:
        arm(int(at), mode or "raise")
    except ValueError as exc:
        raise ValueError(f"{ENV}={spec!r} is not N or N:kill (e.g. {ENV}=7:kill)") from exc


def passed() -> int:
    """How many points this process passed since it was armed (the test's measure of a run's points)."""
    return _state.passed


def point(label: str) -> None:
    """One point of the controller's life; fails here if this is the armed one."""
    _state.passed += 1
    if _state.at is None or _state.passed != _state.at:
        return
    _state.at = None  # fires once: the code that handles the crash must not crash again
    if _state.mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at point {_state.passed} ({label})")
