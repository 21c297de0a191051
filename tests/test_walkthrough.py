"""instructions.md, followed literally on the local backend: journal → next → wave → wait → promote → verdict → adopt,
each step the one `fleet next` names first.

Every command this test runs is first looked up among instructions.md's ```bash commands (with its
placeholders), so the walk-through breaks when the instructions and the fleet drift apart. The wave
file is the one instructions.md shows, with a tiny budget. Two local slots play an H100 (the screen
tier) and an H200 (the validate tier); the tiny workload's "current code" starts with a poor default
MATRIX_LR, so the screen finds a better value and the validation must say `keep`.
"""
from __future__ import annotations

import json

import yaml
from fleet_cli import make_project, teardown
from test_docs import REPO, doc_commands, fenced_blocks

INSTRUCTIONS = "instructions.md"


def documented(template: str) -> list[str]:
    """The argv of a command instructions.md shows (placeholders kept), or fail naming the drift."""
    commands = [c.command for c in doc_commands(INSTRUCTIONS) if c.marker is None]
    assert template in commands, f"instructions.md no longer shows `{template}`; commands: {commands}"
    return template.split()[1:]


def run(fleet, template: str, **ids: str):
    argv = [ids.get(word, word) for word in documented(template)]
    code, out, err = fleet(*argv)
    assert code == 0, f"`fleet {' '.join(argv)}` exited {code}: {err}"
    return json.loads(out) if "--json" in argv else out


