"""Leave-one-out ablation waves and each change's contribution, where the answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from fleet.core.knobs import KnobInfo, KnobListing
from fleet.errors import InputError
from fleet.research.ablate import Change, contributions, effective_changes, find_changes, leave_one_out
from fleet.research.verdicts import Rule

BASELINE = {"LR": "0.01", "DEPTH": "8", "WARMUP": "100"}
STACKED = {"LR": "0.02", "DEPTH": "12", "WARMUP": "100", "ROPE": "yarn"}  # 3 changes, one a new knob


def test_find_changes_includes_knobs_set_on_one_side():
    assert find_changes(BASELINE, STACKED) == [
        Change("DEPTH", "8", "12"), Change("LR", "0.01", "0.02"), Change("ROPE", None, "yarn"),
    ]
    assert find_changes({"A": "1"}, {}) == [Change("A", "1", None)]


def test_leave_one_out_wave():
    arms = leave_one_out(BASELINE, STACKED, seeds=3)
    by_name = {a.name: a for a in arms}
    assert list(by_name) == ["baseline", "stacked", "without:DEPTH", "without:LR", "without:ROPE"]
    assert by_name["without:DEPTH"].config == {**STACKED, "DEPTH": "8"}
    assert by_name["without:ROPE"].config == {k: v for k, v in STACKED.items() if k != "ROPE"}  # removed
    assert all(a.seeds == (0, 1, 2) for a in arms)
    assert by_name["without:LR"].role == "without" and by_name["without:LR"].removed == ("LR",)


def test_groups_reset_knobs_together_in_one_arm():
    arms = leave_one_out(BASELINE, STACKED, seeds=2, groups=[["LR", "DEPTH"]])
    names = [a.name for a in arms]
    assert names == ["baseline", "stacked", "without:LR+DEPTH", "without:ROPE"]
    assert arms[2].config == {**STACKED, "LR": "0.01", "DEPTH": "8"} and arms[2].removed == ("LR", "DEPTH")
    with pytest.raises(InputError, match="not a change"):
        leave_one_out(BASELINE, STACKED, seeds=2, groups=[["LR", "NOPE"]])
    with pytest.raises(InputError, match="one group only"):
        leave_one_out(BASELINE, STACKED, seeds=2, groups=[["LR", "DEPTH"], ["DEPTH", "ROPE"]])


def test_single_change_does_not_plan_the_baseline_twice():
    arms = leave_one_out({"LR": "0.01"}, {"LR": "0.02"}, seeds=2)
    assert [a.name for a in arms] == ["baseline", "stacked"]


@pytest.mark.parametrize("baseline, stacked, seeds, match", [
    (BASELINE, dict(BASELINE), 3, "no change"),
    (BASELINE, STACKED, 0, "`seeds`"),
])
def test_leave_one_out_rejects(baseline, stacked, seeds, match):
    with pytest.raises(InputError, match=match):
        leave_one_out(baseline, stacked, seeds)


def listing(**defaults: str) -> KnobListing:
    return KnobListing({k: KnobInfo(k, "float", {"gpu": v, "cpu": v}) for k, v in defaults.items()})


def test_changes_are_by_effective_value_and_a_commit_baseline_sees_moved_defaults():
    now = listing(LR="0.04", WD="0.1", NEW="1")
    assert effective_changes({"LR": "0.040"}, now, {"LR": "0.04", "WD": "0.2"}, now)[0] == [Change("WD", "0.1", "0.2")]
    old = listing(LR="0.02", WD="0.1")  # the commit's code: LR's default has moved since
    changes, notes = effective_changes({}, old, {"WD": "0.1", "NEW": "2"}, now)
    assert changes == [Change("LR", "0.02", "0.04")]
    assert len(notes) == 1 and "NEW is new" in notes[0]
    per_preset = KnobListing({"LR": KnobInfo("LR", "float", {"gpu": "0.04", "cpu": "0.02"})})
    assert effective_changes({}, listing(LR="0.01"), {}, per_preset, preset="cpu")[0] == [Change("LR", "0.01", "0.02")]
    changes, notes = effective_changes({}, listing(LR="0.01"), {}, per_preset)
    assert changes == [] and "--preset" in notes[0]


SEEDS = 8


def values(mean: float, sd: float, seed: int) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    return {s: mean + v for s, v in enumerate(rng.normal(0.0, sd, SEEDS))}


def test_contributions_keep_drop_and_inconclusive_where_the_answer_is_known():
    arms = {a.name: a for a in leave_one_out(BASELINE, STACKED, seeds=SEEDS)}
    stacked = values(0.990, 0.0002, 1)
    results = [
        (arms["baseline"], values(1.000, 0.0002, 2)),
        (arms["stacked"], stacked),
        # DEPTH helps by 0.008, measured tightly: keep
        (arms["without:DEPTH"], {s: v + 0.008 + d for (s, v), d in zip(stacked.items(), values(0, 0.0002, 3).values())}),
        # LR helps by 0.004, but the noise is wide (0.006 per pair): a real contribution, not shown either way
        (arms["without:LR"], {s: v + 0.004 + d for (s, v), d in zip(stacked.items(), values(0, 0.006, 4).values())}),
        # ROPE does nothing, measured tightly: its contribution is shown to be below min_effect → drop
        (arms["without:ROPE"], {s: v + d for (s, v), d in zip(stacked.items(), values(0, 0.0002, 5).values())}),
    ]
    rule = Rule(max_n=SEEDS, first_look=SEEDS, design="fixed", min_effect=0.0005)
    out = {c.knobs: c for c in contributions(results, rule)}
    assert out[("DEPTH",)].verdict == "keep" and out[("DEPTH",)].contribution == pytest.approx(0.008, abs=3e-4)
    assert out[("DEPTH",)].ci_low < out[("DEPTH",)].contribution < out[("DEPTH",)].ci_high
    lr = out[("LR",)]
    assert lr.verdict == "inconclusive" and lr.ci_high - lr.ci_low > 0.008 and "neither shown" in lr.note
    rope = out[("ROPE",)]
    assert rope.verdict == "drop" and rope.ci_high < 0.0005 and "drop it" in rope.note


def test_not_significant_is_never_drop():
    """A positive contribution with a wide interval: the old rule said drop; it is inconclusive."""
    arms = leave_one_out({"A": "1"}, {"A": "2"}, seeds=3)
    with_ = {0: 0.990, 1: 0.995, 2: 0.985}
    without = {0: 1.010, 1: 0.990, 2: 0.999}  # contribution +0.0097, p ≈ 0.1 at 3 seeds
    (c,) = contributions([(arms[0], without), (arms[1], with_)], Rule(max_n=3, first_look=3, design="fixed"))
    assert c.contribution > 0 and c.verdict == "inconclusive"


def test_single_change_contribution_uses_the_baseline_arm_and_one_seed_is_too_few():
    arms = leave_one_out({"LR": "0.01"}, {"LR": "0.02"}, seeds=5)
    rule = Rule(max_n=5, first_look=5, design="fixed")
    (c,) = contributions([(arms[0], values(1.0, 0.0002, 6)), (arms[1], values(0.99, 0.0002, 7))], rule)
    assert c.knobs == ("LR",) and c.contribution == pytest.approx(0.01, abs=5e-4) and c.verdict == "keep"
    (c,) = contributions([(arms[0], {0: 1.0}), (arms[1], {0: 0.99})], rule)
    assert c.verdict == "inconclusive" and "too few" in c.note
    with pytest.raises(InputError, match="stacked"):
        contributions([(arms[0], {0: 1.0})], rule)


def test_unpaired_contributions_for_replicates():
    """Replicates (no SEED knob) share no seed: arms are compared unpaired, and the note says so."""
    arms = {a.name: a for a in leave_one_out(BASELINE, STACKED, seeds=SEEDS)}
    results = [
        (arms["baseline"], values(1.000, 0.0002, 8)),
        (arms["stacked"], values(0.990, 0.0002, 9)),
        (arms["without:DEPTH"], values(0.998, 0.0002, 10)),  # helps by 0.008
        (arms["without:LR"], values(0.990, 0.0002, 11)),  # does nothing, tightly measured
        (arms["without:ROPE"], values(0.992, 0.0040, 12)),  # helps a little, very noisy
    ]
    rule = Rule(max_n=SEEDS, first_look=SEEDS, design="fixed")
    out = {c.knobs[0]: c for c in contributions(results, rule, pairing="unpaired")}
    assert out["DEPTH"].verdict == "keep" and out["DEPTH"].contribution == pytest.approx(0.008, abs=5e-4)
    assert out["LR"].verdict == "drop" and out["ROPE"].verdict == "inconclusive"
    assert all("unpaired" in c.note for c in out.values())
