"""argparse types whose errors name the flag and the fix (exit 2, one line)."""
from __future__ import annotations

from fleet.errors import InputError


def positive_minutes(flag: str):
    """An argparse type: a positive number of minutes, or a message naming the flag and the fix."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise InputError(f"{flag} is {text!r}, but must be a positive number of minutes (e.g. {flag} 5)")
        return value
    return parse


def positive_seconds(flag: str):
    """An argparse type: a positive number of seconds, or a message naming the flag and the fix."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise InputError(f"{flag} is {text!r}, but must be a positive number of seconds (e.g. {flag} 1200)")
        return value
    return parse
