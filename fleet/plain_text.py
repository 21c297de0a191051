"""User text on a terminal as plain text: what it says, never what it would make the terminal do.

Descriptions, labels, crash reasons and log lines come from wave files and from runs. Shown raw, an
escape sequence in one recolours, moves or retitles the user's terminal (CSI, OSC), a bidi control
reorders what they read, and a `[/bold]` would be taken as markup by rich and fail the command.
`plain` turns every control character into a visible stand-in; the human views print user text
only through it (and through consoles that never interpret markup). JSON output is left as is:
`json.dumps` escapes control characters already.
"""
from __future__ import annotations

import re

# C0 controls and DEL become their Unicode "control pictures" (ESC -> U+241B), so `\x1b[31m` reads
# as `␛[31m`; C1 controls (8-bit CSI is \x9b) and bidi overrides become U+FFFD.
_C0 = {code: chr(0x2400 + code) for code in range(0x20)} | {0x7F: "\u2421"}
_OTHER = {code: "\ufffd" for code in [*range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
_TABLE = {**_C0, **_OTHER}
_ONE_LINE = {**_TABLE, ord("\n"): " ", ord("\r"): " ", ord("\t"): " "}
_LINES = {**_TABLE, ord("\n"): "\n", ord("\t"): "    "}
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: object, *, one_line: bool = True, replacement: str | None = None) -> str:
    """`text` with every control character made visible; newlines become spaces when `one_line`.

    `replacement` stands in for every control character instead (for a font without the control
    pictures, as in a plot).
    """
    text = str(text)
    if not _UNSAFE.search(text):
        return text  # the usual case, unchanged
    if replacement is not None:
        if one_line:
            text = text.translate({ord("\n"): " ", ord("\r"): " ", ord("\t"): " "})
        return _UNSAFE.sub(lambda m: m.group() if m.group() == "\n" else replacement, text)
    return text.translate(_ONE_LINE if one_line else _LINES)
