"""`fleet promote` / `verdict` / `ablate` / `ablation`: end to end on the local backend, plus the glue's rules.

Slots are labelled H100 and H200 (FLEET_LOCAL_ACCELERATORS) so tiers place work: the screen tier on
the H100 slot, the validate tier on the H200 slot. The tiny workload's seed noise is the same shift
for every configuration, so paired differences are exact and the verdicts are known.
"""
from __future__ import annotations

import pytest
from fleet_cli import make_project, teardown

from fleet.core.expand import config_key
from fleet.core.ledger_rows import ExperimentRow, ResultRow, WaveRow
from fleet.errors import FleetError, InputError
from fleet.research.plans import (
    plan_promotion,
    promotion_report,
    rank_screen,
    resolve_baseline,
)
from fleet.observe.leaderboard import autoresearch_status, build_rows
from fleet.research.normalize_view import research_results
from fleet.types import ExperimentState

SCREEN = """\
name: screen
tier: screen
env: {TIME_BUDGET: 0.05}
grid:
  MATRIX_LR: [0.01, 0.02, 0.04]
experiments:
  - {MATRIX_LR: 0.01, description: baseline}
  - {MATRIX_LR: 0.01, WEIGHT_DECAY: 0.0, description: same as baseline}
"""

STACK = """\
name: stack
tier: screen
env: {TIME_BUDGET: 0.05}
experiments:
  - {MATRIX_LR: 0.01, description: baseline}
  - {MATRIX_LR: 0.04, WEIGHT_DECAY: 0.1, DEPTH: 3, description: stacked}
"""

CANDIDATE_KEYS = {"rank", "label", "config", "changes", "config_key", "experiment", "experiments", "screen_value",
                  "n", "mean", "std", "baseline_mean", "baseline_std", "delta", "p_value", "noise_floor", "verdict",
                  "reason", "missing_seeds"}


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys, slots="H100,H200")
    yield runner
    teardown(runner)


def accelerators_of(fleet, wave: str) -> set[str]:
    ledger = fleet.ledger
    return {a.accelerator for e in ledger.experiments(wave=wave) for a in ledger.attempts(e.id)}


def test_screen_promote_verdict(fleet):
    fleet.write("screen.yaml", SCREEN)
    board = fleet.json("wave", "screen.yaml", "--wait")
    assert len(board["rows"]) == 4 and all(r["state"] == "done" for r in board["rows"])
    assert accelerators_of(fleet, "screen") == {"H100"}

    report = fleet.json("promote", "screen", "--wait")
    assert report["wave"] == "screen-promote" and report["kind"] == "promote" and report["parent"] == "screen"
    assert report["tier"] == "validate" and report["complete"] and report["unfinished"] == 0
    assert report["accelerators"] == ["H200"] and report["metric"] == "raw"
    assert accelerators_of(fleet, "screen-promote") == {"H200"}  # the validate tier's slot, never the H100
    base = report["baseline"]
    assert base["config"] == {"TIME_BUDGET": "0.05", "MATRIX_LR": "0.01"} and base["n"] == 3
    assert "described `baseline`" in base["source"]
    cands = report["candidates"]
    assert all(set(c) == CANDIDATE_KEYS for c in cands)
    assert [c["rank"] for c in cands] == [1, 2, 3]
    by_lr = {(c["config"]["MATRIX_LR"], "WEIGHT_DECAY" in c["config"]): c for c in cands}
    best = by_lr[("0.04", False)]
    assert cands[0]["config_key"] == best["config_key"]  # best first
    assert best["verdict"] == "keep" and best["n"] == 3 and best["delta"] < -0.03 and best["p_value"] < 0.01
    assert best["changes"] == {"MATRIX_LR": "0.04"} and best["noise_floor"] > 0
    assert by_lr[("0.02", False)]["verdict"] == "keep"
    same = by_lr[("0.01", True)]  # the baseline in all but name: never a keep
    assert same["verdict"] != "keep" and same["delta"] == pytest.approx(0.0)
    assert report["best_keep"] == best["experiment"] and best["experiment"].startswith("screen-promote-")
    # 4 configurations (baseline + 3 candidates) x 3 seeds, paired by SEED
    exps = fleet.ledger.experiments(wave="screen-promote")
    assert len(exps) == 12
    assert {e.seed for e in exps if e.config_key == base["config_key"]} == {0, 1, 2}

    again = fleet.json("verdict", "screen-promote")
    assert again == report
    code, out, err = fleet("verdict", "screen-promote")
    assert code == 0 and "keep" in out and "discard" in out and "baseline" in out
    assert f"fleet adopt {best['experiment']}" in err


