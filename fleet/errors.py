"""Errors a person can act on, and how pydantic's are turned into one line per problem."""
from __future__ import annotations

import errno
from pathlib import Path

from pydantic import ValidationError


class FleetError(Exception):
    """An expected failure of the fleet (exit code 1); the message says what to do."""

    exit_code = 1


class InputError(FleetError):
    """Bad input from the user: a wave file, a flag, a config value (exit code 2)."""

    exit_code = 2


def field_path(loc: tuple) -> str:
    """('grid', 'MATRIX_LR', 0) -> 'grid.MATRIX_LR[0]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(source: Path | str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = field_path(tuple(p for p in err["loc"] if p not in ("function-after", "function-before")))
        value = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "is not a known field"
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"{source}: `{where}` = {shown}: {msg}")
    return "\n".join(lines)


# Errors of the machine, not of the fleet or the user: the disk is full, read-only or not ours.
_DISK_FIXES = {
    errno.ENOSPC: "free space on that disk (`df -h {dir}` shows it)",
    errno.EDQUOT: "free space within your disk quota (`df -h {dir}`)",
    errno.EROFS: "the filesystem is read-only: remount it writable or move the project",
    errno.EACCES: "make it writable for this user (`ls -ld {dir}`)",
    errno.EPERM: "make it writable for this user (`ls -ld {dir}`)",
}


class DiskProblem(FleetError):
    """A file the fleet must write cannot be written: it names the path, what it was, and the fix."""

    def __init__(self, path: Path | str, what: str, reason: str, code: int = errno.ENOSPC) -> None:
        directory = Path(path).parent
        fix = _DISK_FIXES.get(code, _DISK_FIXES[errno.ENOSPC]).format(dir=directory)
        super().__init__(f"cannot write {path} ({what}): {reason}; {fix}, then run `fleet wait` "
                         "(nothing is lost: unfinished experiments stay in the ledger)")
        self.path = Path(path)
        self.code = code


def disk_problem(exc: BaseException, path: Path | str, what: str) -> DiskProblem | None:
    """The DiskProblem behind an OSError (full, read-only, not permitted), else None."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FIXES:
        return DiskProblem(exc.filename or path, what, exc.strerror or str(exc), exc.errno)
    return None
