"""Errors a person can act on, and how pydantic's are turned into one line per problem."""
from __future__ import annotations

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
