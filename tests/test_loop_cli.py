"""The loop's bookkeeping through the CLI on the local backend: seeded grid verdicts, chosen promotions, more
seeds, verdicts read and changes adopted on record, `fleet next` and its hints, the journal and the report."""
from __future__ import annotations

import pytest
from fleet_cli import make_project, teardown

from fleet.observe.report import ConfigVerdict, render_report

SCREEN = """\
name: screen
env: {TIME_BUDGET: 0.05}
seeds: 3
grid:
  MATRIX_LR: [0.02, 0.04]
experiments:
  - {MATRIX_LR: 0.01, description: baseline}
"""


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys)
    runner.write("fleet.yaml", "backfill: {enabled: false}\n")  # the run counts below are the agent's own
    yield runner
    teardown(runner)


def first(nxt: dict, kind: str) -> dict | None:
    return next((a for a in nxt["actions"] if a["kind"] == kind), None)


def test_the_loops_bookkeeping(fleet):
    fleet.write("screen.yaml", SCREEN)
    fleet.json("wave", "screen.yaml", "--wait")
    exps = {e.config.get("MATRIX_LR"): e for e in fleet.ledger.experiments(wave="screen") if e.seed == 0}

    # a seeded grid is judged on its own seed pairs, every configuration against its baseline
    grid = fleet.json("verdict", "screen")
    verdicts = {c["config"]["MATRIX_LR"]: c["verdict"] for c in grid["candidates"]}
    assert verdicts == {"0.02": "keep", "0.04": "keep"} and grid["rule"]["design"] == "fixed"
    assert grid["candidates"][0]["n"] == 3 and grid["kind"] == "grid"

    # promote a chosen configuration; fleet wait's hint names the verdict to read
    chosen = fleet.json("promote", "--experiments", exps["0.02"].id, "--top", "1")
    assert [c["config"]["MATRIX_LR"] for c in chosen["candidates"]] == ["0.02"]
    wave = chosen["wave"]
    code, _, err = fleet("wait", wave, "--json")
    assert code == 0 and f"`fleet verdict {wave}`" in err and "WAVE" not in err

    # the finished verdict is unread until `fleet verdict` shows it; then its keep is to adopt, with the preset
    nxt = fleet.json("next")
    read = first(nxt, "read")
    assert read["command"] == f"fleet verdict {wave}" and nxt["unread"] == [wave]
    code, out, err = fleet("verdict", wave)
    keep = fleet.json("verdict", wave)["candidates"][0]
    assert keep["verdict"] == "keep"
    assert f"fleet adopt {keep['experiment']}" in err and "preset's Knob(...) defaults in train/train.py" in err
    assert "MATRIX_LR=0.02" in err and "`cpu`" in err
    nxt = fleet.json("next")
    assert nxt["unread"] == [] and first(nxt, "read") is None
    adopt = first(nxt, "adopt")
    assert adopt["command"] == f"fleet adopt {keep['experiment']}" and "preset `cpu`" in adopt["why"]

    # a dry run records nothing; the adoption is recorded with what it wrote, and next stops suggesting it
    fleet.json("adopt", keep["experiment"], "--dry-run")
    assert fleet.ledger.adoptions() == []
    code, out, err = fleet("adopt", keep["experiment"])
    assert code == 0 and "defaults written to the `cpu` preset's Knob(...) defaults in train/train.py" in out
    [adoption] = fleet.ledger.adoptions()
    assert adoption.experiment_id == keep["experiment"] and adoption.preset == "cpu"
    assert adoption.defaults == [{"knob": "MATRIX_LR", "from": "0.04", "to": "0.02"}]
    nxt = fleet.json("next")
    assert nxt["keeps_not_adopted"] == [] and nxt["adopted"][0]["experiment"] == keep["experiment"]
    assert any("stale baseline" in w for w in nxt["warnings"])  # adopted since the screen's baseline ran
    code, _, err = fleet("verdict", wave)  # its hint follows the ledger's adoptions, as `fleet next` does
    assert code == 0 and f"{keep['experiment']} is adopted already" in err and "fleet adopt" not in err

    # more seeds: refused while every candidate is decided, unless named; then a continuation wave
    code, _, err = fleet("promote", wave, "--add-seeds", "2")
    assert code == 2 and "decided" in err and "keep" in err
    code, _, err = fleet("promote", "screen", "--add-seeds", "2")
    assert code == 2 and "grid wave" in err
    more = fleet.json("promote", wave, "--add-seeds", "2", "--experiments", keep["experiment"])
    assert more["wave"] == f"{wave}-more" and more["experiments"] == 4 and more["rule"]["max_seeds"] == keep["n"] + 2

    # the journal: a generated section between markers, the agent's own notes kept around it
    fleet.json("wait", "--timeout", "120")
    journal = fleet.root / "notes" / "journal.md"
    made = fleet.json("journal", "-o", str(journal))
    assert made["updated"] is False and made["adopted"] == 1
    text = journal.read_text()
    assert "### Adopted changes" in text and keep["experiment"] in text and "MATRIX_LR 0.04 -> 0.02 (preset cpu)" in text
    assert "| `screen` | MATRIX_LR=0.04 |" in text and "### Tried ideas" in text
    journal.write_text(text + "\nidea: try WEIGHT_DECAY next, it interacts with LR\n")
    again = fleet.json("journal", "-o", str(journal))
    assert again["updated"] is True
    text = journal.read_text()
    assert "idea: try WEIGHT_DECAY next" in text and text.count("fleet journal: begin") == 1
    code, _, err = fleet("journal", "--track", "nope")
    assert code == 2 and "--track 'nope'" in err

    # the report records what was adopted and with which verdict
    fleet.json("report", "-o", str(fleet.root / "report.md"))
    report = (fleet.root / "report.md").read_text()
    adopted_section = report.split("## Adopted changes")[1].split("##")[0]
    assert keep["experiment"] in adopted_section and f"keep in {wave}" in adopted_section


