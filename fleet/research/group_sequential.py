"""Group-sequential boundaries: a one-sided test that may look at the data after every seed pair.

Testing again each time a pair finishes, with a fixed-n threshold each time, inflates the error
rate far above alpha (five looks at alpha = 0.05 give ~0.14). A group-sequential design fixes that by
spending alpha over the looks: look k at information fraction ``t_k = n_k / N`` may reject only
beyond a boundary ``c_k`` chosen so that the probability, under the null, of crossing at look k for
the first time is ``alpha(t_k) − alpha(t_{k−1})``; over all looks it is at most ``alpha``.

- **Spending function**: Lan & DeMets (1983) with O'Brien–Fleming shape,
  ``alpha(t) = 2 − 2·Φ(z_{1−alpha/2} / √t)``. It spends almost nothing early (look 1 of 16 needs
  z ≈ 8), so the last look is nearly the fixed-n test and the design loses little power against a
  test at N alone (the price of looking: a few percent more pairs for the same power).
- **Boundaries** by the recursive numerical integration of Armitage, McPherson & Rowe (1969)
  (Jennison & Turnbull 2000, ch. 19) over the score process ``S_k = Z_k·√I_k``, whose increments are
  independent normal: the sub-density of "not yet crossed" is carried look to look on a grid.
- **Unknown variance**: a t statistic's variance estimate changes from look to look, so the
  normal-scale boundaries converted at the same nominal level (the "significance level approach",
  Jennison & Turnbull 2000, §3.8) spend a little more than alpha when the first looks have few
  degrees of freedom (0.057 instead of 0.05 with looks at 3..6 pairs). So the boundaries for the
  paired t statistic (``t``) are found on simulated null paths instead: at each look, the
  threshold that makes the share of paths crossing by then equal ``alpha(t_k)``. The t statistic's
  null distribution does not depend on the noise, so one seeded simulation per design serves every
  wave (deterministic; it spends 98% of alpha there, a margin for its own Monte Carlo error of
  ~1% of alpha). Looks that spend less than a few paths' worth (the first ones) use the converted
  boundary.
- **Skipped looks** (two pairs finishing in one cycle) only make the test more conservative, and
  the caller evaluates every prefix anyway.

Everything here is pure and cached by its arguments; no clock, no global random state.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize
from scipy.stats import norm
from scipy.stats import t as student_t

GRID_STEP = 0.05  # lattice spacing of the score S (one pair adds variance 1, so sd 1 per pair)
TAIL_SD = 9.0  # how far below the drift the continuation region is carried (sd units)


@dataclass(frozen=True)
class Design:
    """A one-sided group-sequential test: looks at ``looks`` (pairs), boundaries on the z scale."""

    alpha: float
    looks: tuple[int, ...]  # pair counts at which the test may reject, increasing; the last is N
    z: tuple[float, ...]  # boundary per look (normal scale: known variance)
    t: tuple[float, ...] = ()  # boundary per look for the paired t statistic (n − 1 degrees of freedom)

    @property
    def max_n(self) -> int:
        return self.looks[-1]

    def z_at(self, n: int) -> float | None:
        """The boundary at a look of ``n`` pairs; None if ``n`` is not a look."""
        try:
            return self.z[self.looks.index(n)]
        except ValueError:
            return None

    def t_at(self, n: int, df: float) -> float | None:
        """The boundary for a t statistic with ``df`` degrees of freedom at look ``n``.

        The simulated paired-t boundary when ``df = n − 1``; for other degrees of freedom (Welch's
        unpaired test) that boundary's nominal level, converted.
        """
        if n not in self.looks:
            return None
        t = self.t[self.looks.index(n)] if self.t else _t_for_z(self.z[self.looks.index(n)], n - 1.0)
        if abs(df - (n - 1)) < 1e-9 or not math.isfinite(t):
            return t
        return float(student_t.isf(student_t.sf(t, n - 1), df))


@lru_cache(maxsize=65536)
def _t_for_z(z: float, df: float) -> float:
    if not math.isfinite(z):
        return math.inf
    return float(student_t.isf(norm.sf(z), df))


def obf_spending(t: float, alpha: float) -> float:
    """Lan–DeMets O'Brien–Fleming-type alpha spent by information fraction ``t`` (one-sided)."""
    if t <= 0:
        return 0.0
    return float(2.0 * norm.sf(norm.isf(alpha / 2.0) / math.sqrt(min(t, 1.0))))


