"""Small, pure statistics shared by normalization, promotion and ablation.

Everything here takes plain sequences of floats and returns frozen records; nothing reads a clock,
a file or a global random state. The metric is *lower is better* from here up (a higher-is-better
metric is negated before it reaches the research layer). The tests that verdicts rest on are in
`fleet.research.verdicts` and `fleet.research.group_sequential`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleet.errors import InputError

# sd ≈ 1.4826 * MAD for normal data; the median's standard error is ≈ sqrt(pi/2) * sd / sqrt(n).
MAD_TO_SD = 1.4826
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)

@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof=1); std is None with fewer than 2 values."""

    n: int
    mean: float | None
    std: float | None


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