def test_an_unfinished_promotion_is_running_in_the_report_not_inconclusive():
    common = dict(generated="now", scope="all waves", waves=(), rows=(), sorted_by="raw", calibration="", cost={},
                  plot_file=None)
    running = ConfigVerdict("p", "A", ("p-002",), 2, 1.0, 1.01, -0.01, None, "inconclusive", "undecided at 2 pairs",
                            complete=False)
    text = render_report(verdicts=[running], **common)
    assert "| p | A | running |" in text and "| p | A | inconclusive |" not in text
    done = render_report(verdicts=[ConfigVerdict("p", "A", ("p-002",), 16, 1.0, 1.01, -0.01, None, "inconclusive",
                                                 "undecided at 16 pairs")], **common)
    assert "| p | A | inconclusive |" in done


def test_a_diff_is_printed_without_padding():
    """rich's Syntax pads every line to the terminal's width; a diff must print as the diff it is."""
    import io
    import re

    from fleet.cli.code_cmds import diff_text
    from fleet.cli.output import PlainConsole

    diff = "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-LR = 0.04\n+LR = 0.05\n x = [1]\n"
    out = io.StringIO()
    PlainConsole(file=out, width=120, force_terminal=True).print(diff_text(diff))
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue()).splitlines()
    assert lines == diff.splitlines()  # the same lines, none padded with spaces


def test_status_with_idle_clusters_and_nothing_queued_points_to_fleet_next(fleet):
    fleet.write("one.yaml", "name: one\nenv: {TIME_BUDGET: 0.05}\nexperiments:\n  - {description: baseline}\n")
    code, _, err = fleet("status")
    assert code == 0 and "fleet next" not in err  # nothing ran yet, no cluster is up: no hint
    fleet.json("wave", "one.yaml", "--wait")
    code, _, err = fleet("status")
    assert code == 0 and "`fleet next` — 2 cluster(s) idle" in err
    # and `fleet next` does name the action: here, a new wave (the screen had nothing to promote)
    assert fleet.json("next")["actions"][0]["kind"] == "fill"
