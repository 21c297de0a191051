"""Leave-one-out ablation: which of the changes stacked in a configuration actually help?

A configuration is a complete map knob -> value (a knob that is absent runs the training script's
default). A *change* is a knob whose value in the stacked configuration differs from the baseline,
including a knob set on only one side. The wave (``leave_one_out``) has:

- the ``baseline`` arm and the full ``stacked`` arm;
- one ``without`` arm per change: the stacked configuration with that knob reset to the baseline's
  value (or removed when the baseline does not set it). With a single change that arm *is* the
  baseline and is not planned twice.

Every arm runs the same seeds, so arms are compared seed by seed. A change's contribution is
``mean(val_bpb without it) − mean(val_bpb of the full stack)`` over the seeds both arms finished:
positive means the change helps (removing it hurts). Unless it is significantly positive (one-sided
paired t-test, p < alpha), the report says "removing this change does not hurt → drop it": a
simpler configuration that scores the same is a win.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleet.errors import InputError
from fleet.research.stats import check_seeds, finite, paired_one_sided, t_interval, welch_one_sided

ArmRole = Literal["baseline", "stacked", "without"]
ContributionVerdict = Literal["keep", "drop", "inconclusive"]
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Change:
    knob: str
    baseline_value: str | None  # None: the baseline does not set it
    stacked_value: str | None  # None: the stacked configuration does not set it


@dataclass(frozen=True)
class AblationArm:
    name: str  # "baseline", "stacked", or "without:<knob>"
    role: ArmRole
    config: dict[str, str]
    seeds: tuple[int, ...]
    removed: str | None = None  # the knob reset in a "without" arm
    changes: tuple[Change, ...] = field(default=())  # every change of the stack (same on all arms)


@dataclass(frozen=True)
class Contribution:
    knob: str
    baseline_value: str | None
    stacked_value: str | None
    n: int  # seeds both arms finished
    contribution: float | None  # mean(without) − mean(stacked); > 0 = the change helps
    std: float | None  # std over seeds of the paired differences
    ci_low: float | None  # 95% t interval of the contribution
    ci_high: float | None
    p_value: float | None  # one-sided: the contribution is > 0
    verdict: ContributionVerdict
    note: str


def find_changes(baseline: Mapping[str, str], stacked: Mapping[str, str]) -> list[Change]:
    """The knobs where ``stacked`` differs from ``baseline``, in knob order."""
    knobs = sorted(set(baseline) | set(stacked))
    return [Change(k, baseline.get(k), stacked.get(k)) for k in knobs if baseline.get(k) != stacked.get(k)]


def leave_one_out(
    baseline: Mapping[str, str], stacked: Mapping[str, str], seeds: int, first_seed: int = 0
) -> list[AblationArm]:
    """The ablation wave: baseline, full stack, and the stack without each change in turn."""
    check_seeds(seeds)
    changes = tuple(find_changes(baseline, stacked))
    if not changes:
        raise InputError("the stacked configuration equals the baseline: there is no change to ablate")
    seed_list = tuple(range(first_seed, first_seed + seeds))
    arms = [
        AblationArm("baseline", "baseline", dict(baseline), seed_list, None, changes),
        AblationArm("stacked", "stacked", dict(stacked), seed_list, None, changes),
    ]
    if len(changes) == 1:
        return arms  # the stack without its only change is the baseline
    for ch in changes:
        arms.append(AblationArm(f"without:{ch.knob}", "without", _reset(stacked, ch), seed_list, ch.knob, changes))
    return arms


def _reset(stacked: Mapping[str, str], change: Change) -> dict[str, str]:
    config = dict(stacked)
    if change.baseline_value is None:
        config.pop(change.knob, None)
    else:
        config[change.knob] = change.baseline_value
    return config


def contributions(
    arms_results: Sequence[tuple[AblationArm, Mapping[int, float | None]]], alpha: float = DEFAULT_ALPHA,
    paired: bool = True,
) -> list[Contribution]:
    """Each change's contribution, from (arm, {seed: val_bpb}) pairs of a ``leave_one_out`` wave.

    ``paired=False`` for replicates (no SEED knob): arms are compared by Welch's unpaired test over all
    their finished runs instead of seed by seed.
    """
    by_name = {arm.name: (arm, results) for arm, results in arms_results}
    if "stacked" not in by_name:
        have = sorted(by_name)
        raise InputError(f"no results for the `stacked` arm (have: {have}); every contribution is measured against it")
    stacked_arm, stacked_results = by_name["stacked"]
    out = []
    for ch in stacked_arm.changes:
        without = by_name.get(f"without:{ch.knob}")
        if without is None and len(stacked_arm.changes) == 1:
            without = by_name.get("baseline")
        if without is None:
            raise InputError(f"no results for the arm `without:{ch.knob}` (have: {sorted(by_name)})")
        compare = _contribution if paired else _unpaired_contribution
        out.append(compare(ch, without[1], stacked_results, alpha))
    return out


def _unpaired_contribution(
    ch: Change, without: Mapping[int, float | None], stacked: Mapping[int, float | None], alpha: float
) -> Contribution:
    w, s = finite(list(without.values())), finite(list(stacked.values()))
    n = min(len(w), len(s))

    def result(verdict: ContributionVerdict, note: str, value=None, p=None) -> Contribution:
        return Contribution(ch.knob, ch.baseline_value, ch.stacked_value, n, value, None, None, None, p, verdict,
                            note + " (unpaired: replicates without a SEED knob)")

    test = welch_one_sided(s, w)  # is the full stack lower than the stack without the change?
    if not w or not s:
        return result("inconclusive", "no finished run on this arm or on the full stack")
    value = -test.mean_delta
    if test.p_value is None:
        return result("inconclusive", f"fewer than 2 runs on one side (contribution {value:+.4f}): run more", value)
    p = test.p_value
    if p < alpha:
        return result("keep", f"removing this change costs {value:.4f} (p={p:.3g}) → keep it", value, p)
    detail = (f"without it the metric is {-value:.4f} lower, p={p:.3g}" if value < 0
              else f"contribution {value:+.4f} is not significant, p={p:.3g} ≥ {alpha}")
    return result("drop", f"removing this change does not hurt → drop it ({detail})", value, p)


def _contribution(
    ch: Change, without: Mapping[int, float | None], stacked: Mapping[int, float | None], alpha: float
) -> Contribution:
    common = sorted(s for s in set(without) & set(stacked) if finite([without[s]]) and finite([stacked[s]]))
    w, s = [float(without[x]) for x in common], [float(stacked[x]) for x in common]

    def result(verdict: ContributionVerdict, note: str, value=None, std=None, ci=None, p=None) -> Contribution:
        low, high = ci if ci is not None else (None, None)
        return Contribution(
            ch.knob, ch.baseline_value, ch.stacked_value, len(common), value, std, low, high, p, verdict, note
        )

    if not common:
        return result("inconclusive", "no seed finished on both this arm and the full stack")
    # paired_one_sided asks "is the first lower?": the stack lower than the stack without the change.
    test = paired_one_sided(s, w)
    value = -test.mean_delta
    if len(common) < 2:
        return result("inconclusive", f"one seed only (contribution {value:+.4f}): run more seeds to judge it", value)
    diffs = [a - b for a, b in zip(w, s)]
    ci = t_interval(diffs)
    p = test.p_value
    if p is not None and p < alpha:
        note = f"removing this change costs {value:.4f} bpb (p={p:.3g}) → keep it"
        return result("keep", note, value, test.std_delta, ci, p)
    if value < 0:
        detail = f"without it val_bpb is {-value:.4f} lower, p={p:.3g}"
    else:
        detail = f"contribution {value:+.4f} is not significant, p={p:.3g} ≥ {alpha}"
    note = f"removing this change does not hurt → drop it ({detail})"
    return result("drop", note, value, test.std_delta, ci, p)
