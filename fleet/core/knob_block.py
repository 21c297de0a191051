"""The knob block of an env-knob script (this project's `train/train.py`): `NAME = Knob(gpu, cpu, tiny, ...)`.

`fleet adopt` writes an experiment's knob values as the block's new defaults, for the preset the
experiment ran with: `MATRIX_LR = Knob(0.04, 0.04, 0.04, min=0.0)` adopted from a cpu run at 0.05
becomes `Knob(0.04, 0.05, 0.04, min=0.0)`. Read with `ast` and rewritten by replacing exactly the
positional defaults' characters; the keyword arguments and comments stay as written. A default left
out (`Knob(0.1)`) falls back like train/knobs.py does: cpu to gpu, tiny to cpu.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from fleet.core.constants import constant_value, render_value

PRESETS = ("gpu", "cpu", "tiny")


@dataclass(frozen=True)
class KnobDecl:
    name: str
    defaults: tuple[Any, Any, Any]  # gpu, cpu, tiny, after the fallbacks
    line: int
    start: int  # character span of the positional defaults
    end: int
    texts: tuple[str, ...]  # each positional default as written

    def default(self, preset: str) -> Any:
        return self.defaults[PRESETS.index(preset)]


def _offsets(source: str) -> list[int]:
    out, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        out.append(total)
    return out


def knob_declarations(source: str) -> dict[str, KnobDecl]:
    """Each module-level `NAME = Knob(<constant defaults>, ...)`, defaults such as `2**19` included (others
    are skipped)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    offsets, lines = _offsets(source), source.splitlines()

    def at(lineno: int, col: int) -> int:
        return offsets[lineno - 1] + len(lines[lineno - 1].encode("utf-8")[:col].decode("utf-8", errors="ignore"))

    out: dict[str, KnobDecl] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            continue
        call = stmt.value
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Knob"):
            continue
        args = call.args[:3]
        evaluated = [constant_value(a) for a in args]  # `2**19` is as constant as `524288`
        if not args or not all(ok for ok, _ in evaluated):
            continue
        values = [value for _, value in evaluated]
        while len(values) < 3:
            values.append(values[-1])  # cpu falls back to gpu, tiny to cpu
        start, end = at(args[0].lineno, args[0].col_offset), at(args[-1].end_lineno, args[-1].end_col_offset)
        texts = tuple(source[at(a.lineno, a.col_offset):at(a.end_lineno, a.end_col_offset)] for a in args)
        out[stmt.targets[0].id] = KnobDecl(stmt.targets[0].id, tuple(values), stmt.lineno, start, end, texts)
    return out


def parse_env_value(decl: KnobDecl, text: str) -> Any:
    """An env-style knob value as the type of the knob's gpu default (ValueError if it is not one)."""
    kind = type(decl.defaults[0])
    if kind is bool:
        if text.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if text.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def set_default(source: str, decl: KnobDecl, preset: str, value: Any) -> str:
    """The source with the knob's default for one preset set to `value` (the others unchanged)."""
    values = list(decl.defaults)
    values[PRESETS.index(preset)] = value
    # Write as few positional defaults as the fallbacks allow, keeping the unchanged ones as written.
    count = 3
    if values[2] == values[1]:
        count = 2
        if values[1] == values[0]:
            count = 1
    texts = []
    for i in range(count):
        if i < len(decl.texts) and _same(decl.defaults[i], values[i]):
            texts.append(decl.texts[i])
        else:
            texts.append(render_value(values[i], decl.texts[0] if decl.texts else ""))
    return source[: decl.start] + ", ".join(texts) + source[decl.end:]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


__all__ = ["KnobDecl", "PRESETS", "knob_declarations", "parse_env_value", "set_default"]
