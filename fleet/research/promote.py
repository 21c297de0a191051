"""Tier promotion: pick the screen's best few, validate them against the baseline seed by seed.

The workflow: screen many ideas cheaply (one seed, usually H100s), take the top K by the
hardware-normalized metric (``select_candidates``; never the baseline, never a configuration equal
to it once defaults are filled in), run each on the validation tier with the baseline on the same
seeds (``plan_validation``), and judge them (`fleet.research.verdicts`).

Two designs:

- **sequential** (the default): every candidate starts with ``first_look`` seed pairs; while a
  candidate is undecided (``need_more``), ``more_pairs`` adds its next seed (and the baseline's,
  unless that seed already ran) so that ``IN_FLIGHT`` pairs are always queued, up to the cap. The
  controller calls it as results arrive (`fleet.research.sequential`), so decided candidates stop
  early and undecided ones get the seeds they need.
- **fixed** (``--seeds N``): N pairs each, judged once at the end.

``Rule`` is recorded in the wave's spec when it is made, so a verdict is reproducible even if
``fleet.yaml`` changes later.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from fleet.core.ledger_rows import ExperimentRow
from fleet.errors import InputError
from fleet.research.normalize import LeaderboardRow
from fleet.research.stats import check_seeds
from fleet.research.verdicts import Rule, Verdict
from fleet.types import ExperimentState

IN_FLIGHT = 2  # seed pairs kept queued per undecided candidate (enough to keep a validation GPU busy)
CRASH_ALLOWANCE = 0.5  # extra seeds (as a share of the cap) planned to replace crashed pairs


class PlannedRun(NamedTuple):
    """One experiment of a validation wave; a tuple so callers can unpack (config, seed, description)."""

    config: dict[str, str]
    seed: int
    description: str


def rule_spec(rule: Rule) -> dict[str, Any]:
    return {"alpha": rule.alpha, "min_effect": rule.min_effect, "max_seeds": rule.max_n,
            "first_look": rule.first_look, "design": rule.design, "step_mismatch": rule.mismatch}


def rule_from_spec(spec: Mapping[str, Any]) -> Rule:
    """The rule a wave was made with (waves made before rules were recorded: a fixed design of their seeds)."""
    r = spec.get("rule") or {}
    if "max_seeds" not in r:
        seeds = spec.get("seeds") or 3
        seeds = len(seeds) if isinstance(seeds, list) else int(seeds)
        return Rule(max_n=max(seeds, 2), first_look=max(seeds, 2), design="fixed")
    return Rule(alpha=float(r["alpha"]), min_effect=float(r["min_effect"]), max_n=int(r["max_seeds"]),
                first_look=int(r["first_look"]), design=r["design"], mismatch=float(r.get("step_mismatch", 0.1)))


def select_candidates(ranked: Sequence[LeaderboardRow], k: int, baseline_key: str | None,
                      beat_baseline: bool = True) -> list[LeaderboardRow]:
    """Top ``k`` configurations by normalized mean (lowest first), never the baseline itself, and (with
    ``beat_baseline``) only those whose screen mean is below the baseline's own mean on the screen.

    ``config_key`` is the key of the configuration with defaults filled in, so a grid point that
    equals the baseline is the baseline and is never promoted (an A/A test). Rows without a
    normalized value cannot be compared fairly and are skipped; the input order does not matter. A
    configuration that did not beat the baseline on the screen is its screen's evidence against it:
    validating it spends the validation tier on an idea whose own runs already say no. A baseline that
    did not run on the screen cannot be compared with: then nothing is left out for it.
    """
    if k < 1:
        raise InputError(f"`k` is {k}, but must be a positive integer (e.g. `--top 3`)")
    eligible = [r for r in ranked if r.config_key != baseline_key and r.normalized_mean is not None]
    base = screen_baseline(ranked, baseline_key)
    if beat_baseline and base is not None:
        eligible = [r for r in eligible if r.normalized_mean is not None and r.normalized_mean < base]
    eligible.sort(key=lambda r: (r.normalized_mean, r.config_key))
    return eligible[:k]


def screen_baseline(ranked: Sequence[LeaderboardRow], baseline_key: str | None) -> float | None:
    """The baseline's mean on the screen, in the ranking's column (None: it did not run there)."""
    return next((r.normalized_mean for r in ranked if r.config_key == baseline_key), None)


def plan_validation(
    candidates: Sequence[Mapping[str, str]], baseline_config: Mapping[str, str], seeds: int, first_seed: int = 0,
    key: Callable[[Mapping[str, str]], str] | None = None,
) -> list[PlannedRun]:
    """Each candidate with seeds first_seed.. first_seed+seeds-1, and the baseline with the same seeds.

    Pairing by seed is what makes the test paired: seed s of a candidate is compared with seed s
    of the baseline (same data order and initialization noise). Runs are ordered seed-major, the
    baseline first in each seed, so the baseline is spread through the wave and pairs finish close
    together. A candidate equal to the baseline, or to an earlier candidate (by ``key``: the
    configuration with defaults filled in), is planned once.
    """
    check_seeds(seeds)
    key = key or (lambda c: repr(sorted(c.items())))
    baseline = dict(baseline_config)
    unique: list[dict[str, str]] = []
    seen = {key(baseline)}
    for c in candidates:
        if key(c) not in seen:
            seen.add(key(c))
            unique.append(dict(c))
    if not unique:
        raise InputError("no candidate differs from the baseline configuration once defaults are filled in: "
                         "nothing to validate")
    plan = []
    for seed in range(first_seed, first_seed + seeds):
        plan.append(PlannedRun(dict(baseline), seed, f"baseline seed {seed}"))
        for i, c in enumerate(unique, 1):
            plan.append(PlannedRun(dict(c), seed, f"candidate {i}/{len(unique)} seed {seed}"))
    return plan


class PairRequest(NamedTuple):
    """Run ``config_key``'s next seed (and the baseline's, when ``with_baseline``)."""

    config_key: str
    seed: int
    with_baseline: bool


def more_pairs(
    verdicts: Sequence[Verdict], wave_runs: Sequence[ExperimentRow], baseline_key: str,
    baseline_seeds_done: set[int], rule: Rule,
) -> list[PairRequest]:
    """The seed pairs to add to a sequential validation wave now (pure).

    ``verdicts`` are named by candidate config key. A candidate still undecided after its first look
    gets its next seed while fewer than ``IN_FLIGHT`` of its runs are unfinished, until the pairs that
    may still count reach the cap (crashed pairs are replaced, up to an allowance). A seed the
    baseline already finished (in any wave) is not rerun.
    """
    if rule.design != "sequential" or any(e.state == ExperimentState.CANCELLED for e in wave_runs):
        return []  # a fixed design runs what it planned; a cancelled wave is the user saying stop
    limit = planned_limit(rule)
    baseline_planned = {e.seed for e in wave_runs if e.config_key == baseline_key} | baseline_seeds_done
    lost_baseline = {e.seed for e in wave_runs if e.config_key == baseline_key and _lost(e)}
    out = []
    for v in verdicts:
        if v.label != "need_more" or v.n < rule.first_look:
            continue  # decided, or its first look has not happened yet: the planned pairs come first
        mine = [e for e in wave_runs if e.config_key == v.name]
        seeds = {e.seed for e in mine}
        lost = {e.seed for e in mine if _lost(e)} | (seeds & lost_baseline)
        unfinished = sum(not e.state.finished for e in mine)
        next_seed = max(seeds, default=-1) + 1
        # Pairs that may still count stay within the cap; crashed pairs are replaced, up to the limit.
        while unfinished < IN_FLIGHT and len(seeds) < limit and len(seeds - lost) < rule.max_n:
            out.append(PairRequest(v.name, next_seed, next_seed not in baseline_planned))
            baseline_planned.add(next_seed)
            seeds.add(next_seed)
            next_seed += 1
            unfinished += 1
    return out


def _lost(e: ExperimentRow) -> bool:
    return e.state.finished and e.state != ExperimentState.DONE


MAX_ADDED_PAIRS = 32  # more pairs than this to reach 80% power: the effect is too small for this noise


def pairs_to_add(pairs: int, pairs_for_power: int | None) -> int | None:
    """How many more pairs to suggest for an inconclusive candidate: what 80% power needs beyond the pairs it
    has (at least 4), or None when that is more than MAX_ADDED_PAIRS (at this noise, a gain of
    min_effect would take more pairs than it is worth: move on)."""
    need = (pairs_for_power or 0) - pairs
    if need > MAX_ADDED_PAIRS:
        return None
    return max(need, 4)


def promising(verdict: str, gain: float | None) -> bool:
    """An inconclusive candidate with a positive estimated gain: the only kind worth more pairs."""
    return verdict == "inconclusive" and gain is not None and gain > 0


def pairs_to_settle(needs: Iterable[tuple[int, int | None]]) -> int | None:
    """The seed pairs to add to a wave's promising candidates, each given as (pairs so far, pairs for 80%
    power): the most any needs (`pairs_to_add`), or None when one needs more than MAX_ADDED_PAIRS, or there is
    none. None means no affordable number of pairs settles the wave: move on. `fleet next`'s continue action,
    the verdict's hint and backfill's more pairs all follow this one rule."""
    adds = [pairs_to_add(n, p) for n, p in needs]
    if not adds or any(a is None for a in adds):
        return None
    return max(a for a in adds if a is not None)


def planned_limit(rule: Rule) -> int:
    """Seeds a candidate may plan in all: the cap, plus replacements for crashed pairs."""
    return rule.max_n + int(rule.max_n * CRASH_ALLOWANCE)


def closed(rule: Rule, cand_runs: Sequence[ExperimentRow], baseline_runs: Sequence[ExperimentRow]) -> bool:
    """No more pairs will come for this candidate: its runs and the baseline's on its seeds are
    finished and either the design is fixed, the wave was cancelled, or the seeds are used up."""
    seeds = {e.seed for e in cand_runs}
    relevant = [*cand_runs, *(e for e in baseline_runs if e.seed in seeds)]
    if any(not e.state.finished for e in relevant):
        return False
    cancelled = any(e.state == ExperimentState.CANCELLED for e in relevant)
    return rule.design == "fixed" or cancelled or len(seeds) >= planned_limit(rule)
