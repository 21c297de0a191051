"""Fair comparisons across hardware: step-rate calibration and a hardware-normalized val_bpb.

Every experiment trains for the same wall-clock budget, so a faster accelerator runs more
optimizer steps and scores better for the same configuration: a raw leaderboard over a mixed
H100/H200 fleet partly ranks hardware. This module removes that effect.

Model
-----
1. **Speed.** Accelerator ``A`` runs ``f_A`` times as many steps per second as the reference
   accelerator ``R`` (``f_R = 1``), whatever the configuration. ``f_A`` is estimated robustly from
   runs, in this order of preference (the method is recorded):

   - ``pairs``: configurations that ran on both ``A`` and ``R``; per configuration the ratio of
     median step rates; ``f_A`` = median over configurations (a log-scale median, with a MAD-based
     standard error and ``n_pairs``);
   - ``calibration``: the only shared configuration is the ``baseline`` (a calibration wave);
   - ``pooled``: no shared configuration: median step rate of all ``A`` runs over that of all ``R``
     runs (only fair if both ran a similar mix of configurations; ``needs_calibration`` lists it);
   - ``reference``: ``A`` is ``R``; ``unknown``: the accelerator is named ``unknown``, has no run
     that reports steps and seconds, or nothing ran on ``R`` to compare with. Never guessed.

2. **Metric.** Within one configuration, near the budget, ``val_bpb ≈ a − b·ln(steps)``. The slope
   ``b`` (bpb per e-fold of steps; b > 0) is estimated from the data: for each configuration that
   ran on two groups with different step counts (different accelerators, or different time budgets:
   a small steps-budget sweep), ``−Δval_bpb / Δln(steps)`` between the group means; ``b`` = weighted
   median over those pairs (weights = the pair's precision, ``Δln(steps)² / (1/n₁ + 1/n₂)``). With
   fewer than ``min_pairs`` pairs the documented prior ``PRIOR_SLOPE`` is used and the result says so.

3. **Normalized value** = the val_bpb the run would have had on ``R``:
   ``val_bpb + b·ln(f_A)``. A run on a faster GPU did more steps, so its normalized value is
   higher (worse) than its raw one; runs on ``R`` are unchanged; runs on an accelerator with an
   unknown factor get ``None`` and a note.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from fleet.research.stats import finite, mean_std, robust_center

REFERENCE_ACCELERATOR = "H100"
UNKNOWN_ACCELERATOR = "unknown"
# Prior slope when the data has no usable pairs: for short GPT pre-training runs at ~1 bpb,
# doubling the steps near a 5-minute budget lowers val_bpb by roughly 0.05-0.1, i.e. b ≈ 0.07-0.14
# per e-fold; 0.1 is the middle. It only matters until a few same-config cross-hardware pairs exist.
PRIOR_SLOPE = 0.1
MIN_SLOPE_PAIRS = 3
# Two step-count groups closer than this (in ln steps, ≈2%) say nothing about the slope but noise.
MIN_LOG_GAP = 0.02
# Runs of one config on one accelerator whose training_seconds are within this ratio share a budget.
_BUDGET_GAP = 1.15
_Z95 = 1.959964

CalibrationMethod = Literal["pairs", "calibration", "pooled", "reference", "unknown"]
SlopeMethod = Literal["pairs", "prior"]


@dataclass(frozen=True)
class RunRecord:
    """One finished experiment, as the ledger knows it."""

    experiment_id: str
    config_key: str  # the knob configuration, regardless of seed
    accelerator: str  # "H100", "H200", "cpu", or "unknown"
    seed: int
    val_bpb: float | None
    num_steps: float | None
    training_seconds: float | None

    @property
    def step_rate(self) -> float | None:
        """Optimizer steps per second, or None when the run did not report both."""
        steps, secs = self.num_steps, self.training_seconds
        if steps is None or secs is None or not (steps > 0 and secs > 0):
            return None
        if not (math.isfinite(steps) and math.isfinite(secs)):
            return None
        return steps / secs


@dataclass(frozen=True)
class SpeedFactor:
    """How fast one accelerator runs relative to the reference (steps/s ÷ reference steps/s)."""

    accelerator: str
    factor: float | None  # None = unknown, never guessed
    low: float | None  # ~95% interval; None when there is no spread to estimate it from
    high: float | None
    log_se: float | None  # standard error of ln(factor)
    n_pairs: int  # configurations the estimate rests on (0 for pooled / unknown)
    n_runs: int  # usable runs on this accelerator
    method: CalibrationMethod
    note: str = ""


@dataclass(frozen=True)
class Calibration:
    reference: str
    factors: tuple[SpeedFactor, ...]
    # Accelerators whose factor is pooled or unknown: a calibration wave (the baseline on each of
    # these and on the reference) would pin them down. Never lists the literal "unknown".
    needs_calibration: tuple[str, ...]

    def factor_for(self, accelerator: str) -> SpeedFactor:
        for f in self.factors:
            if f.accelerator == accelerator:
                return f
        return SpeedFactor(accelerator, None, None, None, None, 0, 0, "unknown", "no runs on this accelerator")


@dataclass(frozen=True)
class SlopeEstimate:
    """b in val_bpb ≈ a − b·ln(steps): bpb gained per e-fold of steps."""

    slope: float
    se: float | None
    n_pairs: int
    method: SlopeMethod
    note: str = ""


@dataclass(frozen=True)
class NormalizedRecord:
    record: RunRecord
    normalized: float | None  # val_bpb as if run on the reference accelerator
    adjustment: float | None  # normalized − raw (= b·ln(factor))
    note: str = ""

    @property
    def raw(self) -> float | None:
        return self.record.val_bpb


def calibrate(
    records: Iterable[RunRecord], reference: str = REFERENCE_ACCELERATOR, baseline: str | None = None
) -> Calibration:
    """Each accelerator's step-rate factor relative to ``reference`` (see the module docstring)."""
    rates = _log_rates_by_accelerator(records)
    seen = sorted(rates, key=lambda a: (a != reference, a))
    ref_runs = rates.get(reference, {})
    factors = []
    for acc in seen:
        runs = rates[acc]
        n_runs = sum(len(v) for v in runs.values())
        if acc == reference:
            factors.append(SpeedFactor(acc, 1.0, 1.0, 1.0, 0.0, 0, n_runs, "reference"))
        elif acc == UNKNOWN_ACCELERATOR:
            note = "the backend did not report the accelerator; normalized values are withheld"
            factors.append(_unknown(acc, n_runs, note))
        elif n_runs == 0:
            factors.append(_unknown(acc, 0, "no run reported both num_steps and training_seconds"))
        elif not ref_runs:
            factors.append(_unknown(acc, n_runs, f"nothing usable ran on the reference {reference} to compare with"))
        else:
            factors.append(_factor_from_runs(acc, runs, ref_runs, n_runs, baseline))
    uncalibrated = ("pooled", "unknown")
    needs = [f.accelerator for f in factors if f.method in uncalibrated and f.accelerator != UNKNOWN_ACCELERATOR]
    if needs and baseline not in ref_runs:
        needs.insert(0, reference)
    return Calibration(reference, tuple(factors), tuple(needs))


