"""Verdicts: is a candidate better than the baseline by at least ``min_effect``? (pure)

``judge(comparisons, rule)`` takes each candidate's runs and the baseline's runs (values where
*lower is better*; the caller flips a higher-is-better metric) and returns, per candidate, one of

- ``keep``: the gain (baseline − candidate) is significantly above 0 at the wave's ``alpha``
  after Holm's correction over the candidates judged together, *and* the estimated gain is at least
  ``min_effect``. Controls: the family-wise rate of keeping a candidate that is not better, ≤ alpha.
- ``discard``: the gain is significantly *below* ``min_effect`` (a one-sided test of "gain ≥
  min_effect" rejects at ``alpha``; this includes significantly worse). Controls: the rate of
  discarding a candidate that is better by min_effect or more, ≤ alpha per candidate.
- ``need_more``: neither yet, and more pairs may come (sequential design, below the cap).
- ``inconclusive``: neither, and no more pairs will come: "not significant" is never "no effect".

**Designs.** ``sequential``: a look after every pair from ``first_look`` to ``max_n`` (the cap),
each with a Lan–DeMets O'Brien–Fleming group-sequential boundary (`group_sequential`), so adding
pairs until the candidate is decided keeps both error rates at alpha. ``fixed``: one look at
``max_n`` pairs, the ordinary one-sided t-test. Holm over group-sequential tests follows Maurer &
Bretz (2013): once a candidate is kept, the others are re-tested at the larger level
``alpha/(K − kept)`` with boundaries recomputed from the first look.

**Pairing.** ``seed``: candidate and baseline runs with the same seed form a pair (same data order
and initialization); the test is on the paired differences. ``unpaired``: replicates of a workload
without a seed; Welch's two-sample t, and the verdict says it is unpaired.

**Step noise.** With the steps→metric slope and the configurations' typical step difference
measured on runs outside the judged pairs (`step_noise.StepOffset`), paired differences are also
judged corrected for step jitter; both tests then share alpha (half each, and the corrected one
keeps a quarter for the uncertainty of the offset) and a candidate is decided by whichever says so.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from fleet.errors import InputError
from fleet.research.group_sequential import approximate_power, design, pairs_for_power
from fleet.research.step_noise import DEFAULT_MISMATCH, StepOffset, mismatched_pairs

Label = Literal["keep", "discard", "inconclusive", "need_more"]
Pairing = Literal["seed", "unpaired"]
DesignKind = Literal["sequential", "fixed"]
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.0005
DEFAULT_MAX_SEEDS = 16
DEFAULT_FIRST_LOOK = 3
POWER_TARGET = 0.8


@dataclass(frozen=True)
class Run:
    unit: int  # the seed (paired) or the replicate's number (unpaired)
    value: float | None  # lower is better; None or NaN: the run crashed
    steps: float | None = None
    order: float = 0.0  # when it finished: looks take pairs in this order


@dataclass(frozen=True)
class Rule:
    alpha: float = DEFAULT_ALPHA
    min_effect: float = DEFAULT_MIN_EFFECT
    max_n: int = DEFAULT_MAX_SEEDS  # the cap (sequential) or the planned pairs (fixed)
    first_look: int = DEFAULT_FIRST_LOOK
    design: DesignKind = "sequential"
    mismatch: float = DEFAULT_MISMATCH  # flag pairs whose step ratio is this far off the typical one

    def check(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"`alpha` is {self.alpha}, but must be between 0 and 1 (e.g. `alpha: 0.05`)")
        if not self.min_effect >= 0.0 or not math.isfinite(self.min_effect):
            raise InputError(f"`min_effect` is {self.min_effect}, but must be ≥ 0 in metric units "
                             "(e.g. `min_effect: 0.0005`)")
        if self.max_n < 2 or self.first_look < 2:
            raise InputError(f"the seed cap is {self.max_n}, but verdicts need at least 2 pairs "
                             "(e.g. `--max-seeds 16`)")

    @property
    def looks(self) -> tuple[int, ...]:
        if self.design == "fixed":
            return (self.max_n,)
        return tuple(range(min(self.first_look, self.max_n), self.max_n + 1))


@dataclass(frozen=True)
class Comparison:
    name: str
    candidate: tuple[Run, ...]
    baseline: tuple[Run, ...]
    pairing: Pairing = "seed"
    slope: float | None = None  # steps→metric slope, for step-noise correction
    offset: StepOffset | None = None  # typical ln-steps difference from outside runs
    closed: bool = False  # no more runs will come: undecided means inconclusive


@dataclass(frozen=True)
class StepNote:
    used: bool
    variance_removed: float | None = None  # share of the paired differences' variance
    slope: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    name: str
    label: Label
    reason: str
    pairing: Pairing
    n: int  # pairs (or replicate pairs) the verdict rests on
    gain: float | None = None  # baseline − candidate (> 0: the candidate is better)
    delta: float | None = None  # candidate − baseline (the old sign: < 0 is better)
    low: float | None = None  # bounds on delta at this look: high < 0 ⇒ significant gain,
    high: float | None = None  # low > −min_effect ⇒ significantly less than min_effect
    p_value: float | None = None  # nominal one-sided p of "better" at n (not adjusted for looks or candidates)
    sd: float | None = None  # sd of one pair's difference
    power: float | None = None  # chance the test finds a true gain of min_effect significant by the cap
    pairs_for_power: int | None = None  # the cap that would give POWER_TARGET
    alpha_used: float | None = None  # the keep test's level after Holm
    decided_at: int | None = None
    candidate_mean: float | None = None
    baseline_mean: float | None = None
    candidate_sd: float | None = None
    baseline_sd: float | None = None
    missing: tuple[int, ...] = ()  # units finished on one side only
    flagged: tuple[int, ...] = ()  # pairs whose step counts differ by more than the threshold
    step: StepNote = field(default_factory=lambda: StepNote(False))


@dataclass(frozen=True)
class _Series:
    """The differences (paired) or the two samples (unpaired), in look order."""

    diffs: np.ndarray | None  # paired: candidate − baseline
    cand: np.ndarray
    base: np.ndarray
    units: tuple[int, ...]
    missing: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.diffs) if self.diffs is not None else min(len(self.cand), len(self.base))

    def at(self, n: int) -> tuple[float, float, float]:
        """(delta, se, df) on the first n pairs."""
        if self.diffs is not None:
            d = self.diffs[:n]
            return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)), n - 1.0
        c, b = self.cand[:n], self.base[:n]
        vc, vb = float(c.var(ddof=1)) / n, float(b.var(ddof=1)) / n
        se = math.sqrt(vc + vb)
        df = (vc + vb) ** 2 / ((vc ** 2 + vb ** 2) / (n - 1)) if vc + vb > 0 else n - 1.0
        return float(c.mean() - b.mean()), se, df


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _series(comp: Comparison) -> _Series:
    cand = {r.unit: r for r in comp.candidate if _finite(r.value)}
    base = {r.unit: r for r in comp.baseline if _finite(r.value)}
    if comp.pairing == "seed":
        common = sorted(set(cand) & set(base), key=lambda u: (max(cand[u].order, base[u].order), u))
        diffs = np.asarray([cand[u].value - base[u].value for u in common], dtype=float)
        missing = tuple(sorted({r.unit for r in comp.candidate} - set(common)))  # the candidate's unpaired seeds
        return _Series(diffs, np.asarray([cand[u].value for u in common]), np.asarray([base[u].value for u in common]),
                       tuple(common), missing)
    c = sorted(cand.values(), key=lambda r: (r.order, r.unit))
    b = sorted(base.values(), key=lambda r: (r.order, r.unit))
    return _Series(None, np.asarray([r.value for r in c]), np.asarray([r.value for r in b]),
                   tuple(r.unit for r in c), ())


def _corrected(comp: Comparison, s: _Series, mismatch: float) -> tuple[_Series | None, StepNote, tuple[int, ...], float]:
    """Step-corrected differences (paired only) and the note; the flagged pairs; the offset's bias margin."""
    if s.diffs is None:
        return None, StepNote(False, note="replicates are unpaired: no per-pair step correction"), (), 0.0
    cand = {r.unit: r.steps for r in comp.candidate}
    base = {r.unit: r.steps for r in comp.baseline}
    ratios = [math.log(cand[u] / base[u]) for u in s.units if (cand.get(u) or 0) > 0 and (base.get(u) or 0) > 0]
    flagged = mismatched_pairs(s.units, ratios, mismatch) if len(ratios) == len(s.units) else ()
    if len(ratios) != len(s.units):
        return None, StepNote(False, note="some runs report no step count: values used as measured"), flagged, 0.0
    if comp.slope is None or comp.slope <= 0:
        why = "no steps→metric slope measured (too little step jitter, and none across hardware): values used as measured"
        return None, StepNote(False, note=why), flagged, 0.0
    if comp.offset is None:
        why = ("the configurations' typical step difference is known only from these pairs, so correcting for it "
               "cannot reduce the noise of their mean")
        return None, StepNote(False, slope=comp.slope, note=why), flagged, 0.0
    corrected = s.diffs + comp.slope * (np.asarray(ratios) - comp.offset.offset)
    removed = None
    if len(s.diffs) >= 2 and float(s.diffs.var(ddof=1)) > 0:
        removed = 1.0 - float(corrected.var(ddof=1)) / float(s.diffs.var(ddof=1))
    note = (f"corrected with slope {comp.slope:.3g} and a typical step difference from "
            f"{comp.offset.n_candidate}+{comp.offset.n_baseline} outside runs")
    margin_sd = comp.slope * comp.offset.se
    return replace(s, diffs=corrected), StepNote(True, removed, comp.slope, note), flagged, margin_sd


