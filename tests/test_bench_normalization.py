"""The normalization benchmark's simulation: a quick run must show what the full one reports
(normalization beats raw ranking, and the imposed lead is exactly the stated one)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fleet_cli import load_script

BENCH = Path(__file__).resolve().parent.parent / "bench" / "normalization.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_normalization")


def test_best_idea_leads_by_the_stated_margin(bench):
    setup = bench.Setup()
    truth, _ = bench.simulate_trial(np.random.default_rng(3), setup)
    best, runner_up = sorted(truth.values())[:2]
    assert runner_up - best == pytest.approx(setup.winner_margin_sds * setup.seed_sd)


def test_no_imposed_lead_leaves_the_draws_alone(bench):
    setup = replace(bench.Setup(), winner_margin_sds=0.0)
    a, _ = bench.simulate_trial(np.random.default_rng(3), setup)
    rng = np.random.default_rng(3)
    effects = rng.normal(0.0, setup.idea_sd, setup.n_configs)
    assert sorted(a.values()) == pytest.approx(sorted(1.0 + effects))


def test_normalized_ranking_beats_raw_on_a_mixed_fleet(bench):
    summary = bench.run(replace(bench.Setup(), h200_factor=1.2), trials=15, seed=11)
    assert summary["spearman_normalized"] > summary["spearman_raw"] + 0.05
    assert summary["top1_normalized"] > summary["top1_raw"]
    assert summary["slope_rms"] < 0.02


REAL = Path(__file__).resolve().parent.parent / "bench" / "normalization_real.py"


@pytest.fixture(scope="module")
def real():
    return load_script(REAL, "bench_normalization_real")


def test_the_real_training_bench_reads_summaries_and_scores_a_mixed_fleet(real):
    """The analysis of bench/normalization_real.py on runs made up here (its training is the slow part)."""
    assert real._summary("step 1\n---\nval_bpb: 2.5\nnum_steps: 30\nnot a line\n") == {"val_bpb": "2.5", "num_steps": "30"}
    rng = np.random.default_rng(0)
    quality = {c: 2.4 + 0.05 * i for i, c in enumerate(real.CONFIGS)}
    runs = []
    for config, q in quality.items():
        for seed in range(3):
            for speed, factor in ((real.REFERENCE, 1.0), (real.SLOW, 0.6)):
                steps = 40 * factor * np.exp(rng.normal(0, 0.02))
                runs.append(real.Run(config, seed, speed, False, q - 0.3 * np.log(steps / 40) + rng.normal(0, 0.005),
                                     steps, 4.0, 9.0))
        runs += [real.Run(config, 1000 + s, real.REFERENCE, True, q, 40.0, 4.0, 9.0) for s in range(2)]
    truth = {c: q for c, q in quality.items()}
    trials = [real.one_trial(rng, runs, truth) for _ in range(30)]
    assert np.mean([t.spearman_normalized for t in trials]) > np.mean([t.spearman_raw for t in trials]) + 0.03
    assert np.median([t.factor for t in trials]) == pytest.approx(0.6, rel=0.05)
