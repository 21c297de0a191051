"""One sink for everything the CLI says: data on stdout; progress, warnings and hints on stderr.

Modes: human (rich tables), json (one JSON document on stdout, for agents), quiet (data only).

Human output never interprets text as rich markup and never lets a control character through: the
consoles are `PlainConsole`s, which turn every string into plain text (`fleet.plain_text.plain`),
so a description like `[/bold] x` or one with escape sequences prints as what it says. Styles are
given as `Text` objects, never as markup inside strings.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text

from fleet.plain_text import plain


class PlainConsole(Console):
    """A console for user text: no markup, no emoji codes, no highlighting, controls made visible."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs["markup"] = False
        kwargs["emoji"] = False
        return super().render_str(plain(text, one_line=False), **kwargs)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from plain pieces and (text, style) pieces; every piece is made plain."""
    return Text.assemble(*((plain(p[0], one_line=False), p[1]) if isinstance(p, tuple) else plain(p, one_line=False)
                           for p in parts))


class Sink:
    def __init__(self, mode: str = "human") -> None:
        self.mode = mode
        self.out = PlainConsole(file=sys.stdout)
        if not self.out.is_terminal:  # pipes and agents: don't squeeze tables into 80 columns
            self.out = PlainConsole(file=sys.stdout, width=max(self.out.width, 140))
        self.err = PlainConsole(file=sys.stderr, soft_wrap=True)

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
            self.err.print(styled(message))

    def warn(self, message: str) -> None:
        self.err.print(styled(("warning:", "yellow"), " ", message))

    def error(self, message: str) -> None:
        self.err.print(styled(("error:", "red"), " ", message))

    def hint(self, message: str) -> None:
        """A one-line next step, for people and agents alike (stderr, so --json stays clean)."""
        if self.mode != "quiet":
            self.err.print(styled(("next:", "dim"), " ", message))
