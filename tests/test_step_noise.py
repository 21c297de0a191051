"""Step-noise correction on constructed data: it removes step jitter and never reorders jitter-free configurations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fleet.research.step_noise import (
    StepRun,
    choose_slope,
    correct,
    jitter_slope,
    mismatched_pairs,
    outside_offset,
)

SLOPE = 0.08  # bpb per e-fold of steps, deliberately not the normalization prior


def jittered(rng, configs: dict[str, tuple[float, float]], runs: int, jitter: float, noise: float) -> list[StepRun]:
    """Each configuration: (quality at its typical steps, typical steps); runs get step jitter and seed noise."""
    out = []
    for key, (quality, steps) in configs.items():
        for _ in range(runs):
            dev = rng.normal(0.0, jitter)
            out.append(StepRun(key, quality - SLOPE * dev + rng.normal(0.0, noise), steps * math.exp(dev)))
    return out


def test_correction_removes_most_of_the_variance_of_repeated_identical_configurations():
    rng = np.random.default_rng(1)
    configs = {f"c{i}": (1.0 + 0.002 * i, 1000.0 * (1 + 0.1 * i)) for i in range(4)}
    runs = jittered(rng, configs, runs=8, jitter=0.05, noise=0.0005)
    fit = choose_slope(runs, fleet_slope=None)
    assert fit.method == "jitter" and fit.slope == pytest.approx(SLOPE, rel=0.15)
    c = correct(runs, fit)
    print(f"within-configuration variance: raw {c.variance_raw:.3g}, corrected {c.variance_corrected:.3g}, "
          f"removed {100 * c.variance_removed:.0f}%")
    assert c.variance_corrected < c.variance_raw
    assert c.variance_removed > 0.9  # the jitter term is ~98% of the variance here


@pytest.mark.parametrize("seed", range(20))
def test_without_jitter_the_correction_changes_nothing_and_never_reorders(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1.0, 0.003, 2)
    steps = rng.uniform(500, 2000, 2)  # the two configurations run at different (but steady) speeds
    runs = [StepRun("a", a + rng.normal(0, 0.001), steps[0]) for _ in range(5)]
    runs += [StepRun("b", b + rng.normal(0, 0.001), steps[1]) for _ in range(5)]
    c = correct(runs, choose_slope(runs, fleet_slope=0.1))  # a slope from elsewhere: still nothing to correct
    assert all(c.values[i] == pytest.approx(r.value) for i, r in enumerate(runs))
    raw_a, raw_b = np.mean([r.value for r in runs[:5]]), np.mean([r.value for r in runs[5:]])
    cor_a, cor_b = np.mean([c.values[i] for i in range(5)]), np.mean([c.values[i] for i in range(5, 10)])
    assert (raw_a < raw_b) == (cor_a < cor_b)


def test_a_configuration_that_runs_fewer_steps_by_design_keeps_its_cost():
    """Speed differences between configurations are signal: only deviations from a config's typical count move."""
    runs = [StepRun("wide", 1.010, 800.0), StepRun("wide", 1.010, 800.0), StepRun("narrow", 1.000, 1000.0),
            StepRun("narrow", 1.000, 1000.0)]
    c = correct(runs, choose_slope(runs, fleet_slope=0.1))
    assert [c.values[i] for i in range(4)] == pytest.approx([1.010, 1.010, 1.000, 1.000])


def test_slope_sources_in_order():
    rng = np.random.default_rng(2)
    jitter = jittered(rng, {"a": (1.0, 1000.0), "b": (1.01, 900.0)}, runs=6, jitter=0.05, noise=0.0003)
    assert choose_slope(jitter, fleet_slope=0.3).method == "jitter"
    steady = [StepRun("a", 1.0 + rng.normal(0, 0.001), 1000.0) for _ in range(6)]
    assert choose_slope(steady, fleet_slope=0.1).method == "fleet"
    none = choose_slope(steady, fleet_slope=None)
    assert none.method == "none" and none.slope is None
    assert correct(steady, none).variance_corrected is None
    assert jitter_slope(steady[:3]).slope is None  # too few runs to measure


def test_mismatched_pairs_are_those_far_from_the_typical_ratio():
    ratios = [math.log(0.8)] * 5 + [math.log(0.8 * 1.2)]  # the candidate is 20% slower by design; seed 5 was not
    assert mismatched_pairs([0, 1, 2, 3, 4, 5], ratios, threshold=0.1) == (5,)
    assert mismatched_pairs([0, 1, 2, 3, 4, 5], ratios, threshold=0.25) == ()
    assert mismatched_pairs([0], ratios[:1]) == ()


def test_outside_offset_needs_two_runs_each():
    assert outside_offset([6.9, 6.91], [6.8]) is None
    off = outside_offset([6.9, 6.92], [6.8, 6.82, 6.81])
    assert off.offset == pytest.approx(6.91 - 6.81) and off.se > 0 and (off.n_candidate, off.n_baseline) == (2, 3)


def test_the_leaderboard_reports_step_corrected_values_beside_raw(tmp_path):
    """Repeated runs of two configurations on one accelerator, their step counts jittered (busy cores)."""
    from fleet.core.ledger import Ledger
    from fleet.core.ledger_rows import NewExperiment
    from fleet.research.normalize_view import corrected_for
    from fleet.types import ExperimentState

    rng = np.random.default_rng(5)
    ledger = Ledger(tmp_path / "l.db")
    news = [NewExperiment({"A": a}, f"k{a}", s, "", f"A={a}") for a in ("1", "2") for s in range(6)]
    _, rows = ledger.add_wave("w", "screen", {}, "snap", news)
    for e in rows:
        dev = rng.normal(0.0, 0.1)
        quality = 1.0 if e.config["A"] == "1" else 1.01
        ledger.record_result(e.id, None, ExperimentState.DONE, outcome="done", accelerator="cpu",
                             val_bpb=quality - SLOPE * dev + rng.normal(0, 0.0005),
                             metrics={"num_steps": 20 * math.exp(dev), "training_seconds": 5.0})
    view = corrected_for(ledger)
    assert view.slope.method == "jitter" and view.variance_removed > 0.8
    assert "step noise" in view.summary and "removed" in view.summary
    by_config = {"1": [], "2": []}
    for e in rows:
        by_config[e.config["A"]].append(view.values[e.id])
    assert np.std(by_config["1"]) < 0.002 and np.mean(by_config["1"]) < np.mean(by_config["2"])
