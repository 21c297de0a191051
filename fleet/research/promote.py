"""Tier promotion: pick the screen's best few, validate them against a paired baseline, judge them.

The workflow: screen many ideas cheaply (one seed, usually H100s), take the top K by the
hardware-normalized metric (``select_candidates``), rerun each with S seeds on the validation tier
together with the baseline on the same S seeds (``plan_validation``), and judge each candidate on
the seeds both finished (``verdict``).

Verdict rule (lower val_bpb is better; delta = mean(candidate − baseline) over common seeds):

- ``keep`` iff at least 2 paired seeds, the one-sided paired test gives p < ``alpha`` (default
  0.01), and the improvement −delta exceeds ``floor_multiple`` (default 2) × the baseline's seed
  std: significant *and* larger than the noise floor.
- ``discard`` iff the candidate is not better (delta ≥ 0), which includes significantly worse.
- ``inconclusive`` otherwise: better on average but not significant, or below the noise floor,
  or too few paired seeds to tell. The reason says which.

Runs with no val_bpb (crashed) are missing seeds; comparisons use only seeds both sides finished.

Replicates (``paired=False``): a workload without a SEED knob runs replicates that share no seed, so
the same rule is applied to all finished runs of each side with Welch's unpaired test
(``stats.welch_one_sided``) instead of the paired one, and the reason says so.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from fleet.errors import InputError
from fleet.research.normalize import LeaderboardRow
from fleet.research.stats import (
    TestMethod,
    check_seeds,
    finite,
    mean_std,
    paired_one_sided,
    welch_one_sided,
)

VerdictLabel = Literal["keep", "discard", "inconclusive"]
DEFAULT_ALPHA = 0.01
DEFAULT_FLOOR_MULTIPLE = 2.0


class PlannedRun(NamedTuple):
    """One experiment of a validation wave; a tuple so callers can unpack (config, seed, description)."""

    config: dict[str, str]
    seed: int
    description: str


@dataclass(frozen=True)
class Verdict:
    n: int  # paired seeds (both sides finished)
    mean: float | None  # candidate mean over paired seeds
    std: float | None
    baseline_mean: float | None
    baseline_std: float | None
    delta: float | None  # candidate − baseline; negative = better
    p_value: float | None  # one-sided (candidate better), paired on common seeds
    verdict: VerdictLabel
    reason: str
    noise_floor: float | None = None  # floor_multiple × baseline std
    missing_seeds: tuple[int, ...] = ()  # seeds that one side lacks


def select_candidates(ranked: Sequence[LeaderboardRow], k: int, baseline_key: str | None) -> list[LeaderboardRow]:
    """Top ``k`` configurations by normalized mean (lowest first), never the baseline itself.

    Rows without a normalized value (only unknown hardware, or crashed) cannot be compared fairly
    and are skipped; the input order does not matter.
    """
    if k < 1:
        raise InputError(f"`k` is {k}, but must be a positive integer (e.g. `--top 3`)")
    eligible = [r for r in ranked if r.config_key != baseline_key and r.normalized_mean is not None]
    eligible.sort(key=lambda r: (r.normalized_mean, r.config_key))
    return eligible[:k]


def plan_validation(
    candidates: Sequence[Mapping[str, str]], baseline_config: Mapping[str, str], seeds: int, first_seed: int = 0
) -> list[PlannedRun]:
    """Each candidate with seeds first_seed.. first_seed+seeds-1, and the baseline with the same seeds.

    Pairing by seed is what makes the test paired: seed s of a candidate is compared with seed s
    of the baseline (same data order and initialization noise). Runs are ordered seed-major, the
    baseline first in each seed, so pairs finish close together even if the wave is cut short.
    A candidate identical to the baseline, or to an earlier candidate, is planned once.
    """
    check_seeds(seeds)
    baseline = dict(baseline_config)
    unique: list[dict[str, str]] = []
    for c in candidates:
        c = dict(c)
        if c != baseline and c not in unique:
            unique.append(c)
    if not unique:
        raise InputError("no candidate differs from the baseline configuration: nothing to validate")
    plan = []
    for seed in range(first_seed, first_seed + seeds):
        plan.append(PlannedRun(dict(baseline), seed, f"baseline seed {seed}"))
        for i, c in enumerate(unique, 1):
            plan.append(PlannedRun(dict(c), seed, f"candidate {i}/{len(unique)} seed {seed}"))
    return plan


def verdict(
    candidate: Mapping[int, float | None],
    baseline: Mapping[int, float | None],
    alpha: float = DEFAULT_ALPHA,
    floor_multiple: float = DEFAULT_FLOOR_MULTIPLE,
    method: TestMethod = "t",
    paired: bool = True,
) -> Verdict:
    """Judge a candidate against the baseline on their common seeds (see the module docstring)."""
    if not 0.0 < alpha < 1.0:
        raise InputError(f"`alpha` is {alpha}, but must be between 0 and 1 (e.g. `--alpha 0.01`)")
    if floor_multiple < 0:
        raise InputError(f"`floor_multiple` is {floor_multiple}, but must be ≥ 0 (e.g. 2.0)")
    if not paired:
        return unpaired_verdict(candidate, baseline, alpha, floor_multiple)
    cand = {s: v for s, v in candidate.items() if finite([v])}
    base = {s: v for s, v in baseline.items() if finite([v])}
    common = sorted(set(cand) & set(base))
    missing = tuple(sorted((set(candidate) | set(baseline)) - set(common)))
    c_vals, b_vals = [float(cand[s]) for s in common], [float(base[s]) for s in common]
    c_stat, b_stat = mean_std(c_vals), mean_std(b_vals)
    missing_note = f"; seeds {list(missing)} lack a finished run on one side and are left out" if missing else ""

    def result(label: VerdictLabel, why: str, delta=None, p=None, floor=None) -> Verdict:
        return Verdict(
            len(common), c_stat.mean, c_stat.std, b_stat.mean, b_stat.std,
            delta, p, label, why + missing_note, floor, missing,
        )  # fmt: skip

    if not common:
        return result("inconclusive", "no seed finished on both the candidate and the baseline")
    test = paired_one_sided(c_vals, b_vals, method=method)
    delta = test.mean_delta
    if len(common) < 2:
        verb = "is worse" if delta >= 0 else "looks better"
        why = (
            f"only 1 paired seed: the candidate {verb} by {abs(delta):.4f}, but one seed cannot separate"
            " a change from noise; run more seeds"
        )
        return result("inconclusive", why, delta)
    floor = floor_multiple * b_stat.std
    p = test.p_value
    if delta >= 0:
        worse = paired_one_sided(b_vals, c_vals, method=method).p_value
        how = "significantly worse" if worse is not None and worse < alpha else "not better"
        return result("discard", f"{how}: delta {delta:+.4f} (p_worse={worse:.3g})", delta, p, floor)
    if b_stat.std == 0.0 and test.std_delta == 0.0:
        why = "no seed-to-seed variation on either side (deterministic runs?): the noise cannot be estimated"
        return result("inconclusive", why, delta, p, floor)
    if p is None or p >= alpha:
        why = f"better by {-delta:.4f} but not significant (p={p:.3g} ≥ alpha={alpha})"
        return result("inconclusive", why, delta, p, floor)
    floor_text = f"noise floor {floor:.4f} ({floor_multiple:g} × baseline seed std)"
    if -delta <= floor:
        why = f"significant (p={p:.3g}) but the gain {-delta:.4f} is within the {floor_text}"
        return result("inconclusive", why, delta, p, floor)
    why = f"better by {-delta:.4f} (p={p:.3g} < {alpha}), above the {floor_text}"
    if b_stat.std == 0.0:
        why += "; note: the baseline showed no seed variation, so the floor is 0"
    return result("keep", why, delta, p, floor)


def unpaired_verdict(
    candidate: Mapping[int, float | None],
    baseline: Mapping[int, float | None],
    alpha: float = DEFAULT_ALPHA,
    floor_multiple: float = DEFAULT_FLOOR_MULTIPLE,
) -> Verdict:
    """The verdict rule on replicates: all finished runs of each side, Welch's test, same floor."""
    c_vals = finite(list(candidate.values()))
    b_vals = finite(list(baseline.values()))
    c_stat, b_stat = mean_std(c_vals), mean_std(b_vals)
    note = " (unpaired: replicates without a SEED knob)"

    def result(label: VerdictLabel, why: str, delta=None, p=None, floor=None) -> Verdict:
        return Verdict(len(c_vals), c_stat.mean, c_stat.std, b_stat.mean, b_stat.std, delta, p, label, why + note,
                       floor)

    if not c_vals or not b_vals:
        return result("inconclusive", "no finished run on " + ("the candidate" if not c_vals else "the baseline"))
    test = welch_one_sided(c_vals, b_vals)
    delta = test.mean_delta
    if test.p_value is None:
        verb = "is worse" if delta >= 0 else "looks better"
        return result("inconclusive", f"fewer than 2 runs on one side: the candidate {verb} by {abs(delta):.4f}, "
                      "but the noise cannot be estimated; run more", delta)
    floor = floor_multiple * b_stat.std
    p = test.p_value
    if delta >= 0:
        worse = welch_one_sided(b_vals, c_vals).p_value
        how = "significantly worse" if worse is not None and worse < alpha else "not better"
        return result("discard", f"{how}: delta {delta:+.4f} (p_worse={worse:.3g})", delta, p, floor)
    if test.se_delta == 0.0:
        why = "no run-to-run variation on either side (deterministic runs?): the noise cannot be estimated"
        return result("inconclusive", why, delta, p, floor)
    if p >= alpha:
        return result("inconclusive", f"better by {-delta:.4f} but not significant (p={p:.3g} ≥ alpha={alpha})",
                      delta, p, floor)
    floor_text = f"noise floor {floor:.4f} ({floor_multiple:g} × baseline run std)"
    if -delta <= floor:
        return result("inconclusive", f"significant (p={p:.3g}) but the gain {-delta:.4f} is within the "
                      f"{floor_text}", delta, p, floor)
    return result("keep", f"better by {-delta:.4f} (p={p:.3g} < {alpha}), above the {floor_text}", delta, p, floor)
