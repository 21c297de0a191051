"""One sink for everything the CLI says: data on stdout; progress, warnings and hints on stderr.

Modes: human (rich tables), json (one JSON document on stdout, for agents), quiet (data only).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape


class Sink:
    def __init__(self, mode: str = "human") -> None:
        self.mode = mode
        self.out = Console(file=sys.stdout, highlight=False)
        if not self.out.is_terminal:  # pipes and agents: don't squeeze tables into 80 columns
            self.out = Console(file=sys.stdout, highlight=False, width=max(self.out.width, 140))
        self.err = Console(file=sys.stderr, soft_wrap=True, highlight=False)

    @property
    def json(self) -> bool:
        return self.mode == "json"

    def data(self, payload: Any, render: Callable[[Console], None] | None = None) -> None:
        """The command's result: JSON in json mode, else the human rendering (or the payload)."""
        if self.json or render is None:
            print(json.dumps(payload, indent=2, default=str, sort_keys=False))
            return
        render(self.out)

    def info(self, message: str) -> None:
        if self.mode == "human":
            self.err.print(escape(message))

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def error(self, message: str) -> None:
        self.err.print(f"[red]error:[/red] {escape(message)}")

    def hint(self, message: str) -> None:
        """A one-line next step, for people and agents alike (stderr, so --json stays clean)."""
        if self.mode != "quiet":
            self.err.print(f"[dim]next:[/dim] {escape(message)}")
