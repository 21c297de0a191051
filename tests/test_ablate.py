"""Leave-one-out ablation waves and each change's contribution."""
from __future__ import annotations

import pytest

from fleet.errors import InputError
from fleet.research.ablate import Change, contributions, find_changes, leave_one_out

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
    assert by_name["without:LR"].role == "without" and by_name["without:LR"].removed == "LR"


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


JITTER = [0.0003, -0.0002, 0.0001, -0.0004, 0.0002]


def values(mean: float, jitter: list[float] = JITTER) -> dict[int, float]:
    return {s: mean + j for s, j in enumerate(jitter)}


def test_contributions_where_the_answer_is_known():
    arms = {a.name: a for a in leave_one_out(BASELINE, STACKED, seeds=5)}
    results = [
        (arms["baseline"], values(1.000)),
        (arms["stacked"], values(0.990)),
        (arms["without:DEPTH"], values(0.998, [0.0001, 0.0, 0.0003, -0.0002, -0.0002])),  # DEPTH helps by 0.008
        (arms["without:LR"], values(0.990, [0.0001, 0.0002, -0.0003, 0.0001, -0.0002])),  # LR does nothing
        (arms["without:ROPE"], values(0.989)),  # ROPE hurts a little
    ]
    out = {c.knob: c for c in contributions(results)}
    assert out["DEPTH"].verdict == "keep" and out["DEPTH"].contribution == pytest.approx(0.008)
    assert out["DEPTH"].ci_low < 0.008 < out["DEPTH"].ci_high and out["DEPTH"].n == 5
    for knob in ("LR", "ROPE"):
        assert out[knob].verdict == "drop"
        assert "removing this change does not hurt → drop it" in out[knob].note
    assert out["ROPE"].contribution == pytest.approx(-0.001)


def test_single_change_contribution_uses_the_baseline_arm():
    arms = leave_one_out({"LR": "0.01"}, {"LR": "0.02"}, seeds=5)
    (c,) = contributions([(arms[0], values(1.0)), (arms[1], values(0.99))])
    assert c.knob == "LR" and c.contribution == pytest.approx(0.01) and c.verdict == "keep"


def test_contributions_with_one_seed_or_missing_arms():
    arms = {a.name: a for a in leave_one_out(BASELINE, STACKED, seeds=1)}
    one = [(arms[n], {0: 1.0 if n != "stacked" else 0.99}) for n in arms]
    assert {c.verdict for c in contributions(one)} == {"inconclusive"}
    with pytest.raises(InputError, match="without:ROPE"):
        contributions([pair for pair in one if pair[0].name != "without:ROPE"])
    with pytest.raises(InputError, match="stacked"):
        contributions([pair for pair in one if pair[0].name != "stacked"])


def test_unpaired_contributions_for_replicates():
    arms = {a.name: a for a in leave_one_out(BASELINE, STACKED, seeds=5)}
    jitter = [0.0004, -0.0003, 0.0001, -0.0002, 0.0]
    results = [
        (arms["baseline"], values(1.000, jitter)),
        (arms["stacked"], values(0.990, jitter[::-1])),  # replicates: index i of one arm is not run i of another
        (arms["without:DEPTH"], values(0.998, jitter)),
        (arms["without:LR"], values(0.990, jitter)),
        (arms["without:ROPE"], values(0.989, jitter)),
    ]
    out = {c.knob: c for c in contributions(results, paired=False)}
    assert out["DEPTH"].verdict == "keep" and out["DEPTH"].contribution == pytest.approx(0.008)
    assert out["LR"].verdict == "drop" and all("unpaired" in c.note for c in out.values())
