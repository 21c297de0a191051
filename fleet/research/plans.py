"""Promotion and ablation waves over the ledger: what to queue, and how to report what came back.

The statistics live in ``promote.py`` and ``ablate.py``; this module only connects them to ledger
rows. Every function here is pure (rows in, plain data out) so the CLI does the I/O: reading the
ledger, submitting the wave, printing.

Rules
-----
- **Baseline** (``resolve_baseline``): ``--baseline EXP``'s configuration; else the wave's
  experiment described ``baseline``; else the wave's base env alone (no grid overrides).
- **Screen ranking** (``rank_screen``): configurations of the wave's finished runs, mean over
  seeds, by the hardware-normalized val_bpb when any run of the wave can be normalized, else raw
  (``sorted_by`` says which).
- **Code**: a validation wave starts from its source wave's code; the baseline configuration runs on
  that code (so a baseline taken from another wave is compared on knobs only), and a candidate that
  names a code variant (`code`/`patch` in its configuration) runs that variant's code.
- **Pairing**: seeds pair runs across arms; replicates (a workload without a SEED knob, recorded as
  ``seeding == "replicate"``) are compared unpaired, and the report's ``rule.test`` says so.
- **Metric of a validation wave** (``wave_values``): raw val_bpb when all its runs share one
  accelerator (the usual case: the tier pins it), else the normalized value.

JSON shapes (``fleet verdict --json`` / ``fleet promote --wait --json``)
------------------------------------------------------------------------
Promote wave::

    {"wave", "kind": "promote", "parent", "tier", "metric": "raw"|"normalized", "accelerators": [...],
     "rule": {"alpha", "floor_multiple", "test"}, "complete": bool, "unfinished": int,
     "baseline": {"config", "config_key", "source", "n", "mean", "std", "experiments": [...]},
     "candidates": [{"rank", "label", "config", "changes", "config_key", "experiment", "experiments",
                     "screen_value", "n", "mean", "std", "baseline_mean", "baseline_std", "delta",
                     "p_value", "noise_floor", "verdict", "reason", "missing_seeds"}],
     "best_keep": experiment id | null}

``candidates`` are sorted best first: ``keep`` before ``inconclusive`` before ``discard``, then by
delta (most negative first). ``delta`` = candidate − baseline (negative = better).

Ablate wave (``fleet ablation --json``, or ``fleet verdict`` on an ablate wave)::

    {"wave", "kind": "ablate", "parent", "experiment", "tier", "metric", "accelerators", "alpha",
     "complete", "unfinished",
     "arms": [{"name", "role", "config", "config_key", "removed", "n", "mean", "std"}],
     "changes": [{"knob", "baseline_value", "stacked_value", "n", "contribution", "std", "ci_low",
                  "ci_high", "p_value", "verdict": "keep"|"drop"|"inconclusive", "note"}],
     "keep": [knob...], "drop": [knob...]}
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fleet.core.expand import PlannedExperiment, config_key, env_value
from fleet.core.ledger_rows import REPLICATE, ExperimentRow, ResultRow, WaveRow
from fleet.errors import FleetError, InputError
from fleet.research.ablate import (
    AblationArm,
    Change,
    contributions,
    find_changes,
    leave_one_out,
)
from fleet.research.normalize import LeaderboardRow, NormalizedRecord, rank
from fleet.research.normalize_view import run_record
from fleet.research.promote import (
    DEFAULT_ALPHA,
    DEFAULT_FLOOR_MULTIPLE,
    plan_validation,
    select_candidates,
    verdict,
)
from fleet.research.stats import finite, mean_std
from fleet.types import ExperimentState

BASELINE_DESCRIPTION = "baseline"
ABLATION_ALPHA = 0.05
_VERDICT_ORDER = {"keep": 0, "inconclusive": 1, "discard": 2}
_UNFINISHED = (ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING, ExperimentState.HELD)


@dataclass(frozen=True)
class Baseline:
    config: dict[str, str]
    source: str  # for people: where the configuration came from
    experiment: str | None = None  # the experiment it was taken from, if any


def resolve_baseline(
    wave: WaveRow, experiments: Sequence[ExperimentRow], explicit: ExperimentRow | None = None
) -> Baseline:
    """``--baseline EXP``, else the wave's experiment described `baseline`, else its base env."""
    if explicit is not None:
        return Baseline(dict(explicit.config), f"--baseline {explicit.id}", explicit.id)
    for exp in experiments:
        if exp.wave_id == wave.id and exp.description.strip().lower() == BASELINE_DESCRIPTION:
            return Baseline(dict(exp.config), f"{exp.id} (described `baseline`)", exp.id)
    base = {k: _env_str(v) for k, v in (wave.base or {}).items()}
    return Baseline(base, f"the base env of wave {wave.id}" + ("" if base else " (empty: every knob at its default)"))


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
        record = run_record(e, r)
        # Ranked through the "normalized" column either way; with nothing normalizable it holds raw values.
        value = normalized.get(e.id) if use_normalized else r.val_bpb
        records.append(NormalizedRecord(record, value, None))
    return rank(records, "normalized"), ("normalized" if use_normalized else "raw")