def test_following_instructions_end_to_end(tmp_path, monkeypatch, capsys):
    fleet = make_project(tmp_path, monkeypatch, capsys, slots="H100,H200")
    try:
        train = fleet.root / "train" / "train.py"
        # The code as the agent finds it: MATRIX_LR defaults to 0.02 (the tiny workload's optimum is 0.04).
        train.write_text(train.read_text().replace("MATRIX_LR = Knob(0.04, min=0.0)", "MATRIX_LR = Knob(0.02, min=0.0)"))

        # Setup 3: the journal, generated from the (empty) ledger.
        run(fleet, "fleet journal")
        assert "fleet journal: begin" in (fleet.root / "journal.md").read_text()

        # Setup 4: where things stand: nothing has run, so the first action is the first wave.
        nxt = run(fleet, "fleet next --json")
        assert [a["kind"] for a in nxt["actions"]] == ["start"]
        status = run(fleet, "fleet status --json")
        assert status["best"] is None and status["waves"] == [] and "idle_clusters" in status
        assert run(fleet, "fleet results --json")["rows"] == []

        # Loop 2: the wave instructions.md shows, with a tiny budget.
        blocks = [yaml.safe_load(body) for _, body in fenced_blocks((REPO / INSTRUCTIONS).read_text(), "yaml")]
        wave = next(b for b in blocks if "grid" in b)
        assert {"description": "baseline"} in wave["experiments"]
        wave["env"]["TIME_BUDGET"] = 0.05
        (fleet.root / "waves").mkdir()
        (fleet.root / "waves" / "lr-wd.yaml").write_text(yaml.safe_dump(wave))
        dry = run(fleet, "fleet wave waves/lr-wd.yaml --dry-run --json")
        assert len(dry["experiments"]) == 7 and fleet.ledger.waves() == []

        # Loop 3: submit, keep editing (the snapshot protects the queued code), then block.
        submitted = run(fleet, "fleet wave waves/lr-wd.yaml --json")
        assert submitted["wave"] == "lr-wd" and submitted["experiments"] == 7
        screened_code = train.read_text()
        train.write_text(screened_code + "# half-finished next idea\n")
        board = run(fleet, "fleet wait WAVE --json", WAVE="lr-wd")
        assert [r["state"] for r in board["rows"]] == ["done"] * 7
        assert {r["accelerator"] for r in board["rows"]} == {"H100"}  # the screen tier
        assert board["rows"][0]["label"].startswith("MATRIX_LR=0.04")

        status = run(fleet, "fleet status --json")
        assert status["best"]["experiment"] == board["rows"][0]["experiment"]
        assert status["waves"][0]["finished"] == 7
        nxt = run(fleet, "fleet next --json")
        assert nxt["actions"][0]["command"] == "fleet promote lr-wd"  # the idle slots' filler

        # Loop 4: promote the best three to the validate tier, block, judge.
        promoted = run(fleet, "fleet promote WAVE --top 3 --json", WAVE="lr-wd")
        assert promoted["wave"] == "lr-wd-promote" and promoted["tier"] == "validate"
        assert promoted["experiments"] == 12  # 3 candidates + the baseline, 3 paired seeds each to start
        assert promoted["rule"]["design"] == "sequential" and promoted["rule"]["min_effect"] == 0.0005
        run(fleet, "fleet wait WAVE-promote --json", **{"WAVE-promote": "lr-wd-promote"})
        nxt = run(fleet, "fleet next --json")
        assert nxt["actions"][0]["command"] == "fleet verdict lr-wd-promote" and nxt["unread"][0] == "lr-wd-promote"
        report = run(fleet, "fleet verdict WAVE-promote --json", **{"WAVE-promote": "lr-wd-promote"})
        assert report["complete"] and report["accelerators"] == ["H200"]
        verdicts = {c["label"]: c["verdict"] for c in report["candidates"]}
        assert set(verdicts.values()) <= {"keep", "discard", "inconclusive"}
        assert report["candidates"][0]["verdict"] == "keep" and report["best_keep"]

        # Loop 5: adopt only `keep`: its knob values become the defaults of the preset it ran with,
        # merged into the working tree: the edit made since (the next idea) is kept.
        winner = report["best_keep"]
        assert next(c for c in report["candidates"] if c["experiment"] == winner)["verdict"] == "keep"
        nxt = run(fleet, "fleet next --json")
        first = next(a for a in nxt["actions"] if a["kind"] != "read")  # backfill verdicts may be unread too
        assert first["command"] == f"fleet adopt {winner}" and "preset `cpu`" in first["why"]
        adopted = run(fleet, "fleet adopt EXP --json", EXP=winner)
        assert adopted["changed"] == ["train/train.py"] and adopted["knobs"]["MATRIX_LR"] == "0.04"
        # It ran the cpu preset (its summary says so): gpu and tiny keep their defaults. TIME_BUDGET was
        # the wave's `env`, the same for every experiment: not this experiment's change, not written.
        assert adopted["defaults"] == [{"knob": "MATRIX_LR", "from": "Knob(0.02, ...)",
                                        "to": "Knob(0.02, 0.04, 0.02, ...)"}]
        expected = screened_code.replace("MATRIX_LR = Knob(0.02, min=0.0)", "MATRIX_LR = Knob(0.02, 0.04, 0.02, min=0.0)")
        assert train.read_text() == expected + "# half-finished next idea\n"

        # Loop 6: recheck the current best against the original baseline, on fresh seeds.
        recheck = run(fleet, "fleet recheck --json")
        assert recheck["wave"] == f"{winner}-recheck"
        run(fleet, "fleet wait --json")
        rechecked = run(fleet, "fleet verdict WAVE-promote --json", **{"WAVE-promote": recheck["wave"]})
        assert rechecked["recheck"] and rechecked["candidates"][0]["verdict"] == "keep"

        # Finish: everything done, the journal written, results exported, fleet torn down.
        run(fleet, "fleet wait --json")
        run(fleet, "fleet journal")
        journal = (fleet.root / "journal.md").read_text()
        assert winner in journal.split("### Adopted changes")[1].split("###")[0]
        run(fleet, "fleet results --format tsv -o results.tsv")
        assert (fleet.root / "results.tsv").read_text().startswith("experiment\tval_bpb\tmemory_gb\tstatus")
        run(fleet, "fleet down --all -y")
        assert run(fleet, "fleet status --json")["clusters"] == []
    finally:
        teardown(fleet)