def _log_rates_by_accelerator(records: Iterable[RunRecord]) -> dict[str, dict[str, list[float]]]:
    """accelerator -> config_key -> ln(step rate) of each usable run (accelerators seen are all kept)."""
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for r in records:
        by_config = out[r.accelerator]
        rate = r.step_rate
        if rate is not None:
            by_config.setdefault(r.config_key, []).append(math.log(rate))
    return dict(out)


def _unknown(acc: str, n_runs: int, note: str) -> SpeedFactor:
    return SpeedFactor(acc, None, None, None, None, 0, n_runs, "unknown", note)


def _factor_from_runs(
    acc: str, runs: dict[str, list[float]], ref_runs: dict[str, list[float]], n_runs: int, baseline: str | None
) -> SpeedFactor:
    shared = sorted(set(runs) & set(ref_runs))
    if shared:
        ratios = [float(np.median(runs[c]) - np.median(ref_runs[c])) for c in shared]
        if len(shared) >= 2:
            log_f, se = robust_center(ratios)
        else:  # one configuration: its spread across seeds is the only noise estimate
            log_f, se = ratios[0], _median_difference_se(runs[shared[0]], ref_runs[shared[0]])
        method: CalibrationMethod = "calibration" if shared == [baseline] else "pairs"
        note = f"{len(shared)} configuration(s) ran on both"
        return _speed_factor(acc, log_f, se, len(shared), n_runs, method, note)
    mine = [x for v in runs.values() for x in v]
    ref = [x for v in ref_runs.values() for x in v]
    log_f = float(np.median(mine) - np.median(ref))
    note = "no configuration ran on both: compares all runs, fair only for a similar mix of configurations"
    return _speed_factor(acc, log_f, _median_difference_se(mine, ref), 0, n_runs, "pooled", note)