def test_promote_without_wait_and_options(fleet):
    fleet.write("screen.yaml", SCREEN)
    fleet.json("wave", "screen.yaml", "--wait")
    code, out, err = fleet("promote", "screen", "--top", "0")
    assert code == 2 and "--top" in err
    code, _, err = fleet("promote", "screen", "--tier", "valdate")
    assert code == 2 and "valdate" in err and "validate" in err
    code, _, err = fleet("promote", "screen", "--baseline", "nope-001")
    assert code == 2 and "nope-001" in err

    queued = fleet.json("promote", "screen", "--top", "1", "--seeds", "2", "--tier", "screen",
                        "--baseline", "screen-002")
    assert queued["wave"] == "screen-promote" and queued["experiments"] == 4 and queued["seeds"] == 2
    assert queued["sorted_by"] == "normalized"  # runs on the reference H100 are their own normalized values
    assert queued["baseline"]["experiment"] == "screen-002" and queued["baseline"]["config"]["MATRIX_LR"] == "0.02"
    assert [c["config"]["MATRIX_LR"] for c in queued["candidates"]] == ["0.04"]
    wave = fleet.ledger.wave("screen-promote")
    assert wave.kind == "promote" and wave.parent == "screen" and wave.tier == "screen"
    fleet.json("wait", "screen-promote")
    report = fleet.json("verdict", "screen-promote")
    assert [c["verdict"] for c in report["candidates"]] == ["keep"] and report["candidates"][0]["n"] == 2


def test_error_paths(fleet):
    for command in (("promote", "nosuch"), ("verdict", "nosuch"), ("ablation", "nosuch")):
        code, out, err = fleet(*command)
        assert code == 2 and "nosuch" in err and out == ""
    code, _, err = fleet("ablate", "nosuch-001")
    assert code == 2 and "nosuch-001" in err

    fleet.write("broken.yaml", "name: broken\nenv: {TIME_BUDGET: 0.05}\nexperiments:\n  - {CRASH: 1}\n")
    fleet.json("wave", "broken.yaml", "--wait")
    code, out, err = fleet("promote", "broken")
    assert code == 1 and "no finished results" in err and "broken" in err and out == ""
    assert [w.id for w in fleet.ledger.waves()] == ["broken"]  # nothing half-submitted
    code, _, err = fleet("verdict", "broken")
    assert code == 2 and "grid wave" in err and "fleet promote broken" in err


def test_ablation_end_to_end(fleet):
    fleet.write("stack.yaml", STACK)
    fleet.json("wave", "stack.yaml")  # ablate needs only the configuration, not the result
    report = fleet.json("ablate", "stack-002", "--seeds", "2", "--wait")
    assert report["kind"] == "ablate" and report["experiment"] == "stack-002" and report["parent"] == "stack"
    assert report["complete"] and report["accelerators"] == ["H200"]
    assert [a["name"] for a in report["arms"]] == [
        "baseline", "stacked", "without:DEPTH", "without:MATRIX_LR", "without:WEIGHT_DECAY"]
    assert all(a["n"] == 2 for a in report["arms"])
    changes = {c["knob"]: c for c in report["changes"]}
    assert set(changes) == {"DEPTH", "MATRIX_LR", "WEIGHT_DECAY"}
    assert changes["MATRIX_LR"]["verdict"] == "keep" and changes["MATRIX_LR"]["contribution"] > 0.03
    assert changes["MATRIX_LR"]["baseline_value"] == "0.01" and changes["MATRIX_LR"]["stacked_value"] == "0.04"
    assert changes["WEIGHT_DECAY"]["verdict"] == "drop" and changes["WEIGHT_DECAY"]["contribution"] < 0
    assert changes["DEPTH"]["verdict"] == "drop" and changes["DEPTH"]["baseline_value"] is None
    assert report["keep"] == ["MATRIX_LR"] and sorted(report["drop"]) == ["DEPTH", "WEIGHT_DECAY"]
    wave = report["wave"]
    assert fleet.json("ablation", wave) == report == fleet.json("verdict", wave)
    code, out, err = fleet("ablation", wave)
    assert code == 0 and "without:MATRIX_LR" in out and "drop DEPTH, WEIGHT_DECAY" in err
    code, _, err = fleet("ablation", "stack")
    assert code == 2 and "not an ablation" in err
    code, _, err = fleet("ablate", "stack-001")  # the baseline itself: nothing to ablate
    assert code == 2 and "no change" in err


# ---- the glue's rules, on plain rows ------------------------------------------------------------------


def wave_row(base: dict | None = None) -> WaveRow:
    return WaveRow("w", "w", "screen", "grid", {}, base or {}, "snap1", None, None, 0.0)


def exp_row(seq: int, config: dict, description: str = "", seed: int = 0, snapshot: str = "snap1",
            state: ExperimentState = ExperimentState.DONE, seeding: str = "seed") -> ExperimentRow:
    return ExperimentRow(f"w-{seq:03d}", "w", seq, config, config_key(config), seed, description, description,
                         snapshot, "screen", state, 1, "", 0.0, 0.0, 1.0, seeding=seeding)