def design(alpha: float, looks: Sequence[int]) -> Design:
    """The boundaries of a one-sided test at level ``alpha`` with looks at these pair counts."""
    looks = tuple(int(n) for n in looks)
    if not looks or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 1:
        raise ValueError(f"looks must be increasing positive pair counts, got {looks}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha is {alpha}, but must be between 0 and 1")
    return _design(round(alpha, 12), looks)


@lru_cache(maxsize=256)
def _design(alpha: float, looks: tuple[int, ...]) -> Design:
    if len(looks) == 1:
        z = float(norm.isf(alpha))
        return Design(alpha, looks, (z,), (_t_for_z(z, looks[0] - 1.0),))
    info = np.asarray(looks, dtype=float)
    spent = [obf_spending(n / info[-1], alpha) for n in info]
    bounds = [float(norm.isf(spent[0])) if spent[0] > 0 else math.inf]
    grid, density = _start(info[0], 0.0)  # S at the previous look, before its boundary is applied
    for k in range(1, len(info)):
        upper = bounds[-1] * math.sqrt(info[k - 1])
        bounds.append(_solve_boundary(grid, density, upper, info[k - 1], info[k], spent[k] - spent[k - 1]))
        grid, density = _advance(grid, density, info[k - 1], info[k], upper, 0.0)
    return Design(alpha, looks, tuple(bounds), _simulated_t_bounds(alpha, looks, tuple(bounds)))


MC_PATHS = 200_000
MC_SEED = 20261129
MC_MARGIN = 0.98  # spend 98% of alpha on the simulated paths: the simulation's own error (~1%) stays inside alpha
MIN_PATHS_PER_LOOK = 40  # a look spending fewer simulated crossings than this uses the converted boundary


def _simulated_t_bounds(alpha: float, looks: tuple[int, ...], z: tuple[float, ...]) -> tuple[float, ...]:
    """Paired-t boundaries that spend ``alpha(t_k)`` by look k on seeded null paths (see the docstring)."""
    if looks[0] < 2:
        return tuple(_t_for_z(b, max(n - 1.0, 1.0)) for b, n in zip(z, looks))
    rng = np.random.default_rng(MC_SEED)
    total = np.zeros(MC_PATHS)
    squares = np.zeros(MC_PATHS)
    alive = np.ones(MC_PATHS, dtype=bool)
    crossed = 0
    out = []
    for n in range(1, looks[-1] + 1):
        x = rng.standard_normal(MC_PATHS)
        total += x
        squares += x * x
        if n not in looks:
            continue
        k = looks.index(n)
        mean = total / n
        t = mean / np.sqrt(np.maximum(squares - n * mean * mean, 1e-300) / (n - 1) / n)
        quota = round(MC_MARGIN * obf_spending(n / looks[-1], alpha) * MC_PATHS) - crossed
        if quota < MIN_PATHS_PER_LOOK:
            bound = _t_for_z(z[k], n - 1.0)
        else:
            candidates = t[alive]
            bound = float(np.partition(candidates, candidates.size - quota)[candidates.size - quota])
        hit = alive & (t >= bound)
        crossed += int(hit.sum())
        alive &= ~hit
        out.append(bound)
    return tuple(out)


def _start(info: float, drift: float) -> tuple[np.ndarray, np.ndarray]:
    """S_1 ~ N(drift·I_1, I_1) on a grid (before the first boundary is applied)."""
    sd = math.sqrt(info)
    grid = np.arange(drift * info - TAIL_SD * sd, drift * info + TAIL_SD * sd + GRID_STEP, GRID_STEP)
    return grid, norm.pdf(grid, loc=drift * info, scale=sd)


def _truncate(grid: np.ndarray, density: np.ndarray, upper: float) -> tuple[np.ndarray, np.ndarray]:
    """The density below ``upper`` on a lattice that ends exactly at it, times trapezoid weights."""
    top = min(upper, grid[-1])
    count = int((top - grid[0]) / GRID_STEP) + 1
    if count < 2:
        return np.empty(0), np.empty(0)
    x = top - GRID_STEP * np.arange(count)[::-1]
    w = np.full(count, GRID_STEP)
    w[0] *= 0.5
    w[-1] *= 0.5
    return x, np.interp(x, grid, density, left=0.0, right=0.0) * w


def _cross_probability(grid: np.ndarray, density: np.ndarray, upper: float, info_prev: float, info: float,
                       b_scaled: float, drift: float) -> float:
    """P(not crossed before, S_k ≥ b_scaled at this look), S at the previous look given on ``grid``."""
    x, fw = _truncate(grid, density, upper)
    if x.size == 0:
        return 0.0
    gap = info - info_prev
    return float(np.dot(fw, norm.sf((b_scaled - x - drift * gap) / math.sqrt(gap))))