@dataclass(frozen=True)
class WavePlan:
    planned: list[PlannedExperiment]
    spec: dict[str, Any]  # stored with the wave: how to read its results back
    snapshot: str


def plan_promotion(
    wave: WaveRow, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None], baseline: Baseline, top: int, seeds: int,
) -> WavePlan:
    """The validation wave: the top ``top`` configurations and the baseline, ``seeds`` paired seeds each."""
    mine = [e for e in experiments if e.wave_id == wave.id]
    ranked, sorted_by = rank_screen(mine, results, normalized)
    if not ranked:
        unfinished = sum(e.state in _UNFINISHED for e in mine)
        failed = sum(e.state.finished and e.state != ExperimentState.DONE for e in mine)
        why = (f"{unfinished} still pending or running: `fleet wait {wave.id}` first" if unfinished
               else f"{failed} crashed, timed out or were cancelled: `fleet results {wave.id}` shows why")
        raise FleetError(f"wave {wave.id!r} has no finished results to promote ({why})")
    baseline_key = config_key(baseline.config)
    chosen = select_candidates(ranked, top, baseline_key)
    if not chosen:
        raise InputError(f"wave {wave.id!r} has no finished configuration other than the baseline "
                         f"({baseline.source}); nothing to promote")
    by_key: dict[str, list[ExperimentRow]] = {}
    for e in mine:
        by_key.setdefault(e.config_key, []).append(e)
    snapshot = wave.snapshot  # each candidate's own variant, if any, is found by the submission
    runs = plan_validation([by_key[row.config_key][0].config for row in chosen], baseline.config, seeds)
    labels = {baseline_key: BASELINE_DESCRIPTION}
    candidates = []
    for row in chosen:
        first = by_key[row.config_key][0]
        labels[row.config_key] = first.label or first.description or _changes_label(baseline.config, first.config)
        candidates.append({
            "config_key": row.config_key, "config": dict(first.config), "label": labels[row.config_key],
            "description": first.description, "screen_value": row.normalized_mean,
            "screen_experiments": [e.id for e in by_key[row.config_key]],
        })
    planned = []
    for run in runs:
        key = config_key(run.config)
        is_base = key == baseline_key
        description = BASELINE_DESCRIPTION if is_base else next(c["description"] for c in candidates
                                                                  if c["config_key"] == key)
        planned.append(PlannedExperiment(dict(run.config), run.seed, description, key, labels[key]))
    spec = {
        "name": f"{wave.id}-promote", "source_wave": wave.id, "seeds": seeds, "top": top, "sorted_by": sorted_by,
        "baseline": {"config": dict(baseline.config), "config_key": baseline_key, "source": baseline.source,
                     "experiment": baseline.experiment},
        "candidates": candidates,
    }
    return WavePlan(planned, spec, snapshot)


def _changes_label(baseline: Mapping[str, str], config: Mapping[str, str]) -> str:
    changed = changes_vs(baseline, config)
    return " ".join(f"{k}={v}" for k, v in changed.items()) or "(same as baseline)"


