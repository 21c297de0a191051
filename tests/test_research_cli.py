"""`fleet promote` / `verdict` / `recheck` / `ablate` / `ablation`: end to end on the local backend, plus the glue's rules.

Slots are labelled H100 and H200 (FLEET_LOCAL_ACCELERATORS) so tiers place work: the screen tier on
the H100 slot, the validate tier on the H200 slot. The tiny workload's seed noise is the same shift
for every configuration, so paired differences are exact and the verdicts are known; PAIR_NOISE adds
noise per configuration and seed, for the waves that must keep adding seed pairs.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from fleet_cli import make_project, teardown

from fleet.core.expand import config_key
from fleet.core.ledger_rows import ExperimentRow, ResultRow, WaveRow
from fleet.errors import FleetError, InputError
from fleet.research.plans import (
    Baseline,
    current_best,
    original_baseline,
    plan_promotion,
    rank_screen,
    resolve_baseline,
)
from fleet.observe.leaderboard import build_configs, build_rows
from fleet.research.normalize_view import research_results
from fleet.research.verdict_report import promotion_report
from fleet.research.verdicts import Rule
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

NOISY = """\
name: noisy
tier: screen
env: {TIME_BUDGET: 0.05, PAIR_NOISE: 0.01}
experiments:
  - {description: baseline}
  - {MATRIX_LR: 0.0399, description: about the same}
  - {WEIGHT_DECAY: 0.5, description: clearly worse}
"""

STACK = """\
name: stack
tier: screen
env: {TIME_BUDGET: 0.05}
experiments:
  - {MATRIX_LR: 0.01, description: baseline}
  - {MATRIX_LR: 0.04, WEIGHT_DECAY: 0.1, DEPTH: 3, PAIR_A: 1, PAIR_B: 1, description: stacked}
