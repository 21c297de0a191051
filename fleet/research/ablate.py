"""Leave-one-out ablation: which of the changes stacked in a configuration actually help?

A *change* is a knob whose effective value differs between the baseline and the stacked
configuration: the value it is set to, else its default in that code (``effective_changes``). So a
change baked into a default since a git commit is a change too, when the baseline is that commit's
code. The wave (``leave_one_out``) has:

- the ``baseline`` arm (on its own code) and the full ``stacked`` arm;
- one ``without`` arm per change or group of changes (``groups``: knobs that must change together,
  e.g. a batch size and the accumulation it implies): the stacked configuration with those knobs
  set back to the baseline's values. With a single change that arm *is* the baseline (same code).

Every arm runs the same seeds. A change's contribution is ``mean(without it) − mean(stacked)`` over
the seeds both finished (> 0: the change helps), judged by `fleet.research.verdicts` as a fixed
design with the stack as "candidate" and the arm without the change as "baseline":

- ``keep``: the contribution is significantly above 0 (Holm over the changes) and at least
  ``min_effect``;
- ``drop``: the contribution is significantly *below* ``min_effect`` (an equivalence-type test: the
  upper bound is under min_effect): removing the change costs less than is worth keeping;
- ``inconclusive`` otherwise. "Not significant" is never a reason to drop.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleet.core.knobs import KnobListing, canonical_config, normal_value
from fleet.errors import InputError
from fleet.research.stats import check_seeds
from fleet.research.verdicts import Comparison, Pairing, Rule, Run, Verdict, judge

ArmRole = Literal["baseline", "stacked", "without"]
ContributionVerdict = Literal["keep", "drop", "inconclusive"]


@dataclass(frozen=True)
class Change:
    knob: str
    baseline_value: str | None  # None: at its default (or unset)
    stacked_value: str | None


@dataclass(frozen=True)
class AblationArm:
    name: str  # "baseline", "stacked", or "without:<knob>[+<knob>...]"
    role: ArmRole
    config: dict[str, str]
    seeds: tuple[int, ...]
    removed: tuple[str, ...] = ()  # the knobs reset in a "without" arm
    changes: tuple[Change, ...] = field(default=())  # every change of the stack (same on all arms)


@dataclass(frozen=True)
class Contribution:
    knobs: tuple[str, ...]
    n: int
    contribution: float | None  # mean(without) − mean(stacked); > 0 = the change helps
    sd: float | None  # sd of one seed pair's difference
    ci_low: float | None  # bounds of the contribution used by the rule
    ci_high: float | None
    p_value: float | None  # nominal one-sided p that it helps
    power: float | None
    verdict: ContributionVerdict
    note: str


def find_changes(baseline: Mapping[str, str], stacked: Mapping[str, str]) -> list[Change]:
    """The knobs where ``stacked`` differs from ``baseline`` as written, in knob order."""
    knobs = sorted(set(baseline) | set(stacked))
    return [Change(k, baseline.get(k), stacked.get(k)) for k in knobs if baseline.get(k) != stacked.get(k)]


def effective_changes(
    baseline: Mapping[str, str], baseline_listing: KnobListing, stacked: Mapping[str, str],
    stacked_listing: KnobListing, preset: str | None = None,
) -> tuple[list[Change], list[str]]:
    """Changes by effective value (set, else the code's default), and notes on knobs left out.

    With one code on both sides this is ``find_changes`` after filling in defaults. With two (a
    baseline commit), a knob whose default moved is a change; a knob only the stacked code has, or
    whose default differs between presets when the preset is unknown, cannot be reset by value and
    is named in a note.
    """
    base, stack = dict(canonical_config(dict(baseline), baseline_listing)), canonical_config(dict(stacked), stacked_listing)
    if baseline_listing is stacked_listing:  # one code: a knob left at its default on one side is reset by removing it
        return [Change(c.knob, _shown(c.knob, base, baseline_listing, preset), _shown(c.knob, stack, stacked_listing,
                                                                                      preset))
                for c in find_changes(base, stack)], []
    notes, changes = [], []
    for knob in sorted(set(baseline_listing.knobs) | set(stacked_listing.knobs) | set(base) | set(stack)):
        if knob not in stacked_listing.knobs:
            continue  # gone from the stacked code: nothing to set
        if knob not in baseline_listing.knobs:
            if knob in stack:
                notes.append(f"{knob} is new since the baseline's code; its old behaviour is not a value of it, "
                             "so it is ablated only as part of the whole stack")
            continue
        b, s = _effective(knob, base, baseline_listing, preset), _effective(knob, stack, stacked_listing, preset)
        if b is None or s is None:
            if b != s:
                notes.append(f"{knob}: its default differs between presets; pass --preset to compare it")
            continue
        if b != s:
            changes.append(Change(knob, b, s))
    return changes, notes


def _shown(knob: str, config: Mapping[str, str], listing: KnobListing, preset: str | None) -> str | None:
    return _effective(knob, config, listing, preset) if knob in listing.knobs else config.get(knob)


def _effective(knob: str, config: Mapping[str, str], listing: KnobListing, preset: str | None) -> str | None:
    """The knob's value in ``config`` (canonical: set only when not the default), else its default for
    ``preset`` (or the config's PRESET), else the default all presets share; None if they differ."""
    if knob in config:
        return config[knob]
    info = listing.knobs[knob]
    preset = preset or config.get("PRESET")
    if preset in info.default:
        return normal_value(info.default[preset], info.type)
    values = {normal_value(v, info.type) for v in info.default.values()}
    return values.pop() if len(values) == 1 else None


def leave_one_out(
    baseline: Mapping[str, str], stacked: Mapping[str, str], seeds: int, first_seed: int = 0,
    changes: Sequence[Change] | None = None, groups: Sequence[Sequence[str]] = (), same_code: bool = True,
) -> list[AblationArm]:
    """The ablation wave: baseline, full stack, and the stack without each change (or group) in turn."""
    check_seeds(seeds)
    changes = tuple(changes if changes is not None else find_changes(baseline, stacked))
    if not changes:
        raise InputError("the stacked configuration equals the baseline once defaults are filled in: "
                         "there is no change to ablate")
    by_knob = {c.knob: c for c in changes}
    units = _units(changes, groups)
    seed_list = tuple(range(first_seed, first_seed + seeds))
    arms = [
        AblationArm("baseline", "baseline", dict(baseline), seed_list, (), changes),
        AblationArm("stacked", "stacked", dict(stacked), seed_list, (), changes),
    ]
    if len(units) == 1 and same_code:
        return arms  # the stack without its only change is the baseline
    for knobs in units:
        config = dict(stacked)
        for knob in knobs:
            value = by_knob[knob].baseline_value
            if value is None:
                config.pop(knob, None)
            else:
                config[knob] = value
        arms.append(AblationArm("without:" + "+".join(knobs), "without", config, seed_list, knobs, changes))
    return arms


def _units(changes: Sequence[Change], groups: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """One unit per group (in the order given), then one per remaining change."""
    known = {c.knob for c in changes}
    used: set[str] = set()
    out = []
    for group in groups:
        knobs = tuple(dict.fromkeys(k.strip() for k in group if k.strip()))
        unknown = [k for k in knobs if k not in known]
        if unknown:
            raise InputError(f"--group {','.join(knobs)}: {', '.join(unknown)} is not a change of this stack "
                             f"(changes: {', '.join(sorted(known))})")
        if used & set(knobs):
            raise InputError(f"--group {','.join(knobs)}: a knob may be in one group only")
        used |= set(knobs)
        out.append(knobs)
    return out + [(c.knob,) for c in changes if c.knob not in used]


def contributions(
    arms_results: Sequence[tuple[AblationArm, Mapping[int, float | None]]], rule: Rule, pairing: Pairing = "seed",
) -> list[Contribution]:
    """Each unit's contribution from (arm, {seed: value}) pairs of a ``leave_one_out`` wave.

    ``rule`` is a fixed design whose ``max_n`` is the wave's seeds; its alpha is family-wise over
    the units for ``keep``. ``pairing="unpaired"`` for replicates (no SEED knob): Welch's test over
    all runs of each arm instead of seed pairs.
    """
    by_name = {arm.name: (arm, results) for arm, results in arms_results}
    if "stacked" not in by_name:
        raise InputError(f"no results for the `stacked` arm (have: {sorted(by_name)}); every contribution is "
                         "measured against it")
    stacked = _runs(by_name["stacked"][1])
    withouts = [(arm, results) for arm, results in arms_results if arm.role == "without"]
    if not withouts and "baseline" in by_name:
        arm = by_name["baseline"][0]
        withouts = [(AblationArm("without:" + "+".join(c.knob for c in arm.changes), "without", arm.config,
                                 arm.seeds, tuple(c.knob for c in arm.changes), arm.changes), by_name["baseline"][1])]
    comps = [Comparison(arm.name, stacked, _runs(results), pairing, closed=True) for arm, results in withouts]
    return [_contribution(arm.removed, v) for (arm, _), v in zip(withouts, judge(comps, rule))]


def _runs(per_seed: Mapping[int, float | None]) -> tuple[Run, ...]:
    return tuple(Run(seed, value, None, float(seed)) for seed, value in sorted(per_seed.items()))


def _contribution(knobs: tuple[str, ...], v: Verdict) -> Contribution:
    label: ContributionVerdict = "keep" if v.label == "keep" else "drop" if v.label == "discard" else "inconclusive"
    low = None if v.high is None else -v.high  # contribution = −delta: the bounds swap
    high = None if v.low is None else -v.low
    what = {"keep": "removing it costs at least min_effect, significantly → keep it",
            "drop": "removing it costs significantly less than min_effect (shown, not merely not significant) "
                    "→ drop it",
            "inconclusive": "neither shown: keep it until more seeds say otherwise"}[label]
    if v.gain is None or v.n < 2:
        return Contribution(knobs, v.n, v.gain, None, None, None, None, None, "inconclusive",
                            f"{v.n} seed pair(s): too few to judge; run more seeds")
    bounds = f", bounds [{low:+.4f}, {high:+.4f}]" if low is not None and high is not None else ""
    power = f"; power to see a contribution of min_effect: {100 * v.power:.0f}%" if v.power is not None else ""
    if v.label == "inconclusive" and "no run-to-run variation" in v.reason:
        what = "no seed-to-seed variation (deterministic runs?): the noise cannot be estimated"
    unpaired = "; unpaired: replicates without a SEED knob" if v.pairing == "unpaired" else ""
    return Contribution(knobs, v.n, v.gain, v.sd, low, high, v.p_value, v.power, label,
                        f"{what} (contribution {v.gain:+.4f}{bounds} at {v.n} seeds{power if label != 'keep' else ''}"
                        f"{unpaired})")