def changes_vs(baseline: Mapping[str, str], config: Mapping[str, str]) -> dict[str, str | None]:
    """Knobs where ``config`` differs from ``baseline`` (None: the config leaves it at its default)."""
    return {c.knob: c.stacked_value for c in find_changes(baseline, config)}


# ---- reading a validation wave back -----------------------------------------------------------------


def wave_values(
    experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow], normalized: Mapping[str, float | None]
) -> tuple[dict[str, float | None], Literal["raw", "normalized"], list[str]]:
    """experiment id -> the value to compare (see the module docstring), the metric, the accelerators."""
    done = [e for e in experiments if e.state == ExperimentState.DONE and e.id in results]
    accelerators = sorted({results[e.id].accelerator or "unknown" for e in done})
    if len(accelerators) > 1 and any(normalized.get(e.id) is not None for e in done):
        return {e.id: normalized.get(e.id) for e in done}, "normalized", accelerators
    return {e.id: results[e.id].val_bpb for e in done}, "raw", accelerators


def is_paired(experiments: Iterable[ExperimentRow]) -> bool:
    """Runs pair by seed unless they are replicates (the workload has no SEED knob)."""
    return not any(e.seeding == REPLICATE for e in experiments)


def _test_name(paired: bool) -> str:
    return "one-sided paired t-test over seeds" if paired else "one-sided Welch t-test over replicates (unpaired)"


def _by_seed(experiments: Iterable[ExperimentRow], values: Mapping[str, float | None]) -> dict[int, float | None]:
    """seed -> value for finished runs (None: crashed); unfinished runs are left out."""
    return {e.seed: values.get(e.id) for e in experiments if e.state.finished}


def _num(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def promotion_report(
    wave: WaveRow, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None], alpha: float = DEFAULT_ALPHA,
    floor_multiple: float = DEFAULT_FLOOR_MULTIPLE,
) -> dict[str, Any]:
    """Per candidate of a promote wave: mean ± std, delta, paired p, noise floor, verdict (shape above)."""
    spec = wave.spec
    mine = [e for e in experiments if e.wave_id == wave.id]
    values, metric, accelerators = wave_values(mine, results, normalized)
    by_key: dict[str, list[ExperimentRow]] = {}
    for e in mine:
        by_key.setdefault(e.config_key, []).append(e)
    base_spec = spec["baseline"]
    base_runs = by_key.get(base_spec["config_key"], [])
    base_values = _by_seed(base_runs, values)
    base_stat = mean_std(list(base_values.values()))
    paired = is_paired(mine)
    out = []
    for cand in spec["candidates"]:
        runs = by_key.get(cand["config_key"], [])
        v = verdict(_by_seed(runs, values), base_values, alpha=alpha, floor_multiple=floor_multiple, paired=paired)
        out.append({
            "rank": 0, "label": cand["label"], "config": cand["config"],
            "changes": changes_vs(base_spec["config"], cand["config"]), "config_key": cand["config_key"],
            "experiment": runs[0].id if runs else None, "experiments": [e.id for e in runs],
            "screen_value": cand.get("screen_value"), "n": v.n, "mean": _num(v.mean), "std": _num(v.std),
            "baseline_mean": _num(v.baseline_mean), "baseline_std": _num(v.baseline_std), "delta": _num(v.delta),
            "p_value": _num(v.p_value), "noise_floor": _num(v.noise_floor), "verdict": v.verdict,
            "reason": v.reason, "missing_seeds": list(v.missing_seeds),
        })
    out.sort(key=lambda c: (_VERDICT_ORDER[c["verdict"]], c["delta"] is None, c["delta"] or 0.0, c["config_key"]))
    for i, c in enumerate(out, 1):
        c["rank"] = i
    keeps = [c for c in out if c["verdict"] == "keep"]
    unfinished = sum(e.state in _UNFINISHED for e in mine)
    return {
        "wave": wave.id, "kind": wave.kind, "parent": wave.parent, "tier": wave.tier, "metric": metric,
        "accelerators": accelerators,
        "rule": {"alpha": alpha, "floor_multiple": floor_multiple, "test": _test_name(paired), "paired": paired},
        "complete": unfinished == 0, "unfinished": unfinished,
        "baseline": {"config": base_spec["config"], "config_key": base_spec["config_key"],
                     "source": base_spec["source"], "n": base_stat.n, "mean": _num(base_stat.mean),
                     "std": _num(base_stat.std), "experiments": [e.id for e in base_runs]},
        "candidates": out,
        "best_keep": keeps[0]["experiment"] if keeps else None,
    }