def result(exp: ExperimentRow, val_bpb: float | None, accelerator: str = "cpu") -> ResultRow:
    return ResultRow(exp.id, 1, "done", val_bpb, 100.0, 1.0, None, "cpu", accelerator, {}, "", "", None, 0.0)


def test_baseline_rule_order():
    wave = wave_row({"TIME_BUDGET": 0.1})
    plain, described = exp_row(1, {"A": "1"}), exp_row(2, {"A": "2"}, "Baseline")
    assert resolve_baseline(wave, [plain, described], explicit=plain).config == {"A": "1"}
    assert resolve_baseline(wave, [plain, described]).experiment == "w-002"
    fallback = resolve_baseline(wave, [plain])
    assert fallback.config == {"TIME_BUDGET": "0.1"} and fallback.experiment is None and "base env" in fallback.source


def test_screen_ranks_raw_when_nothing_normalizes_and_skips_crashes():
    a, b = exp_row(1, {"A": "1"}), exp_row(2, {"A": "2"})
    c = exp_row(3, {"A": "3"}, state=ExperimentState.CRASH)
    rows, sorted_by = rank_screen([a, b, c], {a.id: result(a, 1.2), b.id: result(b, 1.1), c.id: result(c, None)}, {})
    assert sorted_by == "raw" and [r.config_key for r in rows] == [b.config_key, a.config_key]
    rows, sorted_by = rank_screen([a, b], {a.id: result(a, 1.2), b.id: result(b, 1.1)}, {a.id: 1.0, b.id: 1.3})
    assert sorted_by == "normalized" and rows[0].config_key == a.config_key


def test_plan_promotion_pairs_seeds_and_refuses_empty_waves():
    base, good = exp_row(1, {"A": "1"}, "baseline"), exp_row(2, {"A": "2"})
    results = {base.id: result(base, 1.2), good.id: result(good, 1.1)}
    baseline = resolve_baseline(wave_row(), [base, good])
    plan = plan_promotion(wave_row(), [base, good], results, {}, baseline, top=3, seeds=2)
    assert [(p.config["A"], p.seed, p.label) for p in plan.planned] == [
        ("1", 0, "baseline"), ("2", 0, "A=2"), ("1", 1, "baseline"), ("2", 1, "A=2")]
    assert plan.spec["baseline"]["config_key"] == base.config_key and plan.snapshot == "snap1"
    assert [c["config_key"] for c in plan.spec["candidates"]] == [good.config_key]
    with pytest.raises(InputError, match="other than the baseline"):
        plan_promotion(wave_row(), [base], {base.id: results[base.id]}, {}, baseline, top=3, seeds=2)
    pending = exp_row(3, {"A": "3"}, state=ExperimentState.PENDING)
    with pytest.raises(FleetError, match="still pending"):
        plan_promotion(wave_row(), [pending], {}, {}, baseline, top=3, seeds=2)


def test_a_promote_wave_of_replicates_is_judged_unpaired():
    spec = {"baseline": {"config": {"A": "1"}, "config_key": config_key({"A": "1"}), "source": "x"},
            "candidates": [{"config_key": config_key({"A": "2"}), "config": {"A": "2"}, "label": "A=2"}]}
    wave = WaveRow("p", "p", "validate", "promote", spec, {}, "snap1", "w", None, 0.0)
    runs, results = [], {}
    for i, (config, value) in enumerate([({"A": "1"}, 1.0), ({"A": "2"}, 0.9)] * 3):
        exp = ExperimentRow(f"p-{i:03d}", "p", i, config, config_key(config), i // 2, "", "", "snap1", "validate",
                            ExperimentState.DONE, 1, "", 0.0, 0.0, 1.0, seeding="replicate")
        runs.append(exp)
        results[exp.id] = result(exp, value + 0.001 * (i % 3))
    report = promotion_report(wave, runs, results, {})
    assert report["rule"]["paired"] is False and "Welch" in report["rule"]["test"]
    assert report["candidates"][0]["verdict"] == "keep" and "unpaired" in report["candidates"][0]["reason"]


def test_a_higher_is_better_metric_ranks_highest_first_and_is_negated_for_the_research_layer():
    a, b = exp_row(1, {"A": "1"}), exp_row(2, {"A": "2"})
    results = {a.id: result(a, 0.8), b.id: result(b, 0.9)}  # accuracy, say
    assert [r.experiment for r in build_rows([a, b], results, higher_is_better=True)] == [b.id, a.id]
    assert [r.experiment for r in build_rows([a, b], results)] == [a.id, b.id]
    assert autoresearch_status([a, b], results, higher_is_better=True) == {a.id: "keep", b.id: "keep"}
    assert autoresearch_status([a, b], results) == {a.id: "keep", b.id: "discard"}
    oriented = research_results(results, higher_is_better=True)
    assert oriented[b.id].val_bpb == -0.9 and results[b.id].val_bpb == 0.9
    ranked, _ = rank_screen([a, b], oriented, {})
    assert ranked[0].config_key == b.config_key
