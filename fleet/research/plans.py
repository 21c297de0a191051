"""Promotion and recheck waves over the ledger: what to queue (pure; the CLI reads and submits).

Rules
-----
- **Configurations** are compared by their key *with defaults filled in* (``key``: the caller passes
  `fleet.core.knobs.canonical_config` under the code's knob listing): a grid point equal to the
  baseline is the baseline and is never promoted.
- **Baseline** (``resolve_baseline``): ``--baseline EXP``'s configuration (and code); else the
  wave's experiment described ``baseline``; else the wave's base env alone (no grid overrides).
- **Screen ranking** (``rank_screen``): configurations of the wave's finished runs, mean over
  seeds, by the hardware-normalized val_bpb when any run of the wave can be normalized, else raw.
- **Code**: a validation wave starts from its source wave's code; the baseline configuration runs on
  that code (so a baseline taken from another wave is compared on knobs only), and a candidate that
  names a code variant (`code`/`patch` in its configuration) runs that variant's code. A recheck runs
  each side on its own code.
- **Pairing**: seeds pair runs across arms; replicates (a workload without a SEED knob, recorded as
  ``seeding == "replicate"``) are compared unpaired, and the report's ``rule.test`` says so.
- **Recheck** (``plan_recheck``): the current best (the latest adopted experiment, else the latest kept
  candidate) against the original
  baseline (the first promotion's), on fresh seeds, judged on the recheck's own runs only: the runs
  that made the best look best are not evidence of it (the winner's curse).

Verdicts of the waves these plans make are read back by `fleet.research.verdict_report`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fleet.core.expand import PlannedExperiment, config_key, env_value, variant_of
from fleet.core.ledger_rows import ExperimentRow, ResultRow, WaveRow
from fleet.errors import FleetError, InputError
from fleet.research.ablate import find_changes
from fleet.research.normalize import LeaderboardRow, NormalizedRecord, rank
from fleet.research.normalize_view import run_record
from fleet.research.promote import rule_from_spec, rule_spec, screen_baseline, select_candidates
from fleet.research.stats import finite
from fleet.research.verdicts import Rule
from fleet.types import ExperimentState

BASELINE_DESCRIPTION = "baseline"
UNFINISHED = (ExperimentState.PLANNED, ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING,
              ExperimentState.HELD)
Keyer = Callable[[Mapping[str, str]], str]


@dataclass(frozen=True)
class Baseline:
    config: dict[str, str]
    source: str  # for people: where the configuration came from
    experiment: str | None = None  # the experiment it was taken from, if any
    config_key: str | None = None  # with defaults filled in (None: computed by the planner)
    snapshot: str | None = None  # its own code (a recheck or a baseline from a commit); None: the wave's


def resolve_baseline(
    wave: WaveRow, experiments: Sequence[ExperimentRow], explicit: ExperimentRow | None = None,
    key: Keyer = config_key,
) -> Baseline:
    """``--baseline EXP``, else the wave's experiment described `baseline`, else its base env."""
    if explicit is not None:
        return Baseline(dict(explicit.config), f"--baseline {explicit.id}", explicit.id, explicit.config_key,
                        explicit.code)
    for exp in experiments:
        if exp.wave_id == wave.id and exp.description.strip().lower() == BASELINE_DESCRIPTION:
            return Baseline(dict(exp.config), f"{exp.id} (described `baseline`)", exp.id, exp.config_key, exp.code)
    base = {k: _env_str(v) for k, v in (wave.base or {}).items()}
    return Baseline(base, f"the base env of wave {wave.id}" + ("" if base else " (empty: every knob at its default)"),
                    None, key(base))


def _env_str(value: Any) -> str:
    return env_value(value) if isinstance(value, (bool, int, float)) else str(value)


# ---- screening: which configurations to promote ---------------------------------------------------


def rank_screen(
    experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow], normalized: Mapping[str, float | None]
) -> tuple[list[LeaderboardRow], Literal["normalized", "raw"]]:
    """The wave's configurations, mean over finished seeds, best first (normalized when possible)."""
    done = [e for e in experiments if e.state == ExperimentState.DONE and e.id in results
            and finite([results[e.id].val_bpb])]
    use_normalized = any(normalized.get(e.id) is not None for e in done)
    records = []
    for e in done:
        r = results[e.id]
        # Ranked through the "normalized" column either way; with nothing normalizable it holds raw values.
        value = normalized.get(e.id) if use_normalized else r.val_bpb
        records.append(NormalizedRecord(run_record(e, r), value, None))
    return rank(records, "normalized"), ("normalized" if use_normalized else "raw")


@dataclass(frozen=True)
class WavePlan:
    planned: list[PlannedExperiment]
    spec: dict[str, Any]  # stored with the wave: how to read its results back
    snapshot: str


