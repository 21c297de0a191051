"""Hardware-normalized values for the experiments in the ledger (the I/O side of normalize.py)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ExperimentRow, ResultRow
from fleet.research.normalize import (
    Calibration,
    RunRecord,
    SlopeEstimate,
    calibrate,
    estimate_slope,
    normalize,
)
from fleet.research.step_noise import SlopeFit, StepRun, choose_slope, correct
from fleet.types import ExperimentState


@dataclass(frozen=True)
class NormView:
    values: dict[str, float | None]  # experiment id -> normalized val_bpb (None: unknown speed)
    calibration: Calibration | None
    slope: SlopeEstimate | None
    summary: str  # one line for people: the factors and what they rest on


def run_record(exp: ExperimentRow, res: ResultRow) -> RunRecord:
    """What normalization needs of one finished experiment (an unnamed device is "unknown")."""
    return RunRecord(exp.id, exp.config_key, res.accelerator or "unknown", exp.seed, res.val_bpb,
                     res.num_steps, res.training_seconds)


def research_results(results: Mapping[str, ResultRow], higher_is_better: bool = False) -> dict[str, ResultRow]:
    """Results as the research layer reads them: lower is better, always.

    The one place a higher-is-better metric (fleet.yaml `metric.direction: maximize`, e.g. accuracy)
    is negated, so that every rule above (ranking, normalization, verdicts, ablation) keeps "lower
    wins" and never sees a direction.
    """
    if not higher_is_better:
        return dict(results)
    return {key: replace(r, val_bpb=None if r.val_bpb is None else -r.val_bpb) for key, r in results.items()}


def run_records(ledger: Ledger, higher_is_better: bool = False) -> list[RunRecord]:
    results = research_results(ledger.results(), higher_is_better)
    return [run_record(exp, results[exp.id])
            for exp in ledger.experiments(states=[ExperimentState.DONE]) if exp.id in results]


def normalized_for(ledger: Ledger, reference: str, higher_is_better: bool = False) -> NormView:
    """Normalized values, lower is better (negated for a higher-is-better metric, as `research_results`)."""
    records = run_records(ledger, higher_is_better)
    accelerators = {r.accelerator for r in records}
    if accelerators == {reference}:
        return NormView({r.experiment_id: r.val_bpb for r in records}, None, None, "")
    if len(accelerators) <= 1:
        # One kind of hardware that is not the reference (a CPU-only local fleet): nothing to
        # normalize across, and no honest way to say what it would score on the reference.
        return NormView({}, None, None, "")
    calibration = calibrate(records, reference=reference)
    slope = estimate_slope(records)
    values = {n.record.experiment_id: n.normalized for n in normalize(records, calibration, slope)}
    parts = []
    for f in calibration.factors:
        if f.accelerator == reference:
            continue
        shown = f"{f.factor:.3f}x" if f.factor is not None else "unknown"
        parts.append(f"{f.accelerator}={shown} ({f.method}, {f.n_pairs} pairs)")
    summary = (f"speed vs {reference}: " + ", ".join(parts) +
               f"; slope {slope.slope:.3f} bpb per e-fold of steps ({slope.method}, {slope.n_pairs} pairs)")
    return NormView(values, calibration, slope, summary)


@dataclass(frozen=True)
class StepView:
    values: dict[str, float]  # experiment id -> value at its configuration's typical step count (lower is better)
    slope: SlopeFit
    variance_removed: float | None  # share of the variance of repeated configurations it removed
    summary: str  # one line for people: the slope, where it comes from, what it removed


def corrected_for(ledger: Ledger, higher_is_better: bool = False, fleet_slope: float | None = None,
                  replicated_only: bool = False) -> StepView:
    """Each finished run's value corrected for step noise within its accelerator (`step_noise`), lower is better.

    With `replicated_only`, only the runs that share their group with another are read (picked in
    SQL): the same fit, summary and corrected values, and the value of every other finished run is
    its own (absent from `values`), so a view of a few rows does not read the whole ledger.
    """
    ids, runs = [], []
    if replicated_only:
        sign = -1.0 if higher_is_better else 1.0
        for experiment_id, group, value, steps in ledger.replicated_runs():
            ids.append(experiment_id)
            runs.append(StepRun(group, sign * value, steps))
    else:
        experiments = ledger.experiments(states=[ExperimentState.DONE])
        results = research_results(ledger.results(), higher_is_better)
        for e in experiments:
            res = results.get(e.id)
            if res is None or res.val_bpb is None or not math.isfinite(res.val_bpb):
                continue
            group = f"{e.code}/{e.config_key}/{res.accelerator or 'unknown'}/{e.config.get('TIME_BUDGET', '')}"
            ids.append(e.id)
            runs.append(StepRun(group, res.val_bpb, res.num_steps))
    fit = choose_slope(runs, fleet_slope)
    corrected = correct(runs, fit)
    values = {ids[i]: v for i, v in corrected.values.items()}
    removed = corrected.variance_removed
    if fit.slope is None:
        summary = ""
    else:
        summary = f"step noise: slope {fit.slope:.3f} per e-fold of steps ({fit.method})"
        if removed is not None:
            summary += f"; correcting it removed {100 * removed:.0f}% of the variance of repeated configurations"
    return StepView(values, fit, removed, summary)


def comparable_values(ledger: Ledger, reference: str, higher_is_better: bool = False) -> dict[str, float | None]:
    """Each finished run's value as runs are compared (a search's tells, the efficiency frontier): normalized
    across hardware when the fleet is mixed, raw otherwise (a run with no normalized value keeps its raw
    one); lower is better either way, as `research_results`."""
    raw = {k: r.val_bpb for k, r in research_results(ledger.results(), higher_is_better).items()}
    norm = normalized_for(ledger, reference, higher_is_better).values
    return {k: norm[k] if norm.get(k) is not None else v for k, v in raw.items()}