@dataclass(frozen=True)
class _Test:
    series: _Series
    share: float  # fraction of alpha this test gets
    margin_sd: float = 0.0  # sd of a bias bound added on both sides (step offset uncertainty)


def _bounds(test: _Test, n: int, alpha_keep: float, alpha_discard: float, rule: Rule) -> tuple[float, float, float]:
    """(delta, high bound for keep, low bound for discard) at look n."""
    delta, se, df = test.series.at(n)
    looks = rule.looks if n in rule.looks else (n,)
    keep_design = design(alpha_keep * test.share / (2 if test.margin_sd else 1), looks)
    discard_design = design(alpha_discard * test.share / (2 if test.margin_sd else 1), looks)
    margin_k = norm.isf(alpha_keep * test.share / 2) * test.margin_sd if test.margin_sd else 0.0
    margin_d = norm.isf(alpha_discard * test.share / 2) * test.margin_sd if test.margin_sd else 0.0
    return (delta, delta + keep_design.t_at(n, df) * se + margin_k,
            delta - discard_design.t_at(n, df) * se - margin_d)


def _first_event(tests: Sequence[_Test], n_max: int, alpha_keep: float, rule: Rule,
                 closed: bool) -> tuple[str | None, int | None]:
    """Walk the looks in order; the first that keeps or discards decides.

    A fixed design looks once: at its planned pairs, or, cut short (crashes) and closed, at what finished.
    """
    looks = [n for n in rule.looks if n <= n_max]
    if rule.design == "fixed" and n_max < rule.max_n:
        looks = [n_max] if closed and n_max >= 2 else []
    for n in looks:
        for test in tests:
            delta, high, low = _bounds(test, n, alpha_keep, rule.alpha, rule)
            if high < 0 and -delta >= rule.min_effect:
                return "keep", n
            if low > -rule.min_effect:
                return "discard", n
    return None, None