def plan_promotion(
    wave: WaveRow, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None], baseline: Baseline, top: int, rule: Rule, key: Keyer = config_key,
) -> WavePlan:
    """The validation wave: the top ``top`` configurations and the baseline, ``rule.first_look``
    paired seeds each to start with (a fixed design: all ``rule.max_n``)."""
    mine = [e for e in experiments if e.wave_id == wave.id]
    ranked, sorted_by = rank_screen(mine, results, normalized)
    if not ranked:
        unfinished = sum(e.state in UNFINISHED for e in mine)
        failed = sum(e.state.finished and e.state != ExperimentState.DONE for e in mine)
        why = (f"{unfinished} still pending or running: `fleet wait {wave.id}` first" if unfinished
               else f"{failed} crashed, timed out or were cancelled: `fleet results --wave {wave.id}` shows why")
        raise FleetError(f"wave {wave.id!r} has no finished results to promote ({why})")
    baseline_key = baseline.config_key or key(baseline.config)
    any_top = select_candidates(ranked, top, baseline_key, beat_baseline=False)
    if not any_top:
        raise InputError(f"wave {wave.id!r} has no finished configuration other than the baseline "
                         f"({baseline.source}) once defaults are filled in; nothing to promote")
    chosen = select_candidates(ranked, top, baseline_key)
    by_key: dict[str, list[ExperimentRow]] = {}
    for e in mine:
        by_key.setdefault(e.config_key, []).append(e)
    base_value = screen_baseline(ranked, baseline_key)
    kept = {r.config_key for r in chosen}
    worse = [{"config_key": r.config_key, "label": _label(baseline, by_key[r.config_key][0]),
              "screen_value": r.normalized_mean, "experiment": by_key[r.config_key][0].id}
             for r in any_top if r.config_key not in kept]  # the top ``top`` that did not beat the baseline
    if not chosen:
        best = worse[0]
        raise InputError(
            f"no configuration of wave {wave.id!r} beat its baseline on the screen ({sorted_by} mean {base_value:.4f}, "
            f"lower is better; its best, {best['label']}, has {best['screen_value']:.4f}): nothing queued; to validate "
            f"some anyway, name them: `fleet promote --experiments {' '.join(w['experiment'] for w in worse)}`")
    snapshot = wave.snapshot  # each candidate's own variant, if any, is found by the submission
    candidates = []
    for row in chosen:
        first = by_key[row.config_key][0]
        candidates.append({
            "config_key": row.config_key, "config": dict(first.config),
            "label": _label(baseline, first),
            "description": first.description, "screen_value": row.normalized_mean,
            "screen_experiments": [e.id for e in by_key[row.config_key]],
        })
    seeds = rule.max_n if rule.design == "fixed" else rule.first_look
    spec = {
        "name": f"{wave.id}-promote", "source_wave": wave.id, "seeds": seeds, "top": top, "sorted_by": sorted_by,
        "rule": rule_spec(rule), "pooled": True,
        "baseline": {"config": dict(baseline.config), "config_key": baseline_key, "source": baseline.source,
                     "experiment": baseline.experiment, "screen_value": base_value},
        "candidates": candidates,
        "not_better": worse,  # of the top ``top``, those left out: their screen mean did not beat the baseline's
    }
    return WavePlan(planned_runs(spec, range(seeds)), spec, snapshot)


def _label(baseline: Baseline, exp: ExperimentRow) -> str:
    return exp.label or exp.description or _changes_label(baseline.config, exp.config)


def planned_runs(spec: Mapping[str, Any], seeds: Iterable[int], only: set[str] | None = None,
                 baseline_seeds: set[int] | None = None) -> list[PlannedExperiment]:
    """The experiments of a validation wave for these seeds: the baseline (on ``baseline_seeds``, default
    all) then each candidate (in ``only``, default all), seed by seed."""
    base = spec["baseline"]
    out = []
    for seed in seeds:
        if baseline_seeds is None or seed in baseline_seeds:
            out.append(PlannedExperiment(dict(base["config"]), seed, BASELINE_DESCRIPTION, base["config_key"],
                                         BASELINE_DESCRIPTION, {}, base.get("snapshot")))
        for c in spec["candidates"]:
            if only is None or c["config_key"] in only:
                out.append(PlannedExperiment(dict(c["config"]), seed, c["description"], c["config_key"], c["label"],
                                             {}, c.get("snapshot")))
    return out


def _changes_label(baseline: Mapping[str, str], config: Mapping[str, str]) -> str:
    changed = changes_vs(baseline, config)
    return " ".join(f"{k}={v}" for k, v in changed.items()) or "(same as baseline)"