# ---- ablation -----------------------------------------------------------------------------------------


def plan_ablation(stacked: ExperimentRow, baseline: Baseline, seeds: int, snapshot: str | None = None) -> WavePlan:
    """The leave-one-out wave for ``stacked``'s changes vs the baseline, on ``snapshot`` (the code of
    ``stacked``'s wave; default: ``stacked``'s own). A code variant is one of the changes."""
    arms = leave_one_out(baseline.config, stacked.config, seeds)
    planned = [
        PlannedExperiment(dict(arm.config), seed, arm.name, config_key(arm.config), arm.name)
        for seed in arms[0].seeds for arm in arms  # seed-major: pairs finish close together
    ]
    spec = {
        "name": f"{stacked.id}-ablate", "experiment": stacked.id, "seeds": list(arms[0].seeds),
        "baseline": {"config": dict(baseline.config), "source": baseline.source, "experiment": baseline.experiment},
        "changes": [{"knob": c.knob, "baseline_value": c.baseline_value, "stacked_value": c.stacked_value}
                    for c in arms[0].changes],
        "arms": [{"name": a.name, "role": a.role, "config": a.config, "config_key": config_key(a.config),
                  "removed": a.removed} for a in arms],
    }
    return WavePlan(planned, spec, snapshot or stacked.snapshot)


def ablation_report(
    wave: WaveRow, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None], alpha: float = ABLATION_ALPHA,
) -> dict[str, Any]:
    """Each change's contribution ± uncertainty and a keep/drop verdict (shape in the module docstring)."""
    spec = wave.spec
    mine = [e for e in experiments if e.wave_id == wave.id]
    values, metric, accelerators = wave_values(mine, results, normalized)
    changes = tuple(Change(c["knob"], c["baseline_value"], c["stacked_value"]) for c in spec["changes"])
    seeds = tuple(spec["seeds"])
    arms_results, arms_out = [], []
    for a in spec["arms"]:
        arm = AblationArm(a["name"], a["role"], a["config"], seeds, a["removed"], changes)
        per_seed = _by_seed((e for e in mine if e.config_key == a["config_key"]), values)
        arms_results.append((arm, per_seed))
        stat = mean_std(list(per_seed.values()))
        arms_out.append({"name": a["name"], "role": a["role"], "config": a["config"], "config_key": a["config_key"],
                         "removed": a["removed"], "n": stat.n, "mean": _num(stat.mean), "std": _num(stat.std)})
    paired = is_paired(mine)
    found = contributions(arms_results, alpha=alpha, paired=paired)
    rows = [{"knob": c.knob, "baseline_value": c.baseline_value, "stacked_value": c.stacked_value, "n": c.n,
             "contribution": _num(c.contribution), "std": _num(c.std), "ci_low": _num(c.ci_low),
             "ci_high": _num(c.ci_high), "p_value": _num(c.p_value), "verdict": c.verdict, "note": c.note}
            for c in found]
    unfinished = sum(e.state in _UNFINISHED for e in mine)
    return {
        "wave": wave.id, "kind": wave.kind, "parent": wave.parent, "experiment": spec.get("experiment"),
        "tier": wave.tier, "metric": metric, "accelerators": accelerators, "alpha": alpha, "test": _test_name(paired),
        "complete": unfinished == 0, "unfinished": unfinished, "arms": arms_out, "changes": rows,
        "keep": [r["knob"] for r in rows if r["verdict"] == "keep"],
        "drop": [r["knob"] for r in rows if r["verdict"] == "drop"],
    }


__all__ = [
    "Baseline",
    "WavePlan",
    "ablation_report",
    "changes_vs",
    "is_paired",
    "plan_ablation",
    "plan_promotion",
    "promotion_report",
    "rank_screen",
    "resolve_baseline",
    "wave_values",
]
