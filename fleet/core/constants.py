"""Constant knobs: a script's module-level ALL_CAPS constants, found and rewritten without running it.

A training script like autoresearch's `train.py` keeps its hyperparameters as plain constants:

    DEPTH = 8               # number of transformer layers
    TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step
    ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2

Such a constant is a knob when it is assigned exactly once, at module level, to a single ALL_CAPS
name, and its value is a constant expression: a number, string or boolean, a tuple or list of them,
or arithmetic on numbers (`2**19`, `8 * 64`). Everything here reads the source with `ast` — the
script is never imported or run (it may need a GPU, or start training). A wave's value is written by
replacing exactly the value expression's characters; comments and every other byte stay as they are.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Union

KNOB_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
MAX_EXPONENT = 4096  # `2**10**10` would hang the check; no hyperparameter needs more
Value = Union[bool, int, float, str, tuple, list]

_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


@dataclass(frozen=True)
class Constant:
    """One constant knob, with where its value expression sits in the source (character offsets)."""

    name: str
    value: Value
    line: int
    start: int
    end: int
    text: str  # the value expression as written (`2**19`)
    comment: str = ""  # the trailing comment, if any (the knob's help)

    @property
    def kind(self) -> str:
        return kind_of(self.value)

    def describe(self) -> str:
        return f"{self.name} = {self.text} (line {self.line})"


@dataclass(frozen=True)
class NotAKnob:
    """An ALL_CAPS name that a wave cannot set, and why (said when a wave tries)."""

    name: str
    line: int
    why: str


@dataclass(frozen=True)
class ConstantScan:
    script: str  # for messages, e.g. "train.py"
    knobs: dict[str, Constant]
    rejected: dict[str, NotAKnob]


class ScriptError(ValueError):
    """The script cannot be read as Python; the message names the line."""


def kind_of(value: Value) -> str:
    if isinstance(value, bool):
        return "bool"
    return type(value).__name__  # int, float, str, tuple, list


class _NotConstant(Exception):
    pass


def _evaluate(node: ast.AST) -> Value:
    """A constant expression's value, or _NotConstant (names, calls, subscripts...)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str)):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_evaluate(e) for e in node.elts]
        if any(isinstance(i, (tuple, list)) for i in items):
            raise _NotConstant("nested")
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _evaluate(node.operand)
        if isinstance(operand, bool) or not isinstance(operand, (int, float)):
            raise _NotConstant("sign of a non-number")
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
        if not numbers:
            raise _NotConstant("arithmetic on a non-number")
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise _NotConstant("exponent too large")
        try:
            result = _OPERATORS[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            raise _NotConstant("arithmetic error") from None
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise _NotConstant("not a finite number")
        return result
    raise _NotConstant(type(node).__name__)


def constant_value(node: ast.AST) -> tuple[bool, Value | None]:
    """(True, value) for a constant expression (`0.04`, `2**19`, `-1`, `(1, 2)`), (False, None) otherwise."""
    try:
        return True, _evaluate(node)
    except _NotConstant:
        return False, None


def _line_offsets(source: str) -> list[int]:
    offsets, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        offsets.append(total)
    return offsets


def _trailing_comment(source_line: str, end_col: int) -> str:
    rest = source_line[end_col:]
    hash_at = rest.find("#")
    return rest[hash_at + 1:].strip() if hash_at >= 0 else ""


def _stores(tree: ast.Module) -> dict[str, list[tuple[int, str]]]:
    """Every ALL_CAPS name bound anywhere but a plain module-level `NAME = value`: (line, where)."""
    out: dict[str, list[tuple[int, str]]] = {}
    simple = {id(stmt.targets[0]) for stmt in tree.body if isinstance(stmt, ast.Assign)
              and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)}
    simple |= {id(stmt.target) for stmt in tree.body if isinstance(stmt, ast.AnnAssign)
               and stmt.value is not None and isinstance(stmt.target, ast.Name)}

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = f"inside function {child.name}"
            elif isinstance(child, ast.ClassDef):
                inner = f"inside class {child.name}"
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store) and id(child) not in simple:
                if KNOB_NAME.match(child.id):
                    out.setdefault(child.id, []).append((child.lineno, scope))
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for alias in child.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    if KNOB_NAME.match(bound):
                        source = getattr(child, "module", None) or alias.name
                        out.setdefault(bound, []).append((child.lineno, f"imported from {source}"))
            visit(child, inner)

    visit(tree, "at module level")
    return out


