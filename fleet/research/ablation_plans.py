"""Ablation waves over the ledger: what to queue, and each change's contribution (pure).

The statistics are in `fleet.research.ablate`; this module connects them to ledger rows. The CLI
reads the ledger, asks the workload which arms it accepts (an arm that resets one of two knobs that
must change together is rejected: it is skipped with a note, never failing the whole ablation),
submits, and prints.

JSON shape (``fleet ablation --json``, ``fleet verdict`` on an ablate wave, ``fleet ablate --wait --json``)::

    {"wave", "kind": "ablate", "parent", "experiment", "tier", "metric", "accelerators", "alpha",
     "rule": {"alpha", "min_effect", "design": "fixed", "max_seeds", "correction": "holm", "test"},
     "complete", "unfinished", "baseline": {"config", "source", "experiment", "snapshot", "commit"},
     "arms": [{"name", "role", "config", "config_key", "removed", "snapshot", "n", "mean", "std"}],
     "changes": [{"knob", "knobs", "baseline_value", "stacked_value", "n", "contribution", "sd", "ci_low",
                  "ci_high", "p_value", "power", "verdict": "keep"|"drop"|"inconclusive", "note"}],
     "skipped": [{"arm", "knobs", "reason"}], "notes": [...], "keep": [...], "drop": [...], "inconclusive": [...]}

``knob`` is the change's knob, or a group's knobs joined by ``+``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleet.core.expand import PlannedExperiment
from fleet.core.ledger_rows import ExperimentRow, ResultRow, WaveRow
from fleet.research.ablate import AblationArm, Change, contributions
from fleet.research.evidence import metric_value, pairing_of, wave_accelerators
from fleet.research.plans import UNFINISHED, Baseline, WavePlan
from fleet.research.promote import rule_from_spec, rule_spec
from fleet.research.stats import mean_std
from fleet.research.verdicts import Rule
from fleet.types import ExperimentState

ArmKey = Callable[[Mapping[str, str], str], str]  # (config, snapshot) -> key with defaults filled in


def plan_ablation(
    stacked: ExperimentRow, baseline: Baseline, arms: Sequence[AblationArm], rule: Rule, key: ArmKey, code: str,
    skipped: Sequence[Mapping[str, Any]] = (), notes: Sequence[str] = (), commit: str | None = None,
) -> WavePlan:
    """The leave-one-out wave on ``code`` (the stacked experiment's wave's; a variant's where the
    configuration names one), the baseline arm on its own code when it has one (a commit), seed-major."""

    def own_code(arm: AblationArm) -> str | None:
        return baseline.snapshot if arm.role == "baseline" else None

    keys = {arm.name: key(arm.config, own_code(arm) or code) for arm in arms}
    planned = [
        PlannedExperiment(dict(arm.config), seed, arm.name, keys[arm.name], arm.name, {}, own_code(arm))
        for seed in arms[0].seeds for arm in arms  # seed-major: pairs finish close together
    ]
    spec = {
        "name": f"{stacked.id}-ablate", "experiment": stacked.id, "seeds": list(arms[0].seeds),
        "rule": rule_spec(rule),
        "baseline": {"config": dict(baseline.config), "source": baseline.source, "experiment": baseline.experiment,
                     "snapshot": baseline.snapshot or code, "commit": commit},
        "changes": [{"knob": c.knob, "baseline_value": c.baseline_value, "stacked_value": c.stacked_value}
                    for c in arms[0].changes],
        "arms": [{"name": a.name, "role": a.role, "config": a.config, "config_key": keys[a.name],
                  "removed": list(a.removed)} for a in arms],
        "skipped": [dict(s) for s in skipped], "notes": list(notes),
    }
    return WavePlan(planned, spec, code)


def _num(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def ablation_report(
    wave: WaveRow, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None],
) -> dict[str, Any]:
    """Each change's contribution ± uncertainty and a keep / drop / inconclusive verdict (shape above)."""
    spec = wave.spec
    rule = rule_from_spec(spec)
    mine = [e for e in experiments if e.wave_id == wave.id]
    accelerators = wave_accelerators(mine, results)
    metric = "normalized" if len(accelerators) > 1 else "raw"
    changes = tuple(Change(c["knob"], c["baseline_value"], c["stacked_value"]) for c in spec["changes"])
    by_knob = {c.knob: c for c in changes}
    seeds = tuple(spec["seeds"])
    arms_results, arms_out = [], []
    for a in spec["arms"]:
        removed = tuple(a["removed"] if isinstance(a["removed"], list) else [a["removed"]] if a["removed"] else [])
        arm = AblationArm(a["name"], a["role"], a["config"], seeds, removed, changes)
        per_seed = {}
        runs = [e for e in mine if e.config_key == a["config_key"] and e.description == a["name"]]
        for e in runs:
            if e.state.finished:
                res = results.get(e.id)
                per_seed[e.seed] = (normalized.get(e.id) if metric == "normalized" else metric_value(res)) \
                    if e.state == ExperimentState.DONE else None
        arms_results.append((arm, per_seed))
        stat = mean_std(list(per_seed.values()))
        arms_out.append({"name": a["name"], "role": a["role"], "config": a["config"], "config_key": a["config_key"],
                         "removed": list(removed), "snapshot": runs[0].code if runs else None, "n": stat.n,
                         "mean": _num(stat.mean), "std": _num(stat.std)})
    pairing = pairing_of(mine)
    found = contributions(arms_results, rule, pairing)
    rows = []
    for c in found:
        single = by_knob.get(c.knobs[0]) if len(c.knobs) == 1 else None
        rows.append({"knob": "+".join(c.knobs), "knobs": list(c.knobs),
                     "baseline_value": single.baseline_value if single else None,
                     "stacked_value": single.stacked_value if single else None, "n": c.n,
                     "contribution": _num(c.contribution), "sd": _num(c.sd), "ci_low": _num(c.ci_low),
                     "ci_high": _num(c.ci_high), "p_value": _num(c.p_value), "power": _num(c.power),
                     "verdict": c.verdict, "note": c.note})
    unfinished = sum(e.state in UNFINISHED for e in mine)
    return {
        "wave": wave.id, "kind": wave.kind, "parent": wave.parent, "experiment": spec.get("experiment"),
        "tier": wave.tier, "metric": metric, "accelerators": accelerators, "alpha": rule.alpha,
        "rule": {"alpha": rule.alpha, "min_effect": rule.min_effect, "design": "fixed", "max_seeds": rule.max_n,
                 "correction": "holm", "paired": pairing == "seed",
                 "test": ("paired t on seed pairs" if pairing == "seed" else "Welch t on replicates (unpaired: no SEED "
                          "knob)") + "; drop = upper bound below min_effect"},
        "complete": unfinished == 0, "unfinished": unfinished, "baseline": spec.get("baseline", {}),
        "arms": arms_out, "changes": rows, "skipped": spec.get("skipped", []), "notes": spec.get("notes", []),
        "keep": [r["knob"] for r in rows if r["verdict"] == "keep"],
        "drop": [r["knob"] for r in rows if r["verdict"] == "drop"],
        "inconclusive": [r["knob"] for r in rows if r["verdict"] == "inconclusive"],
    }
