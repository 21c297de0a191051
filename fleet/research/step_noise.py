"""Step noise: on one accelerator, a run that got fewer steps than its configuration usually gets
(a busy neighbour, thermals, a shared core) scores worse for a reason that is not the configuration.

Within one configuration, accelerator and time budget, ``value ≈ a − b·ln(steps)`` (the same
log-linear law as hardware normalization, `fleet.research.normalize`). A run's deviation from its
configuration's *typical* step count (the median over its runs there) is noise, so

    corrected = value + b · (ln steps − ln typical steps)

puts every run at its configuration's typical step count. A configuration whose runs all took the
same number of steps is unchanged (the correction never reorders configurations without jitter);
a configuration's mean moves only by the jitter it suffered.

The slope ``b`` is measured from the jitter itself when there is enough of it (a pooled
within-group regression of value on ln steps: ``jitter_slope``), else the fleet's cross-hardware
slope (`normalize.estimate_slope`) is used, else none (no correction).

Verdicts (`fleet.research.verdicts`) use the correction on paired differences only with a typical
step difference measured on runs *outside* the judged pairs: estimated from the pairs themselves, it
carries exactly the noise the correction would remove, and a test on such corrected values would
claim more precision than the data hold. ``pair_offsets`` and ``mismatched_pairs`` are for them.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_JITTER_RUNS = 6  # runs with step jitter before the jitter's own slope is trusted
MIN_LOG_SPREAD = 0.01  # pooled sd of ln steps below which there is no jitter to correct (~1%)
DEFAULT_MISMATCH = 0.10  # a seed pair whose step ratio is >10% off the configurations' typical ratio is flagged


@dataclass(frozen=True)
class StepRun:
    """One finished run as step-noise correction sees it."""

    key: str  # configuration + accelerator + budget (+ code): runs that should take the same steps
    value: float
    steps: float | None


@dataclass(frozen=True)
class SlopeFit:
    slope: float | None  # metric per e-fold of steps (> 0: more steps, lower value); None: no correction
    se: float | None
    n_runs: int
    method: str  # "jitter", "fleet", "none"
    note: str


@dataclass(frozen=True)
class Correction:
    values: dict[int, float]  # index into the input -> corrected value
    slope: SlopeFit
    variance_raw: float | None  # pooled within-group variance of the values
    variance_corrected: float | None

    @property
    def variance_removed(self) -> float | None:
        """The share of within-configuration variance the correction removed (negative: it added some)."""
        if not self.variance_raw or self.variance_corrected is None:
            return None
        return 1.0 - self.variance_corrected / self.variance_raw


def _groups(runs: Sequence[StepRun]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        if r.steps is not None and r.steps > 0 and math.isfinite(r.steps) and math.isfinite(r.value):
            out[r.key].append(i)
    return out


def jitter_slope(runs: Sequence[StepRun]) -> SlopeFit:
    """b from within-group variation: regress value on ln steps with one intercept per group."""
    sxx = sxy = 0.0
    n = groups = 0
    for members in _groups(runs).values():
        if len(members) < 2:
            continue
        x = np.log([runs[i].steps for i in members])
        y = np.asarray([runs[i].value for i in members])
        x, y = x - x.mean(), y - y.mean()
        sxx += float(x @ x)
        sxy += float(x @ y)
        n += len(members)
        groups += 1
    if n < MIN_JITTER_RUNS or sxx <= 0 or math.sqrt(sxx / max(n - groups, 1)) < MIN_LOG_SPREAD:
        return SlopeFit(None, None, n, "none", f"too little step jitter to measure a slope from ({n} runs)")
    slope = -sxy / sxx
    ss = 0.0
    for members in _groups(runs).values():
        if len(members) < 2:
            continue
        x = np.log([runs[i].steps for i in members])
        y = np.asarray([runs[i].value for i in members])
        ss += float(np.sum(((y - y.mean()) + slope * (x - x.mean())) ** 2))
    df = n - groups - 1
    se = math.sqrt(ss / df / sxx) if df > 0 else None
    return SlopeFit(slope, se, n, "jitter", f"within-configuration regression over {n} runs in {groups} groups")


def choose_slope(runs: Sequence[StepRun], fleet_slope: float | None) -> SlopeFit:
    """The jitter's own slope when it is measured well (and positive), else the fleet's, else none."""
    fit = jitter_slope(runs)
    if fit.slope is not None and fit.slope > 0 and fit.se is not None and fit.slope > 2 * fit.se:
        return fit
    if fleet_slope is not None and fleet_slope > 0:
        why = fit.note if fit.slope is None else f"the jitter's own slope {fit.slope:.3f} is too uncertain"
        return SlopeFit(fleet_slope, None, fit.n_runs, "fleet", f"the fleet's cross-hardware slope ({why})")
    return SlopeFit(None, None, fit.n_runs, "none", fit.note)


def typical_log_steps(runs: Sequence[StepRun]) -> dict[str, float]:
    """Median ln steps per group."""
    return {key: float(np.median(np.log([runs[i].steps for i in members]))) for key, members in _groups(runs).items()}


def correct(runs: Sequence[StepRun], slope: SlopeFit) -> Correction:
    """Each run's value at its group's typical step count (unchanged where steps are unknown)."""
    values = {i: r.value for i, r in enumerate(runs)}
    if slope.slope is None:
        return Correction(values, slope, _pooled_variance(runs, values), None)
    typical = typical_log_steps(runs)
    for key, members in _groups(runs).items():
        for i in members:
            values[i] = runs[i].value + slope.slope * (math.log(runs[i].steps) - typical[key])
    raw = {i: r.value for i, r in enumerate(runs)}
    return Correction(values, slope, _pooled_variance(runs, raw), _pooled_variance(runs, values))


def _pooled_variance(runs: Sequence[StepRun], values: dict[int, float]) -> float | None:
    ss, df = 0.0, 0
    for members in _groups(runs).values():
        if len(members) < 2:
            continue
        v = np.asarray([values[i] for i in members])
        ss += float(np.sum((v - v.mean()) ** 2))
        df += len(members) - 1
    return ss / df if df else None


# ---- paired comparisons --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepOffset:
    """The candidate's typical ln steps minus the baseline's, from runs outside the judged pairs."""

    offset: float
    se: float  # its standard error (the jitter's sd over the outside runs)
    n_candidate: int
    n_baseline: int


def outside_offset(candidate_log_steps: Iterable[float], baseline_log_steps: Iterable[float]) -> StepOffset | None:
    """A StepOffset from outside runs of each side (at least 2 each, so their jitter is measured)."""
    c, b = list(candidate_log_steps), list(baseline_log_steps)
    if len(c) < 2 or len(b) < 2:
        return None
    ss = float(np.sum((np.asarray(c) - np.mean(c)) ** 2) + np.sum((np.asarray(b) - np.mean(b)) ** 2))
    var = ss / (len(c) + len(b) - 2)
    return StepOffset(float(np.mean(c) - np.mean(b)), math.sqrt(var * (1 / len(c) + 1 / len(b))), len(c), len(b))


def mismatched_pairs(units: Sequence[int], log_ratios: Sequence[float], threshold: float = DEFAULT_MISMATCH) -> tuple[int, ...]:
    """Pairs whose step ratio (candidate ÷ baseline) is more than ``threshold`` off the pairs' median ratio.

    The configurations may differ in speed (a wider model runs fewer steps): that is signal, and it
    shows as the median ratio; a pair far from it had one run slowed or sped up by its surroundings.
    """
    if len(log_ratios) < 2:
        return ()
    center = float(np.median(log_ratios))
    limit = math.log1p(threshold)
    return tuple(u for u, r in zip(units, log_ratios) if abs(r - center) > limit)