def _solve_boundary(grid: np.ndarray, density: np.ndarray, upper: float, info_prev: float, info: float,
                    target: float) -> float:
    if target <= 0:
        return math.inf
    root_i = math.sqrt(info)

    def excess(z: float) -> float:
        return _cross_probability(grid, density, upper, info_prev, info, z * root_i, 0.0) - target

    if excess(12.0) > 0:
        return 12.0
    if excess(-12.0) < 0:
        return -12.0
    return float(optimize.brentq(excess, -12.0, 12.0, xtol=1e-7))


def _advance(grid: np.ndarray, density: np.ndarray, info_prev: float, info: float, upper: float,
             drift: float) -> tuple[np.ndarray, np.ndarray]:
    """The sub-density of S at the next look, from the part of ``density`` below ``upper``.

    On a lattice of constant spacing the transition is a convolution with the increment's normal
    density; the far lower tail (more than TAIL_SD sd below the drift) is dropped as it can never
    come back to a boundary.
    """
    x, fw = _truncate(grid, density, upper)
    gap = info - info_prev
    sd = math.sqrt(gap)
    low = math.floor((drift * gap - TAIL_SD * sd) / GRID_STEP) * GRID_STEP
    offsets = low + GRID_STEP * np.arange(int(2 * TAIL_SD * sd / GRID_STEP) + 2)
    kernel = norm.pdf((offsets - drift * gap) / sd) / sd
    if x.size == 0:
        return offsets, np.zeros_like(offsets)
    new = x[0] + low + GRID_STEP * np.arange(x.size + kernel.size - 1)
    values = np.convolve(fw, kernel)
    keep = new >= drift * info - TAIL_SD * math.sqrt(info)
    return new[keep], values[keep]


def crossing_probability(d: Design, drift: float, up_to: int | None = None) -> float:
    """P(the boundary is crossed at some look ≤ ``up_to``) when the score drifts by ``drift`` per pair.

    ``drift`` = effect / (standard deviation of one pair's difference): with drift 0 this is the
    alpha spent (the error rate); with the drift of the minimum effect it is the power.
    """
    looks = [n for n in d.looks if up_to is None or n <= up_to]
    if not looks:
        return 0.0
    info = np.asarray(looks, dtype=float)
    grid, density = _start(info[0], drift)
    total = float(norm.sf(d.z[0] - drift * math.sqrt(info[0])))
    for k in range(1, len(info)):
        upper = d.z[k - 1] * math.sqrt(info[k - 1])
        total += _cross_probability(grid, density, upper, info[k - 1], info[k], d.z[k] * math.sqrt(info[k]), drift)
        grid, density = _advance(grid, density, info[k - 1], info[k], upper, drift)
    return min(1.0, total)


@lru_cache(maxsize=64)
def inflation(alpha: float, first_look: int, power: float = 0.8, reference: int = 32) -> float:
    """How many more pairs the sequential design needs than a single look for the same power.

    Measured once per (alpha, first look): the smallest cap N whose design (looks first_look..N)
    reaches ``power`` at the drift for which one look at ``reference`` pairs would, over ``reference``.
    For O'Brien–Fleming spending it is a few percent, nearly independent of the drift.
    """
    drift = (norm.isf(alpha) + norm.isf(1 - power)) / math.sqrt(reference)
    n = reference
    while crossing_probability(design(alpha, tuple(range(min(first_look, n), n + 1))), drift) < power:
        n += 1
    return n / reference


def pairs_for_power(alpha: float, first_look: int, drift: float, power: float = 0.8) -> int | None:
    """About how many pairs a sequential design needs to detect a gain of ``drift`` sds with ``power``."""
    if drift <= 0:
        return None
    fixed = ((norm.isf(alpha) + norm.isf(1 - power)) / drift) ** 2
    return max(first_look, math.ceil(fixed * inflation(round(alpha, 12), first_look, power)))


def approximate_power(alpha: float, first_look: int, cap: int, drift: float) -> float:
    """The power of the sequential design with looks first_look..cap, as that of a single look at
    ``cap / inflation`` pairs (within about a percentage point of ``crossing_probability``, and cheap
    enough to report with every verdict)."""
    if drift <= 0:
        return 0.0
    return float(norm.cdf(drift * math.sqrt(cap / inflation(round(alpha, 12), first_look)) - norm.isf(alpha)))
