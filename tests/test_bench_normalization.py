"""The normalization benchmark's simulation: a quick run must show what the full one reports
(normalization beats raw ranking, and the imposed lead is exactly the stated noise floor)."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "normalization.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_normalization", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_best_idea_leads_by_the_noise_floor(bench):
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