def judge(comparisons: Sequence[Comparison], rule: Rule = Rule()) -> list[Verdict]:
    """A verdict per comparison; the candidates are one family for Holm's correction."""
    rule.check()
    prepared = []
    for comp in comparisons:
        s = _series(comp)
        corrected, note, flagged, margin = _corrected(comp, s, rule.mismatch)
        tests = [_Test(s, 1.0)] if corrected is None else [_Test(s, 0.5), _Test(corrected, 0.5, margin)]
        prepared.append((comp, s, tests, note, flagged))
    k = len(prepared)
    kept: dict[int, int] = {}
    while True:  # Holm, Maurer–Bretz style: each keep raises the others' level, boundaries recomputed
        level = rule.alpha / max(k - len(kept), 1)
        new = {}
        for i, (comp, s, tests, _, _) in enumerate(prepared):
            if i in kept or _degenerate(s) or s.n < 2:
                continue
            event, at = _first_event(tests, min(s.n, rule.max_n), level, rule, comp.closed)
            if event == "keep":
                new[i] = at
        if not new:
            break
        kept.update(new)
    out = []
    for i, (comp, s, tests, note, flagged) in enumerate(prepared):
        level = rule.alpha / max(k - len(kept), 1) if i not in kept else rule.alpha / max(k - len(kept) + 1, 1)
        out.append(_verdict(comp, s, tests, note, flagged, rule, level, kept.get(i), k))
    return out


def _degenerate(s: _Series) -> bool:
    """No run-to-run variation anywhere: the noise cannot be estimated (deterministic runs?)."""
    if s.n < 2:
        return False
    return float(np.ptp(s.cand[: s.n])) == 0.0 and float(np.ptp(s.base[: s.n])) == 0.0


