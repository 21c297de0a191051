"""Promotion planning: candidate selection, paired plans, and which seed pairs a sequential wave adds next."""
from __future__ import annotations

import pytest

from fleet.core.ledger_rows import ExperimentRow
from fleet.errors import InputError
from fleet.research.normalize import LeaderboardRow
from fleet.research.promote import (
    IN_FLIGHT,
    closed,
    more_pairs,
    plan_validation,
    planned_limit,
    rule_from_spec,
    rule_spec,
    select_candidates,
)
from fleet.research.verdicts import Rule, Verdict
from fleet.types import ExperimentState

DONE, PENDING, CRASH = ExperimentState.DONE, ExperimentState.PENDING, ExperimentState.CRASH


def row(key: str, normalized: float | None, raw: float = 1.0) -> LeaderboardRow:
    return LeaderboardRow(0, key, "normalized", 1, raw, None, 1 if normalized else 0, normalized, None, ("H100",))


def test_select_candidates_takes_the_top_k_by_normalized_and_skips_the_baseline():
    ranked = [row("b", 0.99), row("base", 0.98), row("a", 0.97, raw=1.2), row("c", 1.01), row("u", None, raw=0.5)]
    # b (0.99) and c (1.01) did not beat the baseline (0.98) on the screen: not promoted by default
    assert [r.config_key for r in select_candidates(ranked, 2, "base")] == ["a"]
    assert [r.config_key for r in select_candidates(ranked, 2, "base", beat_baseline=False)] == ["a", "b"]
    assert [r.config_key for r in select_candidates(ranked, 10, "base", beat_baseline=False)] == ["a", "b", "c"]
    # a tie is not a win; a baseline that did not run on the screen cannot be compared with: nothing left out
    assert [r.config_key for r in select_candidates([row("base", 0.97), *ranked[2:]], 3, "base")] == []
    assert [r.config_key for r in select_candidates(ranked, 2, "elsewhere")] == ["a", "base"]
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


def test_plan_validation_compares_configurations_with_defaults_filled_in():
    defaults = {"LR": "0.01"}

    def key(config):
        return repr(sorted((k, v) for k, v in config.items() if defaults.get(k) != v))

    with pytest.raises(InputError, match="once defaults are filled in"):
        plan_validation([{"LR": "0.01"}], {}, seeds=3, key=key)  # an A/A pair is never planned


@pytest.mark.parametrize("seeds", [0, -1, 2.5, True])
def test_plan_validation_rejects_bad_seeds(seeds):
    with pytest.raises(InputError, match="`seeds`"):
        plan_validation([{"LR": "0.02"}], {"LR": "0.01"}, seeds=seeds)


def exp(key: str, seed: int, state: ExperimentState = DONE) -> ExperimentRow:
    return ExperimentRow(f"w-{key}{seed}", "w", seed, {}, key, seed, "", key, "snap", "validate", state, 1, "",
                         0.0, 0.0, 1.0 if state.finished else None)


def verdict(name: str, label: str, n: int = 3) -> Verdict:
    return Verdict(name, label, "", "seed", n)


RULE = Rule(max_n=6, first_look=3)


def test_undecided_candidates_get_their_next_seeds_and_decided_ones_none():
    runs = [exp(k, s) for k in ("base", "a", "b") for s in range(3)]
    asks = more_pairs([verdict("a", "need_more"), verdict("b", "discard")], runs, "base", set(), RULE)
    assert [(r.config_key, r.seed, r.with_baseline) for r in asks] == [("a", 3, True), ("a", 4, True)]
    assert len(asks) == IN_FLIGHT
    assert more_pairs([verdict("a", "need_more", n=2)], runs, "base", set(), RULE) == []  # before its first look
    # a seed the baseline already finished elsewhere (pooled evidence) is not rerun
    asks = more_pairs([verdict("a", "need_more")], runs, "base", {3}, RULE)
    assert [(r.seed, r.with_baseline) for r in asks] == [(3, False), (4, True)]


def test_no_more_than_in_flight_and_never_past_the_cap():
    runs = [exp("base", s) for s in range(6)] + [exp("a", s) for s in range(4)] + [exp("a", 4, PENDING)]
    asks = more_pairs([verdict("a", "need_more")], runs, "base", set(), RULE)
    assert [r.seed for r in asks] == [5]  # one in flight already; the cap is 6 pairs
    full = [exp("a", s) for s in range(6)]
    assert more_pairs([verdict("a", "need_more")], full, "base", set(), RULE) == []


def test_crashed_pairs_are_replaced_up_to_the_limit():
    runs = [exp("base", s) for s in range(6)] + [exp("a", s, CRASH if s < 2 else DONE) for s in range(6)]
    asks = more_pairs([verdict("a", "need_more", n=4)], runs, "base", set(), RULE)
    assert [r.seed for r in asks] == [6, 7]
    many = [exp("a", s, CRASH if s > 2 else DONE) for s in range(planned_limit(RULE))]
    assert more_pairs([verdict("a", "need_more")], many, "base", set(), RULE) == []


def test_fixed_designs_and_cancelled_waves_get_nothing_more():
    runs = [exp(k, s) for k in ("base", "a") for s in range(3)]
    assert more_pairs([verdict("a", "need_more")], runs, "base", set(), Rule(max_n=3, design="fixed")) == []
    cancelled = runs + [exp("a", 3, ExperimentState.CANCELLED)]
    assert more_pairs([verdict("a", "need_more")], cancelled, "base", set(), RULE) == []


def test_a_candidate_is_closed_when_nothing_more_will_come():
    base = [exp("base", s) for s in range(3)]
    assert not closed(RULE, [exp("a", s) for s in range(3)], base)  # sequential: more may be added
    assert closed(Rule(max_n=3, design="fixed"), [exp("a", s) for s in range(3)], base)
    assert not closed(Rule(max_n=3, design="fixed"), [exp("a", 0), exp("a", 1, PENDING)], base)
    assert closed(RULE, [exp("a", s, CRASH) for s in range(planned_limit(RULE))], base)


def test_rules_round_trip_through_the_wave_spec_and_old_waves_read_as_fixed():
    rule = Rule(alpha=0.02, min_effect=0.001, max_n=12, first_look=4, design="sequential", mismatch=0.2)
    assert rule_from_spec({"rule": rule_spec(rule)}) == rule
    assert rule_from_spec({"seeds": 5}) == Rule(max_n=5, first_look=5, design="fixed")
    assert rule_from_spec({"seeds": [0, 1, 2]}).max_n == 3  # an old ablate wave