def _median_difference_se(a: Sequence[float], b: Sequence[float]) -> float | None:
    se_a, se_b = robust_center(a)[1], robust_center(b)[1]
    if se_a is None or se_b is None:
        return None
    return math.hypot(se_a, se_b)


def _speed_factor(
    acc: str, log_f: float, se: float | None, n_pairs: int, n_runs: int, method: CalibrationMethod, note: str
) -> SpeedFactor:
    if se is None:
        low = high = None
        note += "; too few runs to estimate its uncertainty"
    else:
        low, high = math.exp(log_f - _Z95 * se), math.exp(log_f + _Z95 * se)
    return SpeedFactor(acc, math.exp(log_f), low, high, se, n_pairs, n_runs, method, note)


def estimate_slope(
    records: Iterable[RunRecord], prior: float = PRIOR_SLOPE, min_pairs: int = MIN_SLOPE_PAIRS
) -> SlopeEstimate:
    """b from same-configuration runs at different step counts; the prior when the data can't say.

    With ``min_pairs`` or more pairs: weighted median (robust to an odd pair). With fewer — typically
    one calibration wave, the baseline on every GPU — the median has no spread to judge it by, so
    the pairs are combined by their precision-weighted mean and its standard error comes from the
    seed-to-seed scatter within groups; that needs at least two degrees of freedom of scatter.
    """
    pairs = _slope_pairs(records)
    slopes, weights = pairs.slopes, pairs.weights
    n = len(slopes)
    if n >= min_pairs:
        slope, se = robust_center(slopes, weights)
        note = f"weighted median over {n} same-config pairs"
    elif n and pairs.scatter_df >= 2:
        w = np.asarray(weights)
        slope = float(np.dot(w, slopes) / w.sum())
        se = math.sqrt(pairs.scatter_var / w.sum())
        note = f"{n} same-config pair(s) (< {min_pairs}): precision-weighted mean, error from seed scatter"
    else:
        seen = f"; the pairs alone say {slopes[0]:.3f}" if n else ""
        note = f"{n} same-config pair(s) at different step counts, too few seeds to judge them: using the prior{seen}"
        return SlopeEstimate(prior, None, n, "prior", note)
    if slope < 0:
        # More steps never make a configuration worse on average; a negative estimate is noise.
        note += f"; the estimate {slope:.3f} is negative (noise), clamped to 0"
        slope = 0.0
    return SlopeEstimate(slope, se, n, "pairs", note)


@dataclass(frozen=True)
class _SlopePairs:
    slopes: list[float]
    weights: list[float]  # precision of each pair's slope, up to the (shared) seed variance
    scatter_var: float  # pooled within-group variance of val_bpb (seed noise)
    scatter_df: int


def _slope_pairs(records: Iterable[RunRecord]) -> _SlopePairs:
    """Per config, group runs by (accelerator, time budget); every two groups make one pair."""
    usable = [r for r in records if r.accelerator != UNKNOWN_ACCELERATOR and _has_metric_and_steps(r)]
    slopes: list[float] = []
    weights: list[float] = []
    ss, df = 0.0, 0
    for runs in _by_config(usable).values():
        summaries = []
        for acc_runs in _by_accelerator(runs).values():
            for group in _budget_buckets(acc_runs):
                vals = np.array([r.val_bpb for r in group], dtype=float)
                ss += float(np.square(vals - vals.mean()).sum())
                df += vals.size - 1
                log_steps = float(np.mean([math.log(r.num_steps) for r in group]))
                summaries.append((log_steps, float(vals.mean()), vals.size))
        for i in range(len(summaries)):
            for j in range(i + 1, len(summaries)):
                (s1, v1, n1), (s2, v2, n2) = summaries[i], summaries[j]
                gap = s1 - s2
                if abs(gap) < MIN_LOG_GAP:
                    continue
                slopes.append(-(v1 - v2) / gap)
                weights.append(gap * gap / (1.0 / n1 + 1.0 / n2))
    return _SlopePairs(slopes, weights, ss / df if df else 0.0, df)