def scan_constants(source: str, script: str = "train.py") -> ConstantScan:
    """The script's constant knobs, and the ALL_CAPS names that look like knobs but are not (pure)."""
    try:
        tree = ast.parse(source, filename=script)
    except SyntaxError as exc:
        raise ScriptError(f"{script}:{exc.lineno}: not valid Python ({exc.msg}); fix the script first") from None
    offsets = _line_offsets(source)
    lines = source.splitlines()
    assigned: dict[str, list[tuple[int, ast.expr]]] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name, value = stmt.target.id, stmt.value
        else:
            continue
        if KNOB_NAME.match(name):
            assigned.setdefault(name, []).append((stmt.lineno, value))
    others = _stores(tree)
    knobs: dict[str, Constant] = {}
    rejected: dict[str, NotAKnob] = {}
    for name in sorted(set(assigned) | set(others)):
        mine, elsewhere = assigned.get(name, []), others.get(name, [])
        if elsewhere:
            line, where = elsewhere[0]
            if where.startswith("imported"):
                why = f"{name} is {where} (line {line}), not set in this script"
            elif mine:
                why = f"{name} is assigned at line {mine[0][0]} and again {where} (line {line})"
            else:
                why = f"{name} is assigned only {where} (line {line}), not as a plain `{name} = value`"
            rejected[name] = NotAKnob(name, line, why)
            continue
        if len(mine) > 1:
            rejected[name] = NotAKnob(name, mine[1][0], f"{name} is assigned {len(mine)} times "
                                      f"(lines {', '.join(str(l) for l, _ in mine)})")
            continue
        line, node = mine[0]
        start = offsets[node.lineno - 1] + _char_col(lines[node.lineno - 1], node.col_offset)
        end = offsets[node.end_lineno - 1] + _char_col(lines[node.end_lineno - 1], node.end_col_offset)
        text = source[start:end]
        try:
            value = _evaluate(node)
        except _NotConstant:
            rejected[name] = NotAKnob(name, line, f"{name} is computed ({name} = {_short(text)}, line {line}), "
                                      "not a constant")
            continue
        comment = _trailing_comment(lines[node.end_lineno - 1], _char_col(lines[node.end_lineno - 1],
                                                                          node.end_col_offset))
        knobs[name] = Constant(name, value, line, start, end, text, comment)
    return ConstantScan(script, knobs, rejected)


def _char_col(line: str, byte_col: int) -> int:
    """ast columns count UTF-8 bytes; string offsets count characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- values: checking a wave's value, and writing it as source -------------------------------------


def _scalar_ok(expected: Value, given: Any) -> bool:
    kind = kind_of(expected)
    if kind == "bool":
        return isinstance(given, bool)
    if kind == "int":
        return isinstance(given, int) and not isinstance(given, bool)
    if kind == "float":
        return isinstance(given, (int, float)) and not isinstance(given, bool)
    return isinstance(given, str)


def _example(const: Constant) -> str:
    return f"{const.name}: {json.dumps(list(const.value) if isinstance(const.value, tuple) else const.value)}"


_KIND_WORDS = {"bool": "a boolean (true or false)", "int": "a whole number", "float": "a number",
               "str": "a string (quote it if it looks like a number)"}


def value_problem(const: Constant, given: Any) -> str | None:
    """Why a wave's value does not fit the constant (its type, a tuple's length), or None (pure)."""
    expected = const.value
    seen = f"{const.name} = {_short(const.text)} in the script, line {const.line}"
    if isinstance(expected, (tuple, list)):
        what = "tuple" if isinstance(expected, tuple) else "list"
        if not isinstance(given, list):
            return (f"{const.name} is a {what} of {len(expected)} ({seen}); give a list of {len(expected)} values, "
                    f"e.g. `{_example(const)}` (a grid of them is a list of lists)")
        if len(given) != len(expected):
            return (f"{const.name} is a {what} of {len(expected)} ({seen}), but {len(given)} values were given; "
                    f"e.g. `{_example(const)}`")
        for i, (e, g) in enumerate(zip(expected, given)):
            if not _scalar_ok(e, g):
                return f"{const.name}[{i}] must be {_KIND_WORDS[kind_of(e)]} like {e!r} ({seen})"
        return None
    if isinstance(given, list):
        return f"{const.name} takes a single value ({seen}), not a list; e.g. `{_example(const)}`"
    if not _scalar_ok(expected, given):
        return f"{const.name} must be {_KIND_WORDS[const.kind]} ({seen}); e.g. `{_example(const)}`"
    return None


def parse_config_value(const: Constant, text: str) -> Value:
    """A configuration's stored value (its env-style string, see `fleet.core.expand.env_value`) as the
    constant's type. Values were checked when their wave was submitted; ValueError otherwise."""
    expected = const.value
    if isinstance(expected, (tuple, list)):
        items = json.loads(text)
        if not isinstance(items, list) or len(items) != len(expected):
            raise ValueError(f"{const.name}: {text!r} is not a list of {len(expected)}")
        converted = [_parse_scalar(e, item if isinstance(item, str) else json.dumps(item)) for e, item in
                     zip(expected, items)]
        return tuple(converted) if isinstance(expected, tuple) else converted
    return _parse_scalar(expected, text)


