"""Promotion: candidate selection, paired validation plans, and verdicts where the answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from fleet.errors import InputError
from fleet.research.normalize import LeaderboardRow
from fleet.research.promote import plan_validation, select_candidates, verdict
from fleet.research.stats import paired_one_sided

BASE = {0: 1.000, 1: 1.002, 2: 0.998, 3: 1.001, 4: 0.999}  # seed std ≈ 0.0016
NOISE = [0.0004, -0.0006, 0.0003, -0.0002, 0.0001]  # per-seed jitter of a candidate


def shifted(shift: float, base: dict[int, float] = BASE, jitter: list[float] = NOISE) -> dict[int, float]:
    return {s: v + shift + jitter[i] for i, (s, v) in enumerate(sorted(base.items()))}


@pytest.mark.parametrize(
    "name, candidate, baseline, expected, reason_part",
    [
        ("clear win", shifted(-0.010), BASE, "keep", "above the noise floor"),
        ("noise only", shifted(0.0, jitter=[-0.0004, -0.0002, 0.0006, -0.0003, 0.0001]), BASE, "inconclusive", "not significant"),
        ("regression", shifted(+0.006), BASE, "discard", "significantly worse"),
        ("identical", dict(BASE), BASE, "discard", "not better"),
        ("significant but below the floor", shifted(-0.002, jitter=[0, 1e-5, -1e-5, 0, 0]), BASE, "inconclusive", "noise floor"),
        ("single seed", {0: 0.95}, BASE, "inconclusive", "only 1 paired seed"),
        ("no common seed", {7: 0.95}, BASE, "inconclusive", "no seed finished"),
        ("zero variance both sides", {0: 0.99, 1: 0.99, 2: 0.99}, {0: 1.0, 1: 1.0, 2: 1.0}, "inconclusive", "no seed-to-seed variation"),
        ("constant shift", {s: v - 0.01 for s, v in BASE.items()}, BASE, "keep", "better by 0.0100"),
        ("crashed seeds are missing", {**shifted(-0.010), 3: None, 4: float("nan")}, BASE, "keep", "seeds [3, 4]"),
    ],
)
def test_verdicts_where_the_answer_is_known(name, candidate, baseline, expected, reason_part):
    v = verdict(candidate, baseline)
    assert v.verdict == expected, (name, v.reason)
    assert reason_part in v.reason, (name, v.reason)


def test_verdict_fields_of_a_clear_win():
    v = verdict(shifted(-0.010), BASE)
    assert v.n == 5 and v.delta == pytest.approx(-0.010, abs=1e-9)
    assert v.baseline_mean == pytest.approx(1.0) and v.baseline_std == pytest.approx(0.00158, abs=1e-5)
    assert v.p_value < 1e-5 and v.noise_floor == pytest.approx(2 * v.baseline_std)
    assert v.mean == pytest.approx(0.990, abs=1e-9) and v.std is not None and v.missing_seeds == ()


def test_bootstrap_agrees_on_a_clear_win_and_on_noise():
    assert verdict(shifted(-0.010), BASE, method="bootstrap").verdict == "keep"
    assert verdict(shifted(0.0), BASE, method="bootstrap").verdict != "keep"


@pytest.mark.parametrize(
    "candidate, baseline, method, p_below",
    [([0.9, 0.91, 0.89], [1.0, 1.0, 1.0], "t", 0.01), ([1.1, 1.11, 1.09], [1.0, 1.0, 1.0], "t", None)],
)
def test_paired_test_direction(candidate, baseline, method, p_below):
    p = paired_one_sided(candidate, baseline, method=method).p_value
    assert (p < p_below) if p_below else (p > 0.5)


@pytest.mark.parametrize("alpha, floor", [(0.0, 2.0), (1.0, 2.0), (0.01, -1.0)])
def test_verdict_rejects_bad_settings(alpha, floor):
    with pytest.raises(InputError):
        verdict(BASE, BASE, alpha=alpha, floor_multiple=floor)


def row(key: str, normalized: float | None, raw: float = 1.0) -> LeaderboardRow:
    return LeaderboardRow(0, key, "normalized", 1, raw, None, 1 if normalized else 0, normalized, None, ("H100",))


def test_select_candidates_takes_the_top_k_by_normalized_and_skips_the_baseline():
    ranked = [row("b", 0.99), row("base", 0.98), row("a", 0.97, raw=1.2), row("c", 1.01), row("u", None, raw=0.5)]
    assert [r.config_key for r in select_candidates(ranked, 2, "base")] == ["a", "b"]
    assert [r.config_key for r in select_candidates(ranked, 10, "base")] == ["a", "b", "c"]
    with pytest.raises(InputError, match="positive integer"):
        select_candidates(ranked, 0, "base")


def test_plan_validation_pairs_every_candidate_with_the_baseline_by_seed():
    base = {"LR": "0.01"}
    cands = [{"LR": "0.02"}, {"LR": "0.01", "DEPTH": "12"}, {"LR": "0.02"}, dict(base)]  # a duplicate and the baseline
    plan = plan_validation(cands, base, seeds=3)
    assert len(plan) == 3 * 3  # (baseline + 2 unique candidates) x 3 seeds
    for config in (base, {"LR": "0.02"}, {"LR": "0.01", "DEPTH": "12"}):
        assert sorted(p.seed for p in plan if p.config == config) == [0, 1, 2]
    config, seed, description = plan[0]
    assert config == base and seed == 0 and description == "baseline seed 0"
    assert plan[1].description == "candidate 1/2 seed 0"
    assert [p.seed for p in plan_validation(cands[:1], base, seeds=2, first_seed=10)] == [10, 10, 11, 11]


@pytest.mark.parametrize("seeds", [0, -1, 2.5, True])
def test_plan_validation_rejects_bad_seeds(seeds):
    with pytest.raises(InputError, match="`seeds`"):
        plan_validation([{"LR": "0.02"}], {"LR": "0.01"}, seeds=seeds)


def test_plan_validation_needs_a_real_candidate():
    with pytest.raises(InputError, match="nothing to validate"):
        plan_validation([{"LR": "0.01"}], {"LR": "0.01"}, seeds=3)


# ---- replicates (no SEED knob): the same rule, unpaired -----------------------------------------------


def _replicates(rng, mean: float, sd: float, n: int) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(rng.normal(mean, sd, n))}


def test_unpaired_verdict_keeps_a_clear_win_and_says_it_is_unpaired():
    rng = np.random.default_rng(1)
    v = verdict(_replicates(rng, 0.95, 0.002, 6), _replicates(rng, 1.0, 0.002, 6), paired=False)
    assert v.verdict == "keep" and "unpaired" in v.reason and v.n == 6
    assert v.delta == pytest.approx(-0.05, abs=0.005)


def test_unpaired_false_keeps_stay_below_alpha_when_there_is_no_effect():
    # Known truth: candidate and baseline are the same distribution. Welch's test at alpha=0.05 (no
    # noise floor) may keep at most ~5% of 2000 simulated promotions; the paired-by-index test on
    # unpaired data has no such guarantee, so this rule is what replicates need.
    rng = np.random.default_rng(7)
    keeps = sum(verdict(_replicates(rng, 1.0, 0.01, 4), _replicates(rng, 1.0, 0.01, 4), alpha=0.05,
                        floor_multiple=0.0, paired=False).verdict == "keep" for _ in range(2000))
    print(f"false keep rate (unpaired, alpha 0.05): {keeps / 2000:.3f}")
    assert keeps / 2000 <= 0.05 + 3 * (0.05 * 0.95 / 2000) ** 0.5


def test_unpaired_verdict_is_inconclusive_when_noise_hides_a_small_gain():
    rng = np.random.default_rng(3)
    v = verdict(_replicates(rng, 0.999, 0.01, 3), _replicates(rng, 1.0, 0.01, 3), paired=False)
    assert v.verdict in ("inconclusive", "discard") and "unpaired" in v.reason
    one = verdict({0: 0.9}, {0: 1.0, 1: 1.01}, paired=False)
    assert one.verdict == "inconclusive" and "fewer than 2 runs" in one.reason
