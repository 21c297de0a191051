"""Hostile text in descriptions and crash reasons: every command exits 0 and prints no escape character.

User text reaches the terminal from wave files (descriptions, which become labels) and from runs
(crash reasons, log lines). None of it may be read as rich markup (`[/bold]` used to fail `fleet
status` for good, since it is stored) or reach the terminal as a control sequence; `--json` keeps
it exactly as written.
"""
from __future__ import annotations

import json

import pytest
from fleet_cli import make_project, teardown

MARKUP = "[/bold] closes nothing [red]red[/red] [link=https://example.com]link[/link] [bold"
ANSI = "\x1b[31mred\x1b[0m \x1b[2J\x1b[H cleared \x9b2J 8-bit CSI"
OSC = "\x1b]0;retitled\x07 \x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\ \u202eesrever"
NEWLINES = "first line\nsecond line\r\nthird\tcolumn"
LONG = "x" * 10_000 + "\x1b[5m" + "[/]" * 50
HOSTILE = [MARKUP, ANSI, OSC, NEWLINES, LONG]
# what a terminal must never receive from user text: ESC, an 8-bit CSI, a BEL, a bidi override
FORBIDDEN = ("\x1b", "\x9b", "\x07", "\u202e")


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FORCE_COLOR", raising=False)  # our own colours would be escapes too
    runner = make_project(tmp_path, monkeypatch, capsys)
    train = runner.root / "train" / "train.py"  # the workload's crash message is hostile too
    train.write_text(train.read_text().replace(
        'print("Traceback (most recent call last):\\nRuntimeError: boom")',
        f'print("Traceback (most recent call last):\\nRuntimeError: " + {json.dumps(MARKUP + " " + ANSI)})'))
    assert "[/bold]" in train.read_text()
    yield runner
    teardown(runner)


def wave_file(fleet) -> str:
    lines = ["name: hostile", "env: {TIME_BUDGET: 0.05}", "experiments:"]
    lines += [f"  - {{MATRIX_LR: {0.01 * (i + 1):.2f}, description: {json.dumps(text)}}}" for i, text in enumerate(HOSTILE)]
    lines.append(f"  - {{CRASH: 1, description: {json.dumps(MARKUP)}}}")
    fleet.write("hostile.yaml", "\n".join(lines) + "\n")
    return "hostile.yaml"


def run_clean(fleet, *args: str) -> str:
    code, out, err = fleet(*args)
    assert code == 0, (args, err[-2000:])
    for text in (out, err):
        bad = [c for c in FORBIDDEN if c in text]
        assert not bad, (args, bad, text[:500])
    return out


def test_every_command_shows_hostile_text_as_plain_text(fleet):
    path = wave_file(fleet)
    out = run_clean(fleet, "wave", path, "--dry-run")
    assert "[/bold] closes nothing" in out and "␛[31mred" in out  # shown as what it says
    run_clean(fleet, "wave", path, "--wait")
    crash = next(e.id for e in fleet.ledger.experiments() if e.state.value == "crash")
    assert "[/bold]" in fleet.ledger.result(crash).reason  # the stored reason is hostile too
    status = run_clean(fleet, "status")
    assert "hostile" in status
    table = run_clean(fleet, "results")
    assert "[/bold] closes nothing" in table and "[red]red[/red]" in table
    run_clean(fleet, "results", "--format", "tsv")
    run_clean(fleet, "results", "--limit", "3")
    run_clean(fleet, "watch", "--once")
    logs = run_clean(fleet, "logs", crash)
    assert "RuntimeError: [/bold] closes nothing" in logs
    run_clean(fleet, "report", "-o", str(fleet.root / "report.md"))
    assert not any(c in (fleet.root / "report.md").read_text() for c in FORBIDDEN)
    run_clean(fleet, "plot", "-o", str(fleet.root / "progress.png"))
    run_clean(fleet, "results", "--format", "table", "-o", str(fleet.root / "board.txt"))
    assert not any(c in (fleet.root / "board.txt").read_text() for c in FORBIDDEN)
    run_clean(fleet, "cancel", crash)  # already finished: nothing to cancel, still fine


def test_json_keeps_the_text_exactly(fleet):
    fleet.json("wave", wave_file(fleet), "--wait")
    rows = fleet.json("results")["rows"]
    assert sorted(r["label"] for r in rows) == sorted(HOSTILE + [MARKUP])


@pytest.mark.parametrize("text, one_line, shown", [
    ("plain text", True, "plain text"),
    ("\x1b[31mred\x1b[0m", True, "␛[31mred␛[0m"),
    ("\x1b]0;title\x07", True, "␛]0;title␇"),
    ("a\nb\r\nc\td", True, "a b  c d"),
    ("a\nb\td", False, "a\nb    d"),
    ("\x9b2J \u202eevil \x7f", True, "\ufffd2J \ufffdevil ␡"),
    ("[/bold] stays as written", True, "[/bold] stays as written"),
])
def test_plain_makes_every_control_character_visible(text, one_line, shown):
    from fleet.plain_text import plain

    assert plain(text, one_line=one_line) == shown