def _parse_scalar(expected: Value, text: str) -> Value:
    kind = kind_of(expected)
    if kind == "bool":
        if text.lower() in ("1", "true"):
            return True
        if text.lower() in ("0", "false"):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def render_value(value: Value, like: str = "") -> str:
    """Python source for a value; a string keeps the quote style of `like` (the text it replaces)."""
    if isinstance(value, str):
        if like.startswith('"') and '"' not in value and "\\" not in value and value.isprintable():
            return f'"{value}"'
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(render_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return repr(value)


def rewrite(source: str, scan: ConstantScan, values: dict[str, Value]) -> str:
    """The source with each named constant's value expression replaced (pure).

    A value equal to the current one leaves the text as written (`2**19` stays `2**19`), so the same
    configuration always gives the same bytes, and a diff shows only what really changed.
    """
    edits = []
    for name, value in values.items():
        const = scan.knobs[name]
        if _same(const.value, value):
            continue
        edits.append((const.start, const.end, render_value(value, const.text)))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


def _same(a: Value, b: Value) -> bool:
    return type(a) is type(b) and a == b


def seed_change(source: str, scan: ConstantScan, seed: int = 42) -> str | None:
    """The smallest edit that adds a SEED constant to a script that fixes its seed in code, or None.

    `torch.manual_seed(42)` and friends get `SEED` for their literal argument, and `SEED = 42` goes
    after the last constant knob (or after the imports). Returns the new source, for a diff to show.
    """
    if "SEED" in scan.knobs:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    offsets = _line_offsets(source)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    literal = seed
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
                and (getattr(node.func, "attr", None) or getattr(node.func, "id", "")).endswith("seed")
                and len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, int) and not isinstance(node.args[0].value, bool)):
            arg = node.args[0]
            literal = arg.value
            line = lines[arg.lineno - 1]
            start = offsets[arg.lineno - 1] + _char_col(line, arg.col_offset)
            end = offsets[arg.end_lineno - 1] + _char_col(lines[arg.end_lineno - 1], arg.end_col_offset)
            edits.append((start, end, "SEED"))
    if not edits:
        return None
    if scan.knobs:  # after the knob block, where a reader looks for it
        last = max(scan.knobs.values(), key=lambda c: c.end)
        after_line = source[: last.end].count("\n") + 1
    else:
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        after_line = max((n.end_lineno or n.lineno) for n in imports) if imports else 0
    first_use = min(start for start, _, _ in edits)
    insert_at = min(offsets[min(after_line, len(offsets) - 1)], offsets[source[:first_use].count("\n")])
    edits.append((insert_at, insert_at, f"SEED = {literal}  # random seed: the fleet sets 0..seeds-1 per run\n"))
    for start, end, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        source = source[:start] + text + source[end:]
    return source


__all__ = [
    "Constant",
    "ConstantScan",
    "NotAKnob",
    "ScriptError",
    "kind_of",
    "parse_config_value",
    "render_value",
    "rewrite",
    "scan_constants",
    "seed_change",
    "value_problem",
]