def changes_vs(baseline: Mapping[str, str], config: Mapping[str, str]) -> dict[str, str | None]:
    """Knobs where ``config`` differs from ``baseline`` (None: the config leaves it at its default)."""
    return {c.knob: c.stacked_value for c in find_changes(baseline, config)}


# ---- recheck: the current best against the original baseline --------------------------------------------


def current_best(waves: Sequence[WaveRow], reports: Mapping[str, Mapping[str, Any]],
                 adopted: Sequence[str] = ()) -> str | None:
    """The committed stack's experiment: the latest adopted one (``adopted``: experiment ids, oldest adoption
    first), else, when nothing was adopted, the latest kept candidate (the promote wave made last whose report
    has a keep). A keep never adopted is not what the code now runs: re-checking it says nothing of the stack.

    ``reports`` are verdict reports by wave id (`verdict_report.promotion_report`); rechecks do not count.
    """
    if adopted:
        return adopted[-1]
    for wave in sorted(waves, key=lambda w: (w.created_at, w.id), reverse=True):
        report = reports.get(wave.id)
        if report and not wave.spec.get("recheck") and report.get("best_keep"):
            return report["best_keep"]
    return None


def original_baseline(waves: Sequence[WaveRow]) -> Baseline | None:
    """The baseline of the first promotion (its configuration on that wave's code)."""
    for wave in sorted(waves, key=lambda w: (w.created_at, w.id)):
        if wave.kind == "promote" and not wave.spec.get("recheck") and "baseline" in wave.spec:
            b = wave.spec["baseline"]
            return Baseline(dict(b["config"]), f"the baseline of the first promotion, {wave.id}", b.get("experiment"),
                            b["config_key"], b.get("snapshot") or wave.snapshot)
    return None


def plan_recheck(best: ExperimentRow, baseline: Baseline, rule: Rule, first_seed: int, key: Keyer = config_key) -> WavePlan:
    """The best configuration on its code against ``baseline`` on its own code, fresh seeds from ``first_seed``."""
    base_key = baseline.config_key or key(baseline.config)
    base_snapshot = baseline.snapshot or best.code
    if base_key == best.config_key and base_snapshot == best.code:
        raise InputError(f"{best.id} is the original baseline itself (same code and configuration): nothing to recheck")
    seeds = rule.max_n if rule.design == "fixed" else rule.first_look
    spec = {
        "name": f"{best.id}-recheck", "source_wave": best.wave_id, "seeds": seeds, "first_seed": first_seed,
        "rule": rule_spec(rule), "pooled": False, "recheck": True,
        "baseline": {"config": dict(baseline.config), "config_key": base_key, "source": baseline.source,
                     "experiment": baseline.experiment, "snapshot": base_snapshot},
        "candidates": [{"config_key": best.config_key, "config": dict(best.config), "label": best.label or best.id,
                        "description": best.description, "screen_value": None, "screen_experiments": [best.id],
                        "snapshot": best.code}],
    }
    return WavePlan(planned_runs(spec, range(first_seed, first_seed + seeds)), spec, best.code)


def plan_continuation(wave: WaveRow, config_key: str, rule: Rule, first_seed: int) -> WavePlan:
    """More pairs for one candidate of a finished validation wave: the same baseline, code and source,
    a new cap (``rule``), seeds from ``first_seed`` on. Its earlier pairs count as evidence (pooled)."""
    spec = wave.spec
    chosen = [c for c in spec["candidates"] if c["config_key"] == config_key]
    if not chosen:
        raise InputError(f"{config_key!r} is not a candidate of {wave.id} (candidates: "
                         f"{', '.join(c['config_key'] for c in spec['candidates'])})")
    seeds = rule.max_n if rule.design == "fixed" else rule.first_look
    new = {**spec, "name": f"{wave.id}-more", "candidates": chosen, "rule": rule_spec(rule), "seeds": seeds,
           "first_seed": first_seed, "pooled": bool(spec.get("pooled", True))}
    return WavePlan(planned_runs(new, range(first_seed, first_seed + seeds)), new, wave.snapshot)


def plan_more_seeds(wave: WaveRow, config_keys: Sequence[str], pairs_so_far: int, add: int,
                    first_seed: int) -> WavePlan:
    """``add`` more seed pairs for these candidates of a finished validation wave (`fleet promote WAVE
    --add-seeds N`): the same baseline, code and rule, with the cap raised to ``pairs_so_far + add`` so that
    the pairs already run count (pooled) and the new ones are looked at under the same design."""
    spec = wave.spec
    chosen = [c for c in spec["candidates"] if c["config_key"] in set(config_keys)]
    if not chosen:
        raise InputError(f"none of {', '.join(config_keys)} is a candidate of {wave.id}")
    rule = rule_from_spec(spec)
    cap = pairs_so_far + add
    new_rule = Rule(rule.alpha, rule.min_effect, cap, min(rule.first_look, cap), rule.design, rule.mismatch)
    new = {**spec, "name": f"{wave.id}-more", "candidates": chosen, "rule": rule_spec(new_rule), "seeds": add,
           "first_seed": first_seed, "pooled": True, "added_to": wave.id}
    new.pop("backfill", None)
    return WavePlan(planned_runs(new, range(first_seed, first_seed + add)), new, wave.snapshot)