"""

CANDIDATE_KEYS = {"rank", "label", "config", "changes", "config_key", "experiment", "experiments", "screen_value",
                  "pairing", "n", "mean", "std", "baseline_mean", "baseline_std", "delta", "gain", "ci_low", "ci_high",
                  "p_value", "sd", "power", "pairs_for_power", "alpha", "decided_at", "verdict", "reason",
                  "missing_seeds", "flagged_seeds", "step_noise"}


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys, slots="H100,H200")
    # These tests count the runs each verdict rests on; backfill (tests/test_backfill.py) would add runs of the
    # same configurations on idle slots, which verdicts pool.
    runner.write("fleet.yaml", "backfill: {enabled: false}\n")
    yield runner
    teardown(runner)


def accelerators_of(fleet, wave: str) -> set[str]:
    ledger = fleet.ledger
    return {a.accelerator for e in ledger.experiments(wave=wave) for a in ledger.attempts(e.id)}


def by_description(fleet, wave: str, description: str) -> str:
    return next(e.id for e in fleet.ledger.experiments(wave=wave) if e.description == description)


def test_screen_promote_verdict(fleet):
    fleet.write("screen.yaml", SCREEN)
    code, _, err = fleet("wave", "screen.yaml", "--wait", "--json")
    assert code == 0 and "same configuration once defaults are filled in" in err
    board = fleet.json("results", "--wave", "screen")
    # the "same as baseline" entry sets WEIGHT_DECAY to its default: it is the baseline, run once
    assert len(board["rows"]) == 3 and all(r["state"] == "done" for r in board["rows"])
    assert accelerators_of(fleet, "screen") == {"H100"}

    report = fleet.json("promote", "screen", "--wait")
    assert report["wave"] == "screen-promote" and report["kind"] == "promote" and report["parent"] == "screen"
    assert report["tier"] == "validate" and report["complete"] and report["unfinished"] == 0
    assert report["accelerators"] == ["H200"] and report["metric"] == "raw"
    assert report["rule"]["design"] == "sequential" and report["rule"]["min_effect"] == 0.0005
    assert accelerators_of(fleet, "screen-promote") == {"H200"}  # the validate tier's slot, never the H100
    base = report["baseline"]
    assert base["config"] == {"TIME_BUDGET": "0.05", "MATRIX_LR": "0.01"} and base["n"] == 3
    assert "described `baseline`" in base["source"]
    cands = report["candidates"]
    assert all(set(c) == CANDIDATE_KEYS for c in cands)
    assert [c["rank"] for c in cands] == [1, 2]  # the baseline's twin is never a candidate (no A/A pair)
    by_lr = {c["config"]["MATRIX_LR"]: c for c in cands}
    best = by_lr["0.04"]
    assert cands[0]["config_key"] == best["config_key"]  # best first
    assert best["verdict"] == "keep" and best["n"] == 3 and best["delta"] < -0.03 and best["decided_at"] == 3
    assert best["ci_high"] < 0 and best["changes"] == {"MATRIX_LR": "0.04"}
    assert by_lr["0.02"]["verdict"] == "keep"
    assert report["best_keep"] == best["experiment"] and best["experiment"].startswith("screen-promote-")
    # 3 configurations x 3 seeds, paired by SEED; seed 0 already ran in the screen, so seeds 1..3
    exps = fleet.ledger.experiments(wave="screen-promote")
    assert len(exps) == 9
    assert {e.seed for e in exps if e.config_key == base["config_key"]} == {1, 2, 3}

    again = fleet.json("verdict", "screen-promote")
    assert again == report
    code, out, err = fleet("verdict", "screen-promote")
    assert code == 0 and "keep" in out and "baseline" in out and "min_effect" in out
    assert f"fleet adopt {best['experiment']}" in err and "fleet recheck" in err


def test_promote_takes_fewer_than_top_when_fewer_beat_the_baseline_and_says_so(fleet):
    fleet.write("mixed.yaml", "name: mixed\ntier: screen\nenv: {TIME_BUDGET: 0.05}\ngrid:\n  MATRIX_LR: [0.01, 0.04]\n"
                              "experiments:\n  - {MATRIX_LR: 0.02, description: baseline}\n")
    fleet.json("wave", "mixed.yaml", "--wait")
    code, out, err = fleet("promote", "mixed", "--top", "2", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert [c["config"]["MATRIX_LR"] for c in plan["candidates"]] == ["0.04"]  # 0.01 is worse on the screen
    worse = next(e.id for e in fleet.ledger.experiments(wave="mixed") if e.config.get("MATRIX_LR") == "0.01")
    assert "promoting 1 of the top 2: MATRIX_LR=0.01" in err and f"`fleet promote --experiments {worse}`" in err
    fleet("cancel", "--wave", plan["wave"])


def test_sequential_validation_adds_pairs_until_each_candidate_is_decided(fleet):
    fleet.write("noisy.yaml", NOISY)
    fleet.json("wave", "noisy.yaml", "--wait")
    # neither idea beat the baseline on the screen: promote queues nothing by default, and says how to force them
    waves = len(fleet.ledger.waves())
    code, _, err = fleet("promote", "noisy", "--max-seeds", "5")
    assert code == 2 and "beat its baseline on the screen" in err and len(fleet.ledger.waves()) == waves
    chosen = err.split("`fleet promote --experiments ")[1].split("`")[0].split()
    assert sorted(chosen) == sorted(e.id for e in fleet.ledger.experiments(wave="noisy") if e.description != "baseline")
    report = fleet.json("promote", "--experiments", *chosen, "--max-seeds", "5", "--wait")
    cands = {c["label"]: c for c in report["candidates"]}
    worse, same = cands["clearly worse"], cands["about the same"]
    assert worse["verdict"] == "discard" and worse["decided_at"] == 3
    # undecided at the first look, so pairs were added up to the cap, then it is honestly inconclusive
    assert same["verdict"] == "inconclusive" and same["n"] == 5 and same["decided_at"] is None
    assert same["power"] < 0.8 and same["pairs_for_power"] > 5 and "undecided at 5 pairs" in same["reason"]
    assert report["complete"] and report["undecided"] == 0
    exps = fleet.ledger.experiments(wave="noisy-promote")
    assert len([e for e in exps if e.config_key == same["config_key"]]) == 5
    assert len([e for e in exps if e.config_key == worse["config_key"]]) < 5  # stopped early (plus pairs in flight)
    code, _, err = fleet("verdict", "noisy-promote")
    # 80% power would take many more pairs than 5 at this noise: the hint says move on, with the number
    assert same["pairs_for_power"] - 5 > 32
    assert f"about {same['pairs_for_power']} pairs would give 80% power" in err and "move on" in err
    more = fleet.json("promote", "noisy-promote", "--add-seeds", "2")  # asked anyway: the inconclusive one only
    assert more["wave"] == "noisy-promote-more" and [c["config_key"] for c in more["candidates"]] == [same["config_key"]]
    assert more["rule"]["max_seeds"] == 5 + 2 and more["experiments"] == 2 * 2


def test_promote_without_wait_and_options(fleet):
    fleet.write("screen.yaml", SCREEN)
    fleet.json("wave", "screen.yaml", "--wait")
    for flags, words in ((["--top", "0"], ["--top"]), (["--tier", "valdate"], ["valdate", "validate"]),
                         (["--baseline", "nope-001"], ["nope-001"]), (["--seeds", "1"], ["--seeds", "at least 2"]),
                         (["--seeds", "3", "--max-seeds", "8"], ["give one"]), (["--min-effect", "-1"], ["min_effect"]),
                         (["--alpha", "2"], ["alpha"])):
        code, out, err = fleet("promote", "screen", *flags)
        assert code == 2 and out == "" and all(w in err for w in words), (flags, err)
    assert [w.id for w in fleet.ledger.waves()] == ["screen"]  # nothing half-submitted

    lr02 = next(e.id for e in fleet.ledger.experiments(wave="screen") if e.config.get("MATRIX_LR") == "0.02")
    code, out, err = fleet("promote", "screen", "--top", "1", "--seeds", "2", "--tier", "screen", "--baseline", lr02,
                           "--json")
    assert code == 0 and "fleet wait screen-promote" in err and "fleet verdict screen-promote" in err
    import json

    queued = json.loads(out)
    assert queued["wave"] == "screen-promote" and queued["experiments"] == 4 and queued["seeds"] == 2
    assert queued["rule"]["design"] == "fixed" and queued["rule"]["max_seeds"] == 2
    assert queued["sorted_by"] == "normalized"  # runs on the reference H100 are their own normalized values
    assert queued["baseline"]["experiment"] == lr02 and queued["baseline"]["config"]["MATRIX_LR"] == "0.02"
    assert [c["config"]["MATRIX_LR"] for c in queued["candidates"]] == ["0.04"]
    wave = fleet.ledger.wave("screen-promote")
    assert wave.kind == "promote" and wave.parent == "screen" and wave.tier == "screen"
    fleet.json("wait", "screen-promote")
    report = fleet.json("verdict", "screen-promote")
    # the screen's own runs of the candidate chose it, so they are not counted again (the winner's curse)
    assert [c["verdict"] for c in report["candidates"]] == ["keep"] and report["candidates"][0]["n"] == 2


def test_recheck_runs_the_current_best_against_the_original_baseline(fleet):
    fleet.write("screen.yaml", SCREEN)
    fleet.json("wave", "screen.yaml", "--wait")
    code, _, err = fleet("recheck")
    assert code == 2 and "no promotion has kept" in err
    first = fleet.json("promote", "screen", "--wait")
    report = fleet.json("recheck", "--wait")
    assert report["recheck"] and report["wave"] == f"{first['best_keep']}-recheck"
    (cand,) = report["candidates"]
    assert cand["verdict"] == "keep" and cand["config"]["MATRIX_LR"] == "0.04"
    assert report["baseline"]["config"]["MATRIX_LR"] == "0.01"
    seeds = {e.seed for e in fleet.ledger.experiments(wave=report["wave"])}
    assert min(seeds) > 3  # fresh seeds: not the ones that made the best look best
    assert cand["n"] == 3  # and judged on its own runs only


def test_ablation_end_to_end(fleet):
    fleet.write("stack.yaml", STACK)
    fleet.json("wave", "stack.yaml")  # ablate needs only the configuration, not the result
    stacked = by_description(fleet, "stack", "stacked")
    code, out, err = fleet("ablate", stacked, "--seeds", "2", "--wait", "--json")
    assert code == 0, err
    import json

    report = json.loads(out)
    assert report["kind"] == "ablate" and report["experiment"] == stacked and report["parent"] == "stack"
    assert report["complete"] and report["accelerators"] == ["H200"]
    # resetting PAIR_A alone (or PAIR_B alone) is rejected by the workload: skipped with a note, not fatal
    assert {s["arm"] for s in report["skipped"]} == {"without:PAIR_A", "without:PAIR_B"}
    assert "--group PAIR_A,OTHER" in report["skipped"][0]["reason"] or "--group PAIR_B" in report["skipped"][0]["reason"]
    assert "skipped without:PAIR_A" in err
    assert [a["name"] for a in report["arms"]] == [
        "baseline", "stacked", "without:DEPTH", "without:MATRIX_LR", "without:WEIGHT_DECAY"]
    assert all(a["n"] == 2 for a in report["arms"])
    changes = {c["knob"]: c for c in report["changes"]}
    assert set(changes) == {"DEPTH", "MATRIX_LR", "WEIGHT_DECAY"}
    assert changes["MATRIX_LR"]["verdict"] == "keep" and changes["MATRIX_LR"]["contribution"] > 0.03
    assert changes["MATRIX_LR"]["baseline_value"] == "0.01" and changes["MATRIX_LR"]["stacked_value"] == "0.04"
    assert changes["WEIGHT_DECAY"]["verdict"] == "drop" and changes["WEIGHT_DECAY"]["contribution"] < 0
    assert changes["DEPTH"]["verdict"] == "drop" and changes["DEPTH"]["contribution"] == pytest.approx(0.0, abs=1e-9)
    assert report["keep"] == ["MATRIX_LR"] and sorted(report["drop"]) == ["DEPTH", "WEIGHT_DECAY"]
    wave = report["wave"]
    assert fleet.json("ablation", wave) == report == fleet.json("verdict", wave)
    code, out, err = fleet("ablation", wave)
    assert code == 0 and "without:MATRIX_LR" in out and "drop DEPTH, WEIGHT_DECAY" in err

    grouped = fleet.json("ablate", stacked, "--seeds", "2", "--group", "PAIR_A,PAIR_B", "--wait")
    pair = {c["knob"]: c for c in grouped["changes"]}["PAIR_A+PAIR_B"]
    assert pair["knobs"] == ["PAIR_A", "PAIR_B"] and pair["verdict"] == "keep" and pair["contribution"] > 0.009
    assert grouped["skipped"] == []
    code, _, err = fleet("ablation", "stack")
    assert code == 2 and "not an ablation" in err
    base = by_description(fleet, "stack", "baseline")
    code, _, err = fleet("ablate", base)  # the baseline itself: nothing to ablate
    assert code == 2 and "no change" in err


def test_ablation_against_a_git_commit_sees_changes_baked_into_defaults(fleet):
    root = fleet.root

    def git(*args):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "before")
    train = root / "train" / "train.py"
    before = train.read_text()
    train.write_text(before.replace("MATRIX_LR = Knob(0.04, min=0.0)", "MATRIX_LR = Knob(0.02, min=0.0)"))
    assert train.read_text() != before
    fleet.write("now.yaml", "name: now\nenv: {TIME_BUDGET: 0.05}\nexperiments:\n  - {description: current}\n")
    fleet.json("wave", "now.yaml")
    code, _, err = fleet("ablate", "now-001", "--baseline-commit", "nosuchrev")
    assert code == 2 and "nosuchrev" in err
    report = fleet.json("ablate", "now-001", "--baseline-commit", "HEAD", "--seeds", "2", "--wait")
    assert report["baseline"]["commit"].startswith("HEAD@")  # the ref and the commit it named
    (change,) = report["changes"]
    assert (change["knob"], change["baseline_value"], change["stacked_value"]) == ("MATRIX_LR", "0.04", "0.02")
    assert change["verdict"] == "drop" and change["contribution"] < -0.01  # the new default is worse
    snapshots = {a["name"]: a["snapshot"] for a in report["arms"]}
    assert snapshots["baseline"] != snapshots["stacked"]  # the baseline ran the commit's own code


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
    plan = plan_promotion(wave_row(), [base, good], results, {}, baseline, top=3, rule=Rule(max_n=2, design="fixed"))
    assert [(p.config["A"], p.seed, p.label) for p in plan.planned] == [
        ("1", 0, "baseline"), ("2", 0, "A=2"), ("1", 1, "baseline"), ("2", 1, "A=2")]
    assert plan.spec["baseline"]["config_key"] == base.config_key and plan.snapshot == "snap1"
    assert [c["config_key"] for c in plan.spec["candidates"]] == [good.config_key]
    sequential = plan_promotion(wave_row(), [base, good], results, {}, baseline, top=3, rule=Rule(max_n=16))
    assert sequential.spec["seeds"] == 3 and len(sequential.planned) == 6  # the first look's pairs, then more
    with pytest.raises(InputError, match="other than the baseline"):
        plan_promotion(wave_row(), [base], {base.id: results[base.id]}, {}, baseline, top=3, rule=Rule())
    pending = exp_row(3, {"A": "3"}, state=ExperimentState.PENDING)
    with pytest.raises(FleetError, match="still pending"):
        plan_promotion(wave_row(), [pending], {}, {}, baseline, top=3, rule=Rule())


def test_promote_leaves_out_what_did_not_beat_the_baseline_on_the_screen():
    """`fleet promote --top 2` of a screen whose baseline has 1.8511: 1.8605 is worse (lower is better), so only
    the one that beat it is validated, and the plan says which were left out; none better: exit 2, nothing."""
    base, good, worse = exp_row(1, {"A": "1"}, "baseline"), exp_row(2, {"A": "2"}), exp_row(3, {"A": "3"}, "hotter")
    results = {base.id: result(base, 1.8511), good.id: result(good, 1.8400), worse.id: result(worse, 1.8605)}
    baseline = resolve_baseline(wave_row(), [base, good, worse])
    plan = plan_promotion(wave_row(), [base, good, worse], results, {}, baseline, top=2, rule=Rule())
    assert [c["config_key"] for c in plan.spec["candidates"]] == [good.config_key]
    assert plan.spec["not_better"] == [{"config_key": worse.config_key, "label": "hotter", "screen_value": 1.8605,
                                        "experiment": worse.id}]
    assert plan.spec["baseline"]["screen_value"] == 1.8511
    with pytest.raises(InputError, match=r"no configuration of wave 'w' beat its baseline on the screen .*1\.8511.*"
                                          r"nothing queued.*`fleet promote --experiments w-003`"):
        plan_promotion(wave_row(), [base, worse], {k: results[k] for k in (base.id, worse.id)}, {}, baseline, top=2,
                       rule=Rule())


def test_a_candidate_equal_to_the_baseline_once_defaults_are_filled_in_is_never_promoted():
    base, twin = exp_row(1, {}, "baseline"), exp_row(2, {"A": "default"})
    twin = ExperimentRow(**{**twin.__dict__, "config_key": base.config_key})  # what submission gives a twin
    results = {base.id: result(base, 1.2), twin.id: result(twin, 1.1)}
    baseline = Baseline({}, "b", base.id, base.config_key)
    with pytest.raises(InputError, match="once defaults are filled in"):
        plan_promotion(wave_row(), [base, twin], results, {}, baseline, top=3, rule=Rule())


def promote_wave(wave_id: str, created: float, keep: str | None, recheck: bool = False) -> WaveRow:
    spec = {"baseline": {"config": {"A": wave_id}, "config_key": f"k-{wave_id}", "source": "s", "snapshot": "old"},
            "candidates": [], "recheck": recheck}
    return WaveRow(wave_id, wave_id, "validate", "promote", spec, {}, "snap", None, None, created)


def test_the_current_best_and_the_original_baseline():
    waves = [promote_wave("p1", 1.0, "p1-002"), promote_wave("p2", 2.0, None), promote_wave("r", 3.0, "r-002", True)]
    reports = {"p1": {"best_keep": "p1-002"}, "p2": {"best_keep": None}, "r": {"best_keep": "r-002"}}
    assert current_best(waves, reports) == "p1-002"  # the latest keep; a recheck's own keep does not count
    assert current_best(waves, {}) is None
    # after adoptions the committed stack is the latest adopted, not a later keep never adopted
    later = [*waves, promote_wave("p3", 4.0, "p3-002")]
    reports = {**reports, "p3": {"best_keep": "p3-002"}}
    assert current_best(later, reports) == "p3-002"
    assert current_best(later, reports, ["x-002", "p1-002"]) == "p1-002"
    first = original_baseline(list(reversed(waves)))
    assert first.config == {"A": "p1"} and first.snapshot == "old" and first.config_key == "k-p1"
    assert original_baseline([]) is None


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
    rows = build_rows([a, b], results, higher_is_better=True)
    assert [c.config_key for c in build_configs(rows, {}, higher_is_better=True)] == [b.config_key, a.config_key]
    oriented = research_results(results, higher_is_better=True)
    assert oriented[b.id].val_bpb == -0.9 and results[b.id].val_bpb == 0.9
    ranked, _ = rank_screen([a, b], oriented, {})
    assert ranked[0].config_key == b.config_key


def test_more_pairs_for_the_most_promising_inconclusive_candidate():
    """The pieces a backfill builds on: which inconclusive candidate, and a wave that continues it."""
    from fleet.research.plans import plan_continuation
    from fleet.research.verdict_report import most_promising_inconclusive

    report = {"candidates": [
        {"config_key": "a", "verdict": "inconclusive", "gain": 0.0004, "pairs_for_power": 40},
        {"config_key": "b", "verdict": "inconclusive", "gain": 0.0009, "pairs_for_power": 60},
        {"config_key": "c", "verdict": "keep", "gain": 0.002, "pairs_for_power": 10},
        {"config_key": "d", "verdict": "inconclusive", "gain": -0.001, "pairs_for_power": None}]}
    assert most_promising_inconclusive(report)["config_key"] == "b"
    assert most_promising_inconclusive({"candidates": report["candidates"][2:]}) is None
    spec = {"baseline": {"config": {"A": "1"}, "config_key": "base", "source": "s"}, "source_wave": "w",
            "candidates": [{"config_key": k, "config": {"A": k}, "label": k, "description": ""} for k in "ab"]}
    wave = WaveRow("w-promote", "w-promote", "validate", "promote", spec, {}, "snap1", "w", None, 0.0)
    plan = plan_continuation(wave, "b", Rule(max_n=40), first_seed=17)
    assert plan.spec["name"] == "w-promote-more" and [c["config_key"] for c in plan.spec["candidates"]] == ["b"]
    assert plan.spec["rule"]["max_seeds"] == 40 and plan.spec["source_wave"] == "w"
    assert [(p.config_key, p.seed) for p in plan.planned][:2] == [("base", 17), ("b", 17)]
    with pytest.raises(InputError, match="not a candidate"):
        plan_continuation(wave, "zz", Rule(), first_seed=0)
