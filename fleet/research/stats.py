"""Small, pure statistics shared by normalization, promotion and ablation.

Everything here takes plain sequences of floats and returns frozen records; nothing reads a clock,
a file or a global random state (the bootstrap takes an explicit seed, so results are reproducible).

Conventions: the metric is val_bpb, *lower is better*, so a paired difference is
``candidate - baseline`` and "better" means a negative difference. The one-sided tests below ask
"is the candidate lower than the baseline?".

Noise floor ("Cohen-style"): seed-to-seed noise is measured by the baseline's sample standard
deviation ``s`` over seeds. An improvement counts as real only if it exceeds ``multiple * s``
(default 2, i.e. a standardized effect size d > 2 — far beyond Cohen's "large" 0.8, because one
training seed is one draw of a noisy process and we keep changes forever).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _sps

from fleet.errors import InputError

# sd ≈ 1.4826 * MAD for normal data; the median's standard error is ≈ sqrt(pi/2) * sd / sqrt(n).
MAD_TO_SD = 1.4826
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)

TestMethod = Literal["t", "bootstrap"]


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof=1); std is None with fewer than 2 values."""

    n: int
    mean: float | None
    std: float | None


@dataclass(frozen=True)
class PairedTest:
    """One-sided paired test of H1: mean(candidate - baseline) < 0."""

    n: int
    mean_delta: float
    std_delta: float | None
    p_value: float | None  # None when it cannot be computed (fewer than 2 pairs)
    method: TestMethod
    note: str = ""


def check_seeds(seeds: object) -> None:
    """Paired statistics need a whole, positive number of seeds per arm."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"`seeds` is {seeds!r}, but must be a positive integer (e.g. `seeds: 3`)")


def finite(values: Sequence[float | None]) -> list[float]:
    """The values that are real numbers (drops None, NaN and infinities: crashed runs)."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Sequence[float | None]) -> MeanStd:
    xs = finite(values)
    if not xs:
        return MeanStd(0, None, None)
    arr = np.asarray(xs)
    std = float(arr.std(ddof=1)) if arr.size >= 2 else None
    return MeanStd(int(arr.size), float(arr.mean()), std)


def robust_center(values: Sequence[float], weights: Sequence[float] | None = None) -> tuple[float, float | None]:
    """(weighted) median and a MAD-based standard error of it; se is None for a single value.

    The median resists the odd outlier (a run that hit a slow node, a mislabelled device); the
    standard error assumes roughly normal scatter around it. With weights, the effective sample
    size is Kish's (sum w)^2 / sum w^2.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("robust_center needs at least one value")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    center = _weighted_median(x, w)
    if x.size < 2:
        return center, None
    mad = _weighted_median(np.abs(x - center), w)
    n_eff = float(w.sum() ** 2 / np.square(w).sum())
    return center, float(MEDIAN_SE_FACTOR * MAD_TO_SD * mad / math.sqrt(n_eff))


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cum = np.cumsum(ws)
    half = cum[-1] / 2.0
    i = int(np.searchsorted(cum, half))
    # An exact tie at the halfway mark (e.g. an even count, equal weights) takes the midpoint,
    # so the unweighted case agrees with np.median.
    if math.isclose(cum[i], half) and i + 1 < xs.size:
        return float((xs[i] + xs[i + 1]) / 2.0)
    return float(xs[i])


def paired_one_sided(
    candidate: Sequence[float],
    baseline: Sequence[float],
    method: TestMethod = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedTest:
    """Is the candidate lower than the baseline, pair by pair (same seeds, same order)?

    ``t``: scipy's paired t-test, ``alternative="less"``. ``bootstrap``: resample the paired
    differences after centring them on 0 (the null) and count how often a resampled mean is at least
    as negative as the observed one; p is (1 + count) / (1 + n_boot) so it is never exactly 0.
    Zero variance of the differences (e.g. a constant shift) makes the t statistic infinite: p is
    then 0 for a negative shift, 1 otherwise, and the note says so.
    """
    if len(candidate) != len(baseline):
        raise ValueError(f"paired test needs equal lengths, got {len(candidate)} and {len(baseline)}")
    d = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    n = int(d.size)
    if n == 0:
        return PairedTest(0, float("nan"), None, None, method, "no pairs")
    mean = float(d.mean())
    if n < 2:
        return PairedTest(n, mean, None, None, method, "one pair: no estimate of the noise")
    std = float(d.std(ddof=1))
    if std == 0.0:
        p = 0.0 if mean < 0 else 1.0
        return PairedTest(n, mean, std, p, method, "every pair differs by the same amount (zero variance)")
    if method == "t":
        p = float(_sps.ttest_rel(d, np.zeros_like(d), alternative="less").pvalue)
        return PairedTest(n, mean, std, p, method)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        centred = d - mean
        idx = rng.integers(0, n, size=(n_boot, n))
        boot_means = centred[idx].mean(axis=1)
        p = float((1 + np.count_nonzero(boot_means <= mean)) / (1 + n_boot))
        note = "bootstrap with few pairs is coarse; prefer the t-test below ~8 pairs" if n < 8 else ""
        return PairedTest(n, mean, std, p, method, note)
    raise ValueError(f"method is {method!r}, but must be 't' or 'bootstrap'")


@dataclass(frozen=True)
class UnpairedTest:
    """One-sided Welch test of H1: mean(candidate) < mean(baseline), for runs that share no seed."""

    n_candidate: int
    n_baseline: int
    mean_delta: float  # mean(candidate) - mean(baseline)
    se_delta: float | None
    p_value: float | None  # None with fewer than 2 runs on either side
    note: str = ""


def welch_one_sided(candidate: Sequence[float], baseline: Sequence[float]) -> UnpairedTest:
    """Is the candidate lower than the baseline, comparing means of independent runs?

    For replicates: a workload without a SEED knob fixes its seed in code, so runs cannot be paired
    by seed and differ only by nondeterminism. Welch's t-test (scipy ``ttest_ind``, unequal variances,
    ``alternative="less"``) controls the false-positive rate at alpha without assuming equal noise on
    both sides; it needs more runs than a paired test to detect the same effect.
    """
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if c.size == 0 or b.size == 0:
        return UnpairedTest(int(c.size), int(b.size), float("nan"), None, None, "no runs on one side")
    delta = float(c.mean() - b.mean())
    if c.size < 2 or b.size < 2:
        return UnpairedTest(int(c.size), int(b.size), delta, None, None, "fewer than 2 runs on one side")
    se = math.sqrt(float(c.var(ddof=1)) / c.size + float(b.var(ddof=1)) / b.size)
    if se == 0.0:
        p = 0.0 if delta < 0 else 1.0
        return UnpairedTest(int(c.size), int(b.size), delta, 0.0, p, "no run-to-run variation on either side")
    p = float(_sps.ttest_ind(c, b, equal_var=False, alternative="less").pvalue)
    return UnpairedTest(int(c.size), int(b.size), delta, se, p)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval for the mean; None with fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    mean, sem = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    if sem == 0.0:
        return mean, mean
    half = float(_sps.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * sem
    return mean - half, mean + half