def _has_metric_and_steps(r: RunRecord) -> bool:
    return bool(finite([r.val_bpb])) and r.num_steps is not None and math.isfinite(r.num_steps) and r.num_steps > 0


def _by_config(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        out[r.config_key].append(r)
    return dict(out)


def _by_accelerator(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        out[r.accelerator].append(r)
    return dict(out)


def _budget_buckets(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """Split one config's runs on one accelerator by time budget (a steps-budget sweep)."""
    ordered = sorted(runs, key=lambda r: r.training_seconds or 0.0)
    buckets: list[list[RunRecord]] = [[ordered[0]]]
    for prev, cur in zip(ordered, ordered[1:]):
        a, b = prev.training_seconds, cur.training_seconds
        if a and b and b / a > _BUDGET_GAP:
            buckets.append([])
        buckets[-1].append(cur)
    return buckets


def normalize(
    records: Iterable[RunRecord], calibration: Calibration, slope: SlopeEstimate | float
) -> list[NormalizedRecord]:
    """Each run's val_bpb as if it had run on the reference: val_bpb + b·ln(factor)."""
    b = slope.slope if isinstance(slope, SlopeEstimate) else float(slope)
    out = []
    for r in records:
        f = calibration.factor_for(r.accelerator)
        if not finite([r.val_bpb]):
            out.append(NormalizedRecord(r, None, None, "no val_bpb (crashed or unfinished)"))
        elif f.factor is None:
            out.append(NormalizedRecord(r, None, None, f"{r.accelerator}: speed unknown ({f.note})"))
        else:
            adjustment = b * math.log(f.factor)
            out.append(NormalizedRecord(r, r.val_bpb + adjustment, adjustment, f"{f.method}"))
    return out


@dataclass(frozen=True)
class LeaderboardRow:
    """One configuration, seeds aggregated: raw and normalized side by side."""

    position: int  # 1 = best under ``sorted_by``
    config_key: str
    sorted_by: Literal["normalized", "raw"]
    n_runs: int  # runs with a val_bpb
    raw_mean: float | None
    raw_std: float | None
    n_normalized: int  # runs whose accelerator speed is known
    normalized_mean: float | None
    normalized_std: float | None
    accelerators: tuple[str, ...]
    note: str = ""


def rank(records: Iterable[NormalizedRecord], by: Literal["normalized", "raw"] = "normalized") -> list[LeaderboardRow]:
    """Leaderboard: mean over seeds per configuration, best (lowest) first.

    Rows without a value for the sort key (every run crashed, or ran only on unknown hardware) go
    last, in config_key order, so nothing silently disappears from the board.
    """
    if by not in ("normalized", "raw"):
        raise ValueError(f"by is {by!r}, but must be 'normalized' or 'raw'")
    grouped: dict[str, list[NormalizedRecord]] = defaultdict(list)
    for n in records:
        grouped[n.record.config_key].append(n)
    rows = [_leaderboard_row(key, runs, by) for key, runs in grouped.items()]

    def sort_key(row: LeaderboardRow) -> tuple[bool, float, str]:
        value = row.normalized_mean if by == "normalized" else row.raw_mean
        return (value is None, value if value is not None else 0.0, row.config_key)

    rows.sort(key=sort_key)
    return [_with_position(row, i + 1) for i, row in enumerate(rows)]


def _leaderboard_row(key: str, runs: list[NormalizedRecord], by: Literal["normalized", "raw"]) -> LeaderboardRow:
    raw = mean_std([n.raw for n in runs])
    norm = mean_std([n.normalized for n in runs])
    withheld = raw.n - norm.n
    note = f"{withheld} run(s) on hardware of unknown speed left out of the normalized mean" if withheld else ""
    return LeaderboardRow(
        position=0,
        config_key=key,
        sorted_by=by,
        n_runs=raw.n,
        raw_mean=raw.mean,
        raw_std=raw.std,
        n_normalized=norm.n,
        normalized_mean=norm.mean,
        normalized_std=norm.std,
        accelerators=tuple(sorted({n.record.accelerator for n in runs})),
        note=note,
    )


def _with_position(row: LeaderboardRow, position: int) -> LeaderboardRow:
    return replace(row, position=position)