def plan_chosen(wave: WaveRow, chosen: Sequence[ExperimentRow], baseline: Baseline, rule: Rule,
                key: Keyer = config_key) -> WavePlan:
    """A validation wave of configurations the agent picked (`fleet promote --experiments EXP…`) against
    ``baseline``; ``wave`` is the first one's wave (its code runs the baseline). Each candidate runs its own
    code; the waves they came from are not evidence (their runs are why they were picked)."""
    baseline_key = baseline.config_key or key(baseline.config)
    candidates, seen = [], {baseline_key}
    for exp in chosen:
        if exp.config_key in seen:
            if exp.config_key == baseline_key:
                raise InputError(f"{exp.id} is the baseline's configuration ({baseline.source}) once defaults are "
                                 "filled in: it cannot be validated against itself")
            continue
        seen.add(exp.config_key)
        candidates.append({
            "config_key": exp.config_key, "config": dict(exp.config), "label": exp.label or exp.description or exp.id,
            "description": exp.description, "screen_value": None, "screen_experiments": [exp.id],
            # a code variant finds its code (and the base adopt merges from) by name; other code is pinned
            "snapshot": None if variant_of(exp.config) is not None or exp.code == wave.snapshot else exp.code,
        })
    seeds = rule.max_n if rule.design == "fixed" else rule.first_look
    spec = {
        "name": f"{wave.id}-promote", "source_wave": wave.id,
        "source_waves": sorted({e.wave_id for e in chosen}), "seeds": seeds, "top": len(candidates),
        "sorted_by": "chosen", "rule": rule_spec(rule), "pooled": True,
        "baseline": {"config": dict(baseline.config), "config_key": baseline_key, "source": baseline.source,
                     "experiment": baseline.experiment},
        "candidates": candidates,
    }
    return WavePlan(planned_runs(spec, range(seeds)), spec, wave.snapshot)


def grid_verdict_spec(wave: WaveRow, experiments: Sequence[ExperimentRow], baseline: Baseline, rule: Rule,
                      key: Keyer = config_key) -> dict[str, Any]:
    """A seeded grid wave read as a validation: every configuration against the wave's baseline on the
    wave's own seed pairs, one look (the wave planned its seeds), Holm over all its configurations
    (nothing was picked first, so no winner's curse). Raises when the wave cannot say."""
    mine = [e for e in experiments if e.wave_id == wave.id]
    baseline_key = baseline.config_key or key(baseline.config)
    base_runs = [e for e in mine if e.config_key == baseline_key]
    if not base_runs:
        raise InputError(f"grid wave {wave.id!r} has no baseline run to compare with (add `{{description: baseline}}` "
                         f"to its experiments, or `fleet promote {wave.id}` validates its best against one)")
    seeds = len({e.seed for e in base_runs})
    if seeds < 2:
        raise InputError(f"wave {wave.id!r} ran one seed per configuration: a verdict needs at least 2 seed pairs "
                         f"(`seeds: 3` in the wave file), or `fleet promote {wave.id}` validates its best on more seeds")
    by_key: dict[str, ExperimentRow] = {}
    for e in mine:
        if e.config_key != baseline_key:
            by_key.setdefault(e.config_key, e)
    if not by_key:
        raise InputError(f"wave {wave.id!r} has no configuration other than its baseline ({baseline.source})")
    fixed = Rule(rule.alpha, rule.min_effect, seeds, seeds, "fixed", rule.mismatch)
    return {
        "name": wave.id, "source_wave": None, "seeds": seeds, "grid": True, "rule": rule_spec(fixed), "pooled": False,
        "baseline": {"config": dict(baseline.config), "config_key": baseline_key, "source": baseline.source,
                     "experiment": baseline.experiment},
        "candidates": [{"config_key": k, "config": dict(e.config), "label": e.label or e.description or k,
                        "description": e.description, "screen_value": None, "screen_experiments": []}
                       for k, e in by_key.items()],
    }


__all__ = [
    "BASELINE_DESCRIPTION",
    "grid_verdict_spec",
    "plan_chosen",
    "plan_more_seeds",
    "Baseline",
    "WavePlan",
    "changes_vs",
    "current_best",
    "original_baseline",
    "plan_continuation",
    "plan_promotion",
    "plan_recheck",
    "planned_runs",
    "rank_screen",
    "resolve_baseline",
]
