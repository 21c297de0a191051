"""argparse types whose errors name the flag and the fix (exit 2, one line)."""
from __future__ import annotations

from collections.abc import Callable

from fleet.errors import InputError


def positive_number(flag: str, unit: str, example: str) -> Callable[[str], float]:
    """An argparse type: a positive, finite number of `unit`, or a message naming the flag and the fix."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise InputError(f"{flag} is {text!r}, but must be a positive number of {unit} (e.g. {flag} {example})")
        return value
    return parse


def positive_minutes(flag: str) -> Callable[[str], float]:
    return positive_number(flag, "minutes", "5")


def positive_seconds(flag: str) -> Callable[[str], float]:
    return positive_number(flag, "seconds", "1200")
