"""Synthetic benchmark of hardware normalization (no training): does the normalized leaderboard
rank ideas rather than hardware?

Setup (one trial; every number is a module constant below, and the whole run is seeded):

- 40 configurations. Configuration c has a ground-truth quality T_c = the val_bpb it scores on
  average on an H100 (the reference) within the time budget. Ideas are spaced realistically for
  an autoresearch-style screen: a config's effect relative to the baseline is drawn from
  N(0, setup.idea_sd); each config also has its own cost (steps/s multiplier ~ lognormal, sd
  setup.config_cost_sd: wider models run fewer steps), which is part of its quality on the reference.
- A 13 x H100 + 3 x H200 fleet, as in SkyPilot's published autoresearch run. Each config is run
  with setup.seeds seeds; every run lands on one of the 16 GPUs uniformly at random (the scheduler gives
  the next job to whichever GPU frees up first, which is as good as random with respect to configs).
- Steps in the budget: H100_STEPS x cost multiplier x accelerator factor (H100 1.0, H200
  setup.h200_factor), times a per-run jitter (lognormal, sd setup.step_jitter: node noise, data loading).
- val_bpb = a_c - setup.slope * ln(steps) + N(0, setup.seed_sd), the model fleet.normalize assumes; a_c is
  set so that the run's expectation on an H100 is T_c.

The estimator sees only the run records (accelerator, steps, seconds, val_bpb), exactly what the
ledger holds: it calibrates the H200 factor and estimates the slope from the same screen, then
normalizes. Per-config scores are means over seeds. We report, averaged over TRIALS trials, the
Spearman correlation of the raw and the normalized per-config scores with the true qualities, and
top-1 recovery: how often the normalized best config is the true best. For reference the script
also prints the same figures for an oracle that knows the true factor and slope (the ceiling set
by seed noise) and the estimator's errors.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.normalize import RunRecord, calibrate, estimate_slope, normalize, rank  # noqa: E402

TRIALS = 400
RNG_SEED = 20260
FLEET = ("H100",) * 13 + ("H200",) * 3
H100_STEPS = 1000.0
BUDGET_S = 300.0


@dataclass(frozen=True)
class Setup:
    n_configs: int = 40
    seeds: int = 3
    h200_factor: float = 1.09  # ~9% more steps in the same 5 minutes (the figure)
    step_jitter: float = 0.01  # per-run lognormal sd of the step count
    config_cost_sd: float = 0.05  # configs differ in cost per step by ~5%
    slope: float = 0.1  # bpb per e-fold of steps: H200 runs score 0.1 * ln(1.09) ≈ 0.0086 lower
    seed_sd: float = 0.0015  # seed-to-seed sd of val_bpb
    idea_sd: float = 0.006  # spread of ideas' true effects
    idea_df: float | None = None


@dataclass(frozen=True)
class TrialResult:
    spearman_raw: float
    spearman_normalized: float
    spearman_oracle: float
    top1_raw: bool
    top1_normalized: bool
    top1_oracle: bool
    factor_error: float  # estimated H200 factor / true factor - 1
    slope_error: float  # estimated slope - true slope


def simulate_trial(rng: np.random.Generator, setup: Setup) -> tuple[np.ndarray, list[RunRecord]]:
    """True per-config qualities and the screen's run records."""
    effect = setup.idea_sd * rng.standard_t(setup.idea_df, setup.n_configs) if setup.idea_df else rng.normal(0.0, setup.idea_sd, setup.n_configs)
    cost = np.exp(rng.normal(0.0, setup.config_cost_sd, setup.n_configs))
    h100_steps = H100_STEPS * cost
    truth = 1.0 + effect - setup.slope * (np.log(h100_steps) - math.log(H100_STEPS))
    intercept = truth + setup.slope * np.log(h100_steps)  # a_c: E[val_bpb | H100] = truth
    records = []
    for c in range(setup.n_configs):
        for seed in range(setup.seeds):
            gpu = FLEET[rng.integers(len(FLEET))]
            speed = setup.h200_factor if gpu == "H200" else 1.0
            steps = h100_steps[c] * speed * math.exp(rng.normal(0.0, setup.step_jitter))
            val = intercept[c] - setup.slope * math.log(steps) + rng.normal(0.0, setup.seed_sd)
            records.append(RunRecord(f"c{c}s{seed}", f"c{c}", gpu, seed, float(val), float(round(steps)), BUDGET_S))
    return truth, records


def evaluate_trial(truth: np.ndarray, records: list[RunRecord], setup: Setup) -> TrialResult:
    calibration = calibrate(records, reference="H100")
    slope = estimate_slope(records)
    board = {row.config_key: row for row in rank(normalize(records, calibration, slope), by="normalized")}
    keys = [f"c{c}" for c in range(setup.n_configs)]
    raw = np.array([board[k].raw_mean for k in keys])
    norm = np.array([_or_nan(board[k].normalized_mean) for k in keys])
    oracle_board = rank(normalize(records, _true_calibration(records, setup.h200_factor), setup.slope))
    oracle = np.array([{r.config_key: r.normalized_mean for r in oracle_board}[k] for k in keys])
    best = int(np.argmin(truth))
    h200 = calibration.factor_for("H200").factor
    return TrialResult(
        spearman_raw=float(spearmanr(raw, truth).statistic),
        spearman_normalized=float(spearmanr(norm, truth, nan_policy="omit").statistic),
        spearman_oracle=float(spearmanr(oracle, truth).statistic),
        top1_raw=int(np.argmin(raw)) == best,
        top1_normalized=int(np.nanargmin(norm)) == best,
        top1_oracle=int(np.argmin(oracle)) == best,
        factor_error=(h200 / setup.h200_factor - 1.0) if h200 is not None else float("nan"),
        slope_error=slope.slope - setup.slope,
    )


def _true_calibration(records: list[RunRecord], h200_factor: float):
    from dataclasses import replace

    cal = calibrate(records, reference="H100")
    fixed = tuple(replace(f, factor=h200_factor) if f.accelerator == "H200" else f for f in cal.factors)
    return replace(cal, factors=fixed)


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x


def run(setup: Setup, trials: int = TRIALS, seed: int = RNG_SEED) -> list[TrialResult]:
    rng = np.random.default_rng(seed)
    return [evaluate_trial(*simulate_trial(rng, setup), setup) for _ in range(trials)]


def main() -> None:
    setup = Setup()
    results = run(setup)

    def avg(attr: str) -> float:
        return float(np.nanmean([getattr(r, attr) for r in results]))

    def rms(attr: str) -> float:
        return float(np.sqrt(np.nanmean([getattr(r, attr) ** 2 for r in results])))

    print(f"trials: {TRIALS}  configs: {setup.n_configs}  seeds: {setup.seeds}  fleet: 13xH100 + 3xH200")
    print(f"h200_factor: {setup.h200_factor}  slope: {setup.slope}  seed_sd: {setup.seed_sd}  idea_sd: {setup.idea_sd}")
    print(f"h200_factor_rel_error_rms: {rms('factor_error'):.4f}")
    print(f"slope_error_rms: {rms('slope_error'):.4f}")
    print(f"spearman_oracle: {avg('spearman_oracle'):.4f}")
    print(f"top1_raw: {avg('top1_raw'):.3f}")
    print(f"top1_oracle: {avg('top1_oracle'):.3f}")
    print(f"spearman_raw: {avg('spearman_raw'):.4f}")
    print(f"spearman_normalized: {avg('spearman_normalized'):.4f}")
    print(f"top1_recovery: {avg('top1_normalized'):.3f}")


if __name__ == "__main__":
    main()
