"""Verdicts on constructed data with known truth: where the rule must keep, discard, or refuse to decide.

The simulations are those of `bench/verdicts.py` (pairs arrive one by one and the rule is asked after
each, as the controller asks), with fewer trials; each prints the rate it checks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fleet_cli import load_script

from fleet.errors import InputError
from fleet.research.step_noise import StepOffset
from fleet.research.verdicts import Comparison, Rule, Run, judge

BENCH = Path(__file__).resolve().parent.parent / "bench" / "verdicts.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_verdicts")


# ---- the acceptance figures -------------------------------------------------------------------------


def test_a_true_gain_of_0_001_at_noise_0_0015_is_kept_given_enough_pairs(bench):
    counts, _, pairs = bench.rates(60, [0.001], Rule(max_n=64), seed=11)
    keep = counts["keep"] / 60
    print(f"gain 0.001, noise 0.0015, cap 64: keep {keep:.2f}, discard {counts['discard'] / 60:.2f}, "
          f"mean pairs {np.mean(pairs):.1f}")
    assert keep >= 0.85 and counts["discard"] == 0


def test_the_same_gain_capped_early_is_inconclusive_not_discarded(bench):
    counts, _, _ = bench.rates(200, [0.001], Rule(max_n=6), seed=12)
    print(f"gain 0.001, cap 6: inconclusive {counts['inconclusive'] / 200:.2f}, keep {counts['keep'] / 200:.2f}, "
          f"discard {counts['discard'] / 200:.3f}")
    assert counts["inconclusive"] > counts["keep"] + counts["discard"]
    assert counts["discard"] / 200 <= 0.05  # a false discard of a gain above min_effect: at most alpha


@pytest.mark.parametrize("tails", ["normal", "heavy"])
def test_no_effect_is_never_kept_more_often_than_alpha_over_the_family(bench, tails):
    """Three candidates with no effect, pairs arriving one by one, the rule asked after each.

    400 simulated waves estimate the family-wise rate to ±0.011, so the check allows two standard
    errors; `test_the_keep_boundary_alone_spends_at_most_alpha` pins the rate itself down precisely."""
    trials = 400
    counts, family, _ = bench.rates(trials, [0.0, 0.0, 0.0], Rule(max_n=16), seed=13, tails=tails)
    print(f"three candidates with no effect ({tails} noise), looks after every pair up to 16: family-wise false "
          f"keep rate {family:.3f} (alpha 0.05); labels {dict(counts)}")
    assert family <= 0.05 + 2 * (0.05 * 0.95 / trials) ** 0.5
    assert counts["keep"] < 0.1 * sum(counts.values())


@pytest.mark.parametrize("alpha", [0.05, 0.05 / 3])
def test_the_keep_boundary_alone_spends_at_most_alpha(alpha):
    """The same rule on 100,000 simulated null candidates at once (vectorized): keep before discard."""
    from fleet.research.group_sequential import design

    rule = Rule(max_n=16, alpha=alpha)
    d = design(alpha, rule.looks)
    diffs = np.random.default_rng(17).normal(0.0, 0.0015 * 2 ** 0.5, (100_000, 16))
    total, squares = np.cumsum(diffs, axis=1), np.cumsum(diffs * diffs, axis=1)
    state = np.zeros(len(diffs), dtype=int)  # 0 open, 1 keep, 2 discard
    for n in rule.looks:
        mean = total[:, n - 1] / n
        se = np.sqrt((squares[:, n - 1] - n * mean * mean) / (n - 1) / n)
        bound = d.t_at(n, n - 1)
        state[(state == 0) & (-mean - bound * se > 0) & (-mean >= rule.min_effect)] = 1
        state[(state == 0) & (-mean + bound * se < rule.min_effect)] = 2
    rate = float(np.mean(state == 1))
    print(f"no effect, alpha {alpha:.4f}, looks 3..16: false keep rate {rate:.4f}")
    assert rate <= alpha


def test_a_clearly_worse_candidate_is_discarded_early(bench):
    counts, _, pairs = bench.rates(40, [-0.003], Rule(max_n=16), seed=14)
    assert counts["discard"] == 40 and np.mean(pairs) < 10


# ---- single comparisons where the answer is known ----------------------------------------------------

BASE = [1.000, 1.002, 0.998, 1.001, 0.999, 1.0015, 0.9985, 1.0005]
JITTER = [0.0004, -0.0006, 0.0003, -0.0002, 0.0001, -0.0003, 0.0005, -0.0001]
NOISY = [0.0015, -0.0016, 0.0014, -0.0015, 0.0016, -0.0014, 0.0015, -0.0016]


def runs(values, first_seed: int = 0) -> tuple[Run, ...]:
    return tuple(Run(first_seed + i, v, order=float(first_seed + i)) for i, v in enumerate(values))


def shifted(gain: float, n: int = 8, jitter=JITTER) -> tuple[Run, ...]:
    return runs([b - gain + j for b, j in zip(BASE[:n], jitter[:n])])


def one(candidate, baseline=None, rule=Rule(max_n=8), closed=True, **kw):
    (v,) = judge([Comparison("c", candidate, runs(BASE) if baseline is None else baseline, closed=closed, **kw)], rule)
    return v


@pytest.mark.parametrize(
    "name, candidate, closed, expected, reason_part",
    [
        ("clear win", shifted(0.010), True, "keep", "significant at alpha"),
        ("regression", shifted(-0.006), True, "discard", "worse"),
        ("noise only, more to come", shifted(0.0, jitter=NOISY), False, "need_more", "undecided at 8 of up to 16"),
        ("identical", runs(BASE), True, "discard", "not better"),
        ("noise only, at the cap", shifted(0.0, jitter=NOISY), True, "inconclusive", "undecided at 8 pairs"),
        ("single pair", runs([0.95]), True, "inconclusive", "one pair cannot"),
        ("no common seed", runs([0.95], first_seed=40), True, "inconclusive", "no pair finished"),
        ("constant shift", runs([b - 0.01 for b in BASE]), True, "keep", "better by 0.0100"),
    ],
)
def test_verdicts_where_the_answer_is_known(name, candidate, closed, expected, reason_part):
    v = one(candidate, closed=closed, rule=Rule(max_n=8 if closed else 16))
    assert v.label == expected, (name, v.reason)
    assert reason_part in v.reason, (name, v.reason)


def test_deterministic_runs_give_no_verdict():
    v = one(runs([0.99] * 4), runs([1.0] * 4), Rule(max_n=4))
    assert v.label == "inconclusive" and "no run-to-run variation" in v.reason


def test_significant_but_smaller_than_min_effect_is_not_kept():
    tight = [0.00002, -0.00002] * 4
    v = one(shifted(0.0003, jitter=tight), rule=Rule(max_n=8, min_effect=0.0005))
    assert v.label != "keep" and v.high < 0  # significant ...
    assert v.gain < 0.0005  # ... but below min_effect
    assert v.label == "discard" and "below min_effect" in v.reason  # and shown to be below it


def test_fields_of_a_clear_win():
    v = one(shifted(0.010))
    assert v.n == 8 and v.gain == pytest.approx(0.010 - np.mean(JITTER), abs=1e-9) and v.delta == -v.gain
    assert v.low < v.delta < v.high < 0
    assert v.decided_at == 3  # the first look
    assert "at 8 pairs (decided at 3;" in v.reason  # the reason names both, so they cannot seem to disagree
    assert v.p_value < 1e-5 and v.power is not None and 0 < v.power <= 1
    assert v.baseline_mean == pytest.approx(np.mean(BASE)) and v.pairing == "seed"


def test_crashed_seeds_are_left_out_and_named():
    cand = tuple(Run(r.unit, None if r.unit in (3, 4) else r.value, order=r.order) for r in shifted(0.01))
    v = one(cand)
    assert v.label == "keep" and v.n == 6 and v.missing == (3, 4)


def test_looks_take_pairs_in_the_order_they_finished():
    late_bad = tuple(Run(s, BASE[s] - (0.02 if s < 3 else -0.02), order=100.0 - s) for s in range(8))
    # In finish order the first three pairs are the bad ones (seeds 7, 6, 5): discarded at the first look.
    v = one(late_bad, closed=False)
    assert v.label == "discard" and v.decided_at == 3


def test_holm_raises_the_level_for_the_rest_once_one_is_kept():
    """Two candidates: one clear win, one whose evidence clears alpha but not alpha/2.

    Alone in its family the marginal one is kept; next to a clear win it is too (Holm's second step
    tests at alpha/1); next to a null candidate it is not (its level stays alpha/2)."""
    rule = Rule(max_n=6, design="fixed")
    base = runs(BASE[:6])
    jitter = [1.3 * j for j in (0.0009, -0.0011, 0.0006, -0.0007, 0.0012, -0.0006)]  # one-sided p = 0.039
    marginal = runs([b - 0.0012 + j for b, j in zip(BASE[:6], jitter)])
    clear = runs([b - 0.01 for b in BASE[:6]])
    null = runs([b + j for b, j in zip(BASE[:6], [0.001, -0.001, 0.0008, -0.0009, 0.0011, -0.001])])
    (alone,) = judge([Comparison("m", marginal, base, closed=True)], rule)
    with_clear = judge([Comparison("m", marginal, base, closed=True), Comparison("c", clear, base, closed=True)], rule)
    with_null = judge([Comparison("m", marginal, base, closed=True), Comparison("n", null, base, closed=True)], rule)
    assert alone.label == "keep" and alone.alpha_used == 0.05
    assert [v.label for v in with_clear] == ["keep", "keep"]
    assert with_null[0].label != "keep" and with_null[0].alpha_used == 0.025


def test_unpaired_replicates_use_welch_and_say_so():
    cand = tuple(Run(i, v) for i, v in enumerate([0.990, 0.9905, 0.9895, 0.9902, 0.9898, 0.9901]))
    base = tuple(Run(i, v) for i, v in enumerate([1.000, 1.0006, 0.9994, 1.0003, 0.9997, 1.0001]))
    (v,) = judge([Comparison("c", cand, base, pairing="unpaired", closed=True)], Rule(max_n=6, design="fixed"))
    assert v.label == "keep" and v.pairing == "unpaired" and "unpaired" in v.reason and v.missing == ()


def test_power_and_the_pairs_it_would_take_at_the_cap():
    v = one(shifted(0.0002, jitter=NOISY), rule=Rule(max_n=8, min_effect=0.0005))
    assert v.label == "inconclusive" and v.power < 0.5 and v.pairs_for_power > 8
    assert f"about {v.pairs_for_power} pairs would give 80%" in v.reason


def test_step_noise_correction_needs_an_offset_from_outside_the_pairs():
    """Step jitter explains most of the paired noise; with the typical step difference known from
    other runs the corrected test sees it and says how much variance it removed."""
    rng = np.random.default_rng(3)
    n, slope = 8, 0.1
    jit_c, jit_b = rng.normal(0, 0.02, n), rng.normal(0, 0.02, n)
    base = tuple(Run(s, 1.0 - slope * jit_b[s] + rng.normal(0, 0.0002), 1000 * np.exp(jit_b[s]), s) for s in range(n))
    cand = tuple(Run(s, 0.9985 - slope * jit_c[s] + rng.normal(0, 0.0002), 1000 * np.exp(jit_c[s]), s)
                 for s in range(n))
    rule = Rule(max_n=n, design="fixed")
    without = one(cand, base, rule, slope=slope)
    assert not without.step.used and "only from these pairs" in without.step.note
    offset = StepOffset(0.0, 0.002, 6, 6)
    corrected = one(cand, base, rule, slope=slope, offset=offset)
    assert corrected.step.used and corrected.step.variance_removed > 0.8
    assert corrected.high - corrected.low < without.high - without.low
    assert corrected.label == "keep" and "removed" in corrected.reason


def test_pairs_whose_step_counts_disagree_are_flagged():
    steps = {s: 1000.0 for s in range(8)}
    cand = tuple(Run(r.unit, r.value, 800.0 if r.unit == 5 else 1000.0, r.order) for r in shifted(0.002))
    base = tuple(Run(s, BASE[s], steps[s], float(s)) for s in range(8))
    assert one(cand, base).flagged == (5,)
    assert one(cand, base, rule=Rule(max_n=8, mismatch=0.3)).flagged == ()


@pytest.mark.parametrize("rule, match", [
    (Rule(alpha=0.0), "alpha"), (Rule(alpha=1.5), "alpha"), (Rule(min_effect=-0.1), "min_effect"),
    (Rule(max_n=1), "at least 2"),
])
def test_bad_rules_are_refused(rule, match):
    with pytest.raises(InputError, match=match):
        judge([], rule)


def test_unpaired_false_keeps_stay_below_alpha_when_there_is_no_effect():
    """Replicates from one distribution on both sides: Welch's test may keep at most alpha of them."""
    rng = np.random.default_rng(7)
    rule = Rule(max_n=4, design="fixed", min_effect=0.0)
    trials = 1000
    keeps = 0
    for _ in range(trials):
        cand, base = rng.normal(1.0, 0.01, 4), rng.normal(1.0, 0.01, 4)
        (v,) = judge([Comparison("c", tuple(Run(i, x) for i, x in enumerate(cand)),
                                 tuple(Run(i, x) for i, x in enumerate(base)), "unpaired", closed=True)], rule)
        keeps += v.label == "keep"
    print(f"false keep rate (unpaired, alpha 0.05, 4 replicates each): {keeps / trials:.3f}")
    assert keeps / trials <= 0.05 + 2 * (0.05 * 0.95 / trials) ** 0.5
