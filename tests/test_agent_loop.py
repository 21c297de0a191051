"""A scripted agent runs the research loop on the local backend by doing what `fleet next` says first.

The stand-in workload (tests/fixtures/tinywork) starts from a poor default (MATRIX_LR=0.01; 0.04 is
best), so screens find better values, promotions keep them and adoptions move the default. The agent
only executes the first action of `fleet next --json` each round: a new wave when it asks for one
(written to the file it names, which must not exist yet), promote, verdict, adopt, wait. Checked
every round: every id an action names exists; a command has no placeholder; with clusters running
dry and nothing to read or adopt, the first action fills them; and the controller never leaves a
slot idle while experiments are pending.
"""
from __future__ import annotations

import re
import shlex
from collections import Counter

from fleet_cli import make_project, teardown

from fleet.types import ExperimentState

HORIZON = "0.05"  # minutes: the stand-in's runs take about a second, so "soon idle" is a few seconds here


def default_lr(root) -> float:
    """The MATRIX_LR default the agent's code has now (the first value of its Knob(...): every preset's default
    that adopt did not rewrite; adopt rewrites the cpu preset, the one the stand-in runs)."""
    text = (root / "train" / "train.py").read_text()
    line = next(line for line in text.splitlines() if line.startswith("MATRIX_LR = Knob("))
    values = [v.strip() for v in line[len("MATRIX_LR = Knob("):].split(",") if "=" not in v]
    return float(values[1] if len(values) > 1 else values[0])


def write_wave(path, number: int, center: float) -> None:
    values = sorted({round(min(0.06, center + d), 4) for d in (0.005, 0.01, 0.02)} - {round(center, 4)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"name: w{number}\nenv: {{TIME_BUDGET: 0.05}}\ngrid:\n  MATRIX_LR: {values}\n"
                    "experiments:\n  - {description: baseline}\n")


def exists(ledger, ident: str) -> bool:
    return ledger.wave(ident) is not None or ledger.experiment(ident) is not None


def idle_with_pending(ledger) -> bool:
    """A slot with nothing queued or running while an experiment waits (any slot runs any of them here)."""
    pending = ledger.counts().get(ExperimentState.PENDING.value, 0)
    busy = {a.cluster for a in ledger.attempts(active=True)}
    return bool(pending) and any(c.name not in busy for c in ledger.clusters() if c.state.value == "up")


def test_an_agent_doing_what_fleet_next_says_keeps_the_slots_busy_and_adopts_what_is_kept(tmp_path, monkeypatch, capsys):
    fleet = make_project(tmp_path, monkeypatch, capsys)
    script = fleet.root / "train" / "train.py"
    script.write_text(script.read_text().replace("MATRIX_LR = Knob(0.04, min=0.0)", "MATRIX_LR = Knob(0.01, min=0.0)"))
    done: Counter = Counter()
    submitted = 0
    try:
        for round_ in range(80):
            nxt = fleet.json("next", "--horizon", HORIZON)
            ledger = fleet.ledger
            assert nxt["actions"], f"round {round_}: fleet next suggests nothing"
            for action in nxt["actions"]:
                missing = [i for i in action["ids"] if not exists(ledger, i)]
                assert not missing, f"round {round_}: {action['command']} names {missing}, which do not exist"
                words = shlex.split(action["command"])
                assert words[0] == "fleet" and not any(w.isupper() for w in words), action["command"]
                for word in words[2:]:
                    if word.startswith("--") or re.fullmatch(r"[\d.]+", word):
                        continue
                    if word.endswith(".yaml"):
                        assert not (fleet.root / word).exists(), f"{action['command']}: {word} exists already"
                    else:
                        assert exists(ledger, word), f"round {round_}: {action['command']}: {word} does not exist"
            bookkeeping = [a for a in nxt["actions"] if a["kind"] in ("read", "adopt")]
            if nxt["idle_clusters"] and not bookkeeping:
                assert nxt["actions"][0]["kind"] == "fill", (round_, nxt["idle_clusters"], nxt["actions"])
            action = nxt["actions"][0]
            words = shlex.split(action["command"])[1:]
            done[action["kind"]] += 1
            if words[0] == "wave":
                submitted += 1
                write_wave(fleet.root / words[1], submitted, default_lr(fleet.root))
                fleet.json(*words)
                assert fleet.ledger.has_unfinished_work(), "filling the clusters queued nothing"
            elif words[0] == "wait":
                fleet.json(*words, "--timeout", "180")
            elif words[0] == "verdict":
                report = fleet.json(*words)
                assert report["complete"]
            elif words[0] == "adopt":
                before = default_lr(fleet.root)
                adopted = fleet.json(*words)
                assert adopted["preset"] == "cpu" and any(d["knob"] == "MATRIX_LR" for d in adopted["defaults"])
                assert default_lr(fleet.root) != before
            else:
                fleet.json(*words)
            fleet.wait_until(lambda: not idle_with_pending(fleet.ledger), timeout=30)
            if done["adopt"] >= 2 and submitted >= 3 and done["read"] >= 2:
                break
        else:
            raise AssertionError(f"the loop did not get through screen, promote, verdict and adopt twice: {done}")
        assert done["fill"] >= 3 and done["adopt"] >= 2
        # what was adopted is on record, with the preset it edited, and the next wave compares against it
        adoptions = fleet.ledger.adoptions()
        assert len(adoptions) == done["adopt"] and all(a.preset == "cpu" for a in adoptions)
        assert default_lr(fleet.root) > 0.01
        nxt = fleet.json("next", "--horizon", HORIZON)
        assert not nxt["keeps_not_adopted"] or all(exists(fleet.ledger, e) for e in nxt["keeps_not_adopted"])
        journal = fleet.json("journal")
        assert journal["adopted"] == len(adoptions)
        text = (fleet.root / "journal.md").read_text()
        assert "### Adopted changes" in text and adoptions[0].experiment_id in text
    finally:
        teardown(fleet)
