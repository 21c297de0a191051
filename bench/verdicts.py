"""Simulated verdicts with known truth: how often `fleet promote`'s rule keeps, discards or says
inconclusive, and how many seed pairs it spends (no training; seconds to a few minutes).

Each simulated candidate is compared with the baseline seed by seed, as a promote wave does: pairs
arrive one at a time and `fleet.research.verdicts.judge` is asked after each one whether the
candidate is decided, exactly as the controller asks (so the error rates include the peeking). A
run's value is the configuration's true mean plus noise; a run's noise is drawn independently
(the seed pairing then removes nothing: the hardest case), from a normal distribution or, in the
"heavy tails" rows, from Student's t with 4 degrees of freedom scaled to the same sd (an outlier now
and then, which a Gaussian test does not assume).

Rows (``key: value``; rates over ``--trials`` simulated waves):

- ``gain_0.001_cap64_*``: a true gain of 0.001 bpb at seed noise 0.0015 (the late-stage gains the
  fleet exists to find), cap 64 pairs: how often it ends ``keep``, and the pairs it took.
- ``gain_0.001_cap6_*``: the same, capped at 6: it must end ``inconclusive`` (not ``discard``).
- ``null3_*``: three candidates with no effect in one wave: the family-wise false-keep rate, which
  Holm's correction must keep at or below alpha.
- ``worse_0.003_pairs``: a candidate worse by 0.003: pairs spent before it is discarded.
- ``gain_0.001_cap16_*``: the same gain with the default cap of 16 pairs.
- ``fixed16_gain_0.001_keep``: the fixed design with 16 pairs, for comparison.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.research.verdicts import Comparison, Rule, Run, judge  # noqa: E402

NOISE = 0.0015


def _noise(rng: np.random.Generator, size: int, tails: str) -> np.ndarray:
    if tails == "normal":
        return rng.normal(0.0, NOISE, size)
    return rng.standard_t(4, size) * NOISE / np.sqrt(2.0)  # t(4) has variance 2


def simulate_wave(rng: np.random.Generator, gains: list[float], rule: Rule, tails: str = "normal") -> list[tuple[str, int]]:
    """One promote wave: pairs arrive one by one until every candidate is decided or capped.

    Returns (label, pairs used) per candidate.
    """
    n = rule.max_n
    base = 1.0 + _noise(rng, n, tails)
    cand = [1.0 - g + _noise(rng, n, tails) for g in gains]
    used = [0] * len(gains)
    labels = ["need_more"] * len(gains)
    for k in range(1, n + 1):
        open_ = [i for i, label in enumerate(labels) if label == "need_more"]
        if not open_:
            break
        for i in open_:
            used[i] = k
        comps = [Comparison(str(i), tuple(Run(s, cand[i][s], order=s) for s in range(used[i])),
                            tuple(Run(s, base[s], order=s) for s in range(k)), closed=k == n)
                 for i in range(len(gains))]
        labels = [v.label for v in judge(comps, rule)]
    return list(zip(labels, used))


def rates(trials: int, gains: list[float], rule: Rule, seed: int, tails: str = "normal") -> tuple[Counter, float, list[int]]:
    """Label counts over all candidates, the family-wise false-keep rate, and the pairs used."""
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    false_family = 0
    pairs = []
    for _ in range(trials):
        out = simulate_wave(rng, gains, rule, tails)
        counts.update(label for label, _ in out)
        pairs += [n for _, n in out]
        false_family += any(label == "keep" and g <= 0 for (label, _), g in zip(out, gains))
    return counts, false_family / trials, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    t = args.trials
    c, _, pairs = rates(t // 4, [0.001], Rule(max_n=64), 1)
    print(f"gain_0.001_cap64_keep: {c['keep'] / (t // 4):.3f}")
    print(f"gain_0.001_cap64_discard: {c['discard'] / (t // 4):.3f}")
    print(f"gain_0.001_cap64_mean_pairs: {np.mean(pairs):.1f}")
    c, _, _ = rates(t, [0.001], Rule(max_n=6), 2)
    for label in ("keep", "inconclusive", "discard"):
        print(f"gain_0.001_cap6_{label}: {c[label] / t:.3f}")
    for tails, seed in (("normal", 3), ("heavy", 4)):
        c, family, _ = rates(t, [0.0, 0.0, 0.0], Rule(max_n=16), seed, tails)
        suffix = "" if tails == "normal" else "_heavy_tails"
        print(f"null3_false_keep_rate{suffix}: {family:.3f} (alpha 0.05, Holm over 3 candidates)")
    c, _, pairs = rates(t, [0.001], Rule(max_n=16), 7)
    print(f"gain_0.001_cap16_keep: {c['keep'] / t:.3f}")
    print(f"gain_0.001_cap16_mean_pairs: {np.mean(pairs):.1f}")
    _, _, pairs = rates(t // 4, [-0.003], Rule(max_n=16), 5)
    print(f"worse_0.003_pairs: {np.mean(pairs):.1f}")
    c, _, _ = rates(t, [0.001], Rule(max_n=16, design="fixed"), 6)
    print(f"fixed16_gain_0.001_keep: {c['keep'] / t:.3f}")


if __name__ == "__main__":
    main()
