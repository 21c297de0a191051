"""Reading a validation wave back: its evidence, its verdicts, and the pairs it still needs (pure).

``evaluate_wave`` is what both `fleet verdict` and the controller's hook (`fleet.research.sequential`)
call: ledger rows in, a ``WaveEvaluation`` out. ``promotion_report`` is its JSON form.

**Metric**: raw values when the wave's runs share one accelerator (the usual case: the tier pins
it), pooled with earlier runs of the same code and configuration on that accelerator; else the
hardware-normalized value over the wave's own runs.

JSON shape (``fleet verdict --json``, ``fleet promote --wait --json``, ``fleet recheck --wait --json``)::

    {"wave", "kind": "promote", "parent", "tier", "recheck": bool, "metric": "raw"|"normalized",
     "accelerators": [...], "rule": {"alpha", "min_effect", "design", "max_seeds", "first_look",
     "correction": "holm", "test"}, "complete": bool, "unfinished": int, "undecided": int,
     "baseline": {"config", "config_key", "source", "snapshot", "n", "mean", "std", "experiments"},
     "candidates": [{"rank", "label", "config", "changes", "config_key", "experiment", "experiments",
                     "screen_value", "pairing", "n", "mean", "std", "baseline_mean", "baseline_std",
                     "delta", "gain", "ci_low", "ci_high", "p_value", "sd", "power", "pairs_for_power",
                     "alpha", "decided_at", "verdict", "reason", "missing_seeds", "flagged_seeds",
                     "step_noise": {"used", "variance_removed", "slope", "note"}}],
     "best_keep": experiment id | null}

``verdict`` is ``keep``, ``discard``, ``inconclusive`` or ``need_more`` (more pairs are coming).
``delta`` = candidate − baseline (negative = better); ``gain`` = −delta; ``ci_low``/``ci_high``
bound delta at the last look (``ci_high < 0``: significantly better; ``ci_low > −min_effect``:
significantly less than min_effect). Candidates are sorted keep, need_more, inconclusive, discard,
then by delta.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fleet.core.ledger_rows import ExperimentRow, ResultRow, WaveRow
from fleet.research.evidence import Arm, offset_outside, pairing_of, runs_of, slope_for, wave_accelerators
from fleet.research.plans import UNFINISHED, changes_vs
from fleet.research.promote import PairRequest, closed, more_pairs, rule_from_spec
from fleet.research.stats import mean_std
from fleet.research.verdicts import Comparison, Rule, Run, Verdict, judge

_ORDER = {"keep": 0, "need_more": 1, "inconclusive": 2, "discard": 3}


@dataclass(frozen=True)
class WaveEvaluation:
    rule: Rule
    metric: str
    accelerators: list[str]
    baseline_runs: tuple[Run, ...]
    verdicts: list[Verdict]  # named by candidate config key, in spec order
    requests: list[PairRequest]  # seed pairs to add now (sequential design)
    unfinished: int


def evaluate_wave(
    wave: WaveRow, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None], fleet_slope: float | None = None,
) -> WaveEvaluation:
    """Verdicts of a promote (or recheck) wave from every ledger row (earlier waves are evidence too)."""
    spec = wave.spec
    rule = rule_from_spec(spec)
    mine = [e for e in experiments if e.wave_id == wave.id]
    accelerators = wave_accelerators(mine, results)
    # One accelerator: raw values, pooled with earlier runs there. Several: only the normalized value
    # compares them, over this wave's runs. None finished yet: nothing to judge or pool.
    one = accelerators[0] if len(accelerators) == 1 else None
    metric = "normalized" if len(accelerators) > 1 else "raw"
    pooled = bool(spec.get("pooled", False)) and one is not None
    base = spec["baseline"]
    base_rows = [e for e in mine if e.config_key == base["config_key"]]
    base_arm = Arm(base["config_key"], _code(base, base_rows, wave))
    common = dict(accelerator=one, normalized=normalized, wave=wave.id, pooled=pooled)
    base_runs = runs_of(base_arm, experiments, results, **common)
    slope = slope_for(experiments, results, one, fleet_slope) if one is not None else None
    source = frozenset({spec["source_wave"]} if spec.get("source_wave") else ()) | frozenset(spec.get("source_waves", ()))
    pairing = pairing_of(mine)
    comparisons = []
    for c in spec["candidates"]:
        cand_rows = [e for e in mine if e.config_key == c["config_key"]]
        arm = Arm(c["config_key"], _code(c, cand_rows, wave))
        cand_runs = runs_of(arm, experiments, results, **common, exclude_waves=source)
        comparisons.append(Comparison(c["config_key"], cand_runs, base_runs, pairing, slope,
                                      offset_outside(cand_runs, base_runs), closed(rule, cand_rows, base_rows)))
    verdicts = judge(comparisons, rule)
    done_base = {r.unit for r in base_runs if r.value is not None}
    requests = more_pairs(verdicts, mine, base_arm.config_key, done_base, rule)
    unfinished = sum(e.state in UNFINISHED for e in mine)
    return WaveEvaluation(rule, metric, accelerators, base_runs, verdicts, requests, unfinished)


def _code(arm_spec: Mapping[str, Any], rows: Sequence[ExperimentRow], wave: WaveRow) -> str:
    """The code an arm runs: as its runs recorded it (a variant's, or its own), else the spec's, else the wave's."""
    return rows[0].code if rows else (arm_spec.get("snapshot") or wave.snapshot)


def _num(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def promotion_report(
    wave: WaveRow, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None], fleet_slope: float | None = None,
) -> dict[str, Any]:
    """The verdict report of a promote or recheck wave (shape in the module docstring)."""
    ev = evaluate_wave(wave, experiments, results, normalized, fleet_slope)
    spec, rule = wave.spec, ev.rule
    mine = [e for e in experiments if e.wave_id == wave.id]
    base_spec = spec["baseline"]
    base_stat = mean_std([r.value for r in ev.baseline_runs])
    out = []
    for c, v in zip(spec["candidates"], ev.verdicts):
        runs = [e for e in mine if e.config_key == c["config_key"]]
        out.append({
            "rank": 0, "label": c["label"], "config": c["config"], "changes": changes_vs(base_spec["config"], c["config"]),
            "config_key": c["config_key"], "experiment": runs[0].id if runs else None,
            "experiments": [e.id for e in runs], "screen_value": c.get("screen_value"), "pairing": v.pairing,
            "n": v.n, "mean": _num(v.candidate_mean), "std": _num(v.candidate_sd),
            "baseline_mean": _num(v.baseline_mean), "baseline_std": _num(v.baseline_sd), "delta": _num(v.delta),
            "gain": _num(v.gain), "ci_low": _num(v.low), "ci_high": _num(v.high), "p_value": _num(v.p_value),
            "sd": _num(v.sd), "power": _num(v.power), "pairs_for_power": v.pairs_for_power, "alpha": v.alpha_used,
            "decided_at": v.decided_at, "verdict": v.label, "reason": v.reason, "missing_seeds": list(v.missing),
            "flagged_seeds": list(v.flagged), "step_noise": asdict(v.step),
        })
    out.sort(key=lambda c: (_ORDER[c["verdict"]], c["delta"] is None, c["delta"] or 0.0, c["config_key"]))
    for i, c in enumerate(out, 1):
        c["rank"] = i
    keeps = [c for c in out if c["verdict"] == "keep"]
    undecided = sum(c["verdict"] == "need_more" for c in out)
    return {
        "wave": wave.id, "kind": wave.kind, "parent": wave.parent, "tier": wave.tier,
        "recheck": bool(spec.get("recheck")), "metric": ev.metric, "accelerators": ev.accelerators,
        "rule": {"alpha": rule.alpha, "min_effect": rule.min_effect, "design": rule.design, "max_seeds": rule.max_n,
                 "first_look": rule.first_look, "correction": "holm",
                 "paired": pairing_of(mine) == "seed", "test": _test_name(rule, pairing_of(mine))},
        "complete": ev.unfinished == 0 and undecided == 0, "unfinished": ev.unfinished, "undecided": undecided,
        "baseline": {"config": base_spec["config"], "config_key": base_spec["config_key"],
                     "source": base_spec["source"], "snapshot": _code(base_spec, [e for e in mine if e.config_key ==
                                                                                     base_spec["config_key"]], wave),
                     "n": base_stat.n, "mean": _num(base_stat.mean), "std": _num(base_stat.std),
                     "experiments": [e.id for e in mine if e.config_key == base_spec["config_key"]]},
        "candidates": out,
        "best_keep": keeps[0]["experiment"] if keeps else None,
    }


def most_promising_inconclusive(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inconclusive candidate most worth more pairs: the largest estimated gain (ties: the fewest
    pairs needed for 80% power), or None."""
    stuck = [c for c in report["candidates"] if c["verdict"] == "inconclusive" and c["gain"] is not None
             and c["gain"] > 0]
    if not stuck:
        return None
    return min(stuck, key=lambda c: (-c["gain"], c["pairs_for_power"] or 10**9, c["config_key"]))


def _test_name(rule: Rule, pairing: str) -> str:
    test = "paired t on seed pairs" if pairing == "seed" else "Welch t on replicates (unpaired: no SEED knob)"
    if rule.design == "sequential":
        return f"{test}, group-sequential (Lan-DeMets O'Brien-Fleming) looks after every pair"
    return f"{test}, one look"


def is_validation(wave: WaveRow) -> bool:
    return wave.kind == "promote" and "baseline" in wave.spec and "candidates" in wave.spec

