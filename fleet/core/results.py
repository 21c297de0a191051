"""A finished job's log -> a result, or a crash with a reason. Logs are untrusted text.

What a run prints (see train/train.py and experiment.yaml):

    ---
    val_bpb: 0.997900
    training_seconds: 300.1
    device: NVIDIA H100 80GB HBM3
    mfu_percent: unknown
    EXPERIMENT_STATUS: done
    EXPERIMENT_RESULT: exp-01 val_bpb=0.997900 memory_gb=44.0

Metrics come from the last complete `---` block: a `---` line followed directly by `key: value`
lines (the block ends at the first line that is not one). A run is done only when it exited 0 (or
the exit code is unknown), reported a finite val_bpb, and nothing says it crashed. Anything that
merely looks like a result — a metric outside a block, a malformed number, a result line for
another experiment, a half-written last line — never becomes one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

TAIL_LINES = 50
MAX_LINE = 2000  # characters kept per line; longer lines are cut and never parsed as data
MAX_TEXT = 8 * 1024 * 1024  # characters parsed from the end of a log; the summary is at the end
MAX_VALUE = 200

ANSI = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC (window titles, hyperlinks)
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor movement)
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
SUMMARY_LINE = re.compile(r"([a-z][A-Za-z0-9_]*):[ \t]*(.*)")  # lowercase first: not EXPERIMENT_*
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
KEY_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)")
STATUS_LINE = re.compile(r"EXPERIMENT_STATUS:[ \t]*(done|crash)[ \t]*")
RESULT_LINE = re.compile(r"EXPERIMENT_RESULT:[ \t]+(\S+)((?:[ \t]+\S+)*)[ \t]*")
FAILURE_LINE = re.compile(r"TRAINING_FAILED\b.*")
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?")


@dataclass(frozen=True)
class ParsedRun:
    outcome: str  # "done" | "crash"
    val_bpb: float | None  # only for done runs: the value of the configured metric (val_bpb by default)
    metrics: dict[str, float | str] = field(default_factory=dict)
    reason: str = ""  # why it crashed; "" when done
    tail: list[str] = field(default_factory=list)  # the last lines of the log, cleaned


def clean_lines(text: str) -> tuple[list[str], list[bool]]:
    """Log text -> printable lines, and per line whether it can be trusted as data.

    Escape codes are stripped, a `\\r` progress line keeps what the terminal would show (its last
    segment), control characters go, and over-long lines are cut (and so untrusted).
    """
    if len(text) > MAX_TEXT:
        cut = text.find("\n", len(text) - MAX_TEXT)
        text = text[cut + 1 :] if cut >= 0 else text[-MAX_TEXT:]
    lines, trusted = [], []
    for raw in text.split("\n"):
        segments = [s for s in raw.split("\r") if s.strip()]
        line = CONTROL.sub("", ANSI.sub("", segments[-1] if segments else ""))
        ok = len(line) <= MAX_LINE
        lines.append(line if ok else line[:MAX_LINE] + " ...[line cut]")
        trusted.append(ok)
    if lines and lines[-1] == "" and text.endswith("\n"):
        lines.pop()
        trusted.pop()
    return lines, trusted


def parse_value(text: str) -> float | str:
    """'1.5' -> 1.5; anything not a plain finite number stays text ('unknown', 'nan', '1.2.3')."""
    text = text.strip()[:MAX_VALUE]
    if NUMBER.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return value
    return text


def summary_blocks(lines: list[str], trusted: list[bool]) -> list[dict[str, float | str]]:
    """Every complete `---` block, in order (a block needs at least one line; no repeated keys)."""
    blocks: list[dict[str, float | str]] = []
    current: dict[str, float | str] | None = None
    for line, ok in zip(lines, trusted):
        stripped = line.strip()
        match = SUMMARY_LINE.fullmatch(stripped) if ok and current is not None else None
        if match:
            if match.group(1) in current:  # a key twice in one block: the block cannot be trusted
                current = None
            else:
                current[match.group(1)] = parse_value(match.group(2))
            continue
        if current:
            blocks.append(current)
        current = {} if stripped == "---" and ok else None
    if current:
        blocks.append(current)
    return blocks


def _metric_problem(value: float | str | None, metric: str = "val_bpb") -> str | None:
    if value is None:
        return f"no {metric} in summary"
    if isinstance(value, float):
        return None
    word = value.strip().lower().lstrip("+-")
    if word in ("nan", "inf", "infinity"):
        return f"{metric} is {word}"
    if not value.strip():
        return f"{metric} is empty"
    return f"{metric} is not a number: {value[:40]!r}"


def _wrapper_lines(
    lines: list[str], trusted: list[bool], experiment_id: str
) -> tuple[set[str], dict[str, float | str]]:
    """The wrapper's statuses seen, and the last EXPERIMENT_RESULT line for this experiment."""
    statuses: set[str] = set()
    result: dict[str, float | str] = {}
    for line, ok in zip(lines, trusted):
        stripped = line.strip()
        if not ok or not stripped.startswith("EXPERIMENT_"):
            continue
        status = STATUS_LINE.fullmatch(stripped)
        if status:
            statuses.add(status.group(1))
            continue
        match = RESULT_LINE.fullmatch(stripped)
        if match and match.group(1) == experiment_id:
            result = {}  # the last result line for this experiment wins, whole
            for key, value in KEY_VALUE.findall(match.group(2)):
                result.setdefault(key, parse_value(value))
    return statuses, result


def _crash_reason(lines: list[str], exit_code: int | None, statuses: set[str]) -> str | None:
    for line in reversed(lines):
        if FAILURE_LINE.fullmatch(line.strip()):
            return line.strip()[:300]
    if exit_code not in (0, None):
        for line in reversed(lines[-TAIL_LINES:]):
            if EXCEPTION_LINE.fullmatch(line.strip()):
                return f"exit code {exit_code} ({line.strip()[:200]})"
        return f"exit code {exit_code}"
    if "crash" in statuses:
        return "EXPERIMENT_STATUS: crash"
    return None


def parse_run_log(text: str, experiment_id: str, exit_code: int | None, metric: str = "val_bpb") -> ParsedRun:
    """Classify one attempt's log as done (with a finite value of `metric`, fleet.yaml's `metric.name`,
    kept in `val_bpb` whatever its name) or crash (with a reason)."""
    lines, trusted = clean_lines(text)
    tail = lines[-TAIL_LINES:]
    parsed_trusted = list(trusted)
    if exit_code != 0 and lines and not text.endswith(("\n", "\r")):
        # A run that did not exit cleanly may have been cut mid-line: `val_bpb: 0.99` of `0.9912`.
        parsed_trusted[-1] = False
    blocks = summary_blocks(lines, parsed_trusted)
    metrics: dict[str, float | str] = dict(blocks[-1]) if blocks else {}
    statuses, result_line = _wrapper_lines(lines, parsed_trusted, experiment_id)
    for key, value in result_line.items():
        metrics.setdefault(key, value)
    reason = _crash_reason(lines, exit_code, statuses)
    if reason is None:
        if not blocks and metric not in result_line:
            reason = "no summary (`---` block) in log"
        else:
            reason = _metric_problem(metrics.get(metric), metric)
    if reason is not None:
        return ParsedRun("crash", None, metrics, reason, tail)
    return ParsedRun("done", float(metrics[metric]), metrics, "", tail)