def _verdict(comp: Comparison, s: _Series, tests: Sequence[_Test], note: StepNote, flagged: tuple[int, ...],
             rule: Rule, level: float, kept_at: int | None, k: int) -> Verdict:
    n = min(s.n, rule.max_n)
    base = Verdict(comp.name, "inconclusive", "", comp.pairing, n, missing=s.missing, flagged=flagged, step=note,
                   alpha_used=level, candidate_mean=_mean(s.cand[:n]), baseline_mean=_mean(s.base[:n]),
                   candidate_sd=_sd(s.cand[:n]), baseline_sd=_sd(s.base[:n]))
    unpaired = "" if comp.pairing == "seed" else " (unpaired replicates: Welch's test)"
    if n == 0:
        return _undecided(base, comp, rule, "no pair finished on both sides yet")
    delta, se, df = s.at(n) if n >= 2 else (float(s.diffs[0]) if s.diffs is not None else float(s.cand[0] - s.base[0]),
                                            math.nan, 0.0)
    base = replace(base, delta=delta, gain=-delta)
    if n < 2:
        return _undecided(base, comp, rule, f"1 pair: the candidate is {'better' if delta < 0 else 'not better'} by "
                                            f"{abs(delta):.4f}, but one pair cannot separate a change from noise")
    sd = se * math.sqrt(n) if s.diffs is not None else math.sqrt(float(s.cand[:n].var(ddof=1)) + float(s.base[:n].var(ddof=1)))
    p = float(student_t.sf(-delta / se, df)) if se > 0 else (0.0 if delta < 0 else 1.0)
    base = replace(base, sd=sd, p_value=p)
    if _degenerate(s):
        return replace(base, label="inconclusive",
                       reason="no run-to-run variation on either side (deterministic runs?): the noise cannot be "
                              "estimated, so no verdict")
    base = _with_power(base, sd, rule, level, k)
    if rule.design == "fixed":
        look = n if n >= rule.max_n or comp.closed else None
    else:
        look = max((x for x in rule.looks if x <= n), default=None)
    if look is not None:  # every test's bounds hold together (alpha is split between them): intersect them
        bounds = [_bounds(t, look, level, rule.alpha, rule)[1:] for t in tests]
        base = replace(base, low=max(b[1] for b in bounds), high=min(b[0] for b in bounds))
    interval = f"interval [{base.low:+.4f}, {base.high:+.4f}]" if base.low is not None else "no interval yet"
    if kept_at is not None:
        pairs = f"{n} pairs" if kept_at == n else f"{n} pairs (decided at {kept_at}; later pairs finished anyway)"
        why = (f"better by {-delta:.4f} ({interval}) at {pairs}: significant at alpha {level:.3g} "
               f"(Holm over {k} candidate{'s' if k > 1 else ''}) and at least min_effect {rule.min_effect:g}")
        return replace(base, label="keep", reason=why + unpaired + _step_text(note), decided_at=kept_at)
    event, at = _first_event(tests, n, level, rule, comp.closed)
    if event == "discard":
        how = "worse" if base.high is not None and base.low is not None and base.low > 0 else "not better by min_effect"
        why = (f"{how}: delta {delta:+.4f} ({interval}) at {n} pairs; the gain is significantly below min_effect "
               f"{rule.min_effect:g}")
        return replace(base, label="discard", reason=why + unpaired + _step_text(note), decided_at=at)
    small = base.high is not None and base.high < 0 and -delta < rule.min_effect
    what = (f"significant but small: better by {-delta:.4f}, below min_effect {rule.min_effect:g}" if small
            else f"{'better' if delta < 0 else 'not better'} by {abs(delta):.4f} ({interval}), not significant")
    return _undecided(base, comp, rule, what + unpaired + _step_text(note))


def _undecided(v: Verdict, comp: Comparison, rule: Rule, what: str) -> Verdict:
    more = not comp.closed and v.n < rule.max_n
    if more:
        return replace(v, label="need_more", reason=f"{what}; undecided at {v.n} of up to {rule.max_n} pairs")
    power = ""
    if v.power is not None:
        power = f"; power to detect a gain of {rule.min_effect:g} was {100 * v.power:.0f}%"
        if v.pairs_for_power is not None and v.pairs_for_power > rule.max_n:
            power += f", about {v.pairs_for_power} pairs would give {100 * POWER_TARGET:.0f}%"
    return replace(v, label="inconclusive", reason=f"{what}; undecided at {v.n} pairs{power}")


def _with_power(v: Verdict, sd: float, rule: Rule, level: float, k: int) -> Verdict:
    if not sd > 0 or rule.min_effect <= 0:
        return v
    drift = rule.min_effect / sd
    worst = rule.alpha / k  # Holm's first step: the level no other keep has raised yet
    if rule.design == "fixed":
        power = float(norm.cdf(drift * math.sqrt(rule.max_n) - norm.isf(worst)))
    else:
        power = approximate_power(worst, rule.first_look, rule.max_n, drift)
    if rule.design == "fixed":
        need = math.ceil(((norm.isf(worst) + norm.isf(1 - POWER_TARGET)) / drift) ** 2) + 1
    else:
        need = pairs_for_power(worst, rule.first_look, drift, POWER_TARGET)
    return replace(v, power=power, pairs_for_power=need)


def _step_text(note: StepNote) -> str:
    if not note.used or note.variance_removed is None:
        return ""
    return f"; step-noise correction removed {100 * note.variance_removed:.0f}% of the pairs' variance"


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def _sd(x: np.ndarray) -> float | None:
    return float(x.std(ddof=1)) if x.size >= 2 else None
