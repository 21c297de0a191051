"""The evidence a verdict rests on, read off ledger rows (pure).

**Pooled across waves.** Runs of the same code (``ExperimentRow.code``: the snapshot before any knob
value is written into it) and configuration on the same accelerator are one experiment repeated, whichever wave ran them: a promote wave's baseline seed 0 and a later
wave's baseline seed 0 are the same run twice. A verdict takes every such run; where a seed ran
twice, the first to finish counts (a repeat is not a second seed).

**The metric.** Values are "lower is better" from here up: ``metric_value`` is the one place that
reads a result's metric.

**Step noise.** The steps→metric slope for step-noise correction (``slope_for``) and the typical
step difference of two configurations measured on runs outside the judged pairs (``offset_outside``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fleet.core.ledger_rows import REPLICATE, ExperimentRow, ResultRow
from fleet.research.step_noise import StepOffset, StepRun, choose_slope, outside_offset
from fleet.research.verdicts import Run
from fleet.types import ExperimentState


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a configuration on a code (a snapshot id, before knob values)."""

    config_key: str
    code: str


def metric_value(result: ResultRow | None) -> float | None:
    """The value verdicts compare; None for a run without one. Results reach the research layer with
    a higher-is-better metric already negated (`normalize_view.research_results`), so lower is better."""
    if result is None or result.val_bpb is None or not math.isfinite(result.val_bpb):
        return None
    return float(result.val_bpb)


def pairing_of(experiments: Iterable[ExperimentRow]) -> str:
    """"seed": runs pair by seed; "unpaired" when they are replicates (the workload has no SEED knob)."""
    return "unpaired" if any(e.seeding == REPLICATE for e in experiments) else "seed"


def budget_of(exp: ExperimentRow) -> str:
    return str(exp.config.get("TIME_BUDGET", ""))


def wave_accelerators(experiments: Iterable[ExperimentRow], results: Mapping[str, ResultRow]) -> list[str]:
    return sorted({results[e.id].accelerator or "unknown" for e in experiments
                   if e.state == ExperimentState.DONE and e.id in results})


def runs_of(
    arm: Arm, experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow], *, accelerator: str | None,
    normalized: Mapping[str, float | None] | None = None, wave: str | None = None, pooled: bool = True,
    exclude_waves: frozenset[str] = frozenset(),
) -> tuple[Run, ...]:
    """Seed -> run of ``arm``: finished runs on ``accelerator`` (raw values), from every wave when
    ``pooled``, else only from ``wave``. With ``accelerator`` None the values are ``normalized``
    (runs on several kinds of hardware, which only the normalized value makes comparable).

    Crashed runs of ``wave`` appear with value None (so a verdict can say which seeds are missing).
    ``exclude_waves``: waves whose runs must not count, e.g. the screen a candidate was chosen from
    (its lucky seed made it the candidate; counting it again would carry the winner's curse).
    """
    chosen: dict[int, Run] = {}
    for e in experiments:
        if e.config_key != arm.config_key or e.code != arm.code:
            continue
        if (not pooled and e.wave_id != wave) or e.wave_id in exclude_waves:
            continue
        res = results.get(e.id)
        if e.state == ExperimentState.DONE and res is not None:
            if accelerator is not None and (res.accelerator or "unknown") != accelerator:
                continue
            value = metric_value(res) if accelerator is not None else (normalized or {}).get(e.id)
            run = Run(e.seed, value, res.num_steps, e.finished_at or res.recorded_at)
        elif e.state.finished and e.state != ExperimentState.CANCELLED and e.wave_id == wave:
            run = Run(e.seed, None, None, e.finished_at or 0.0)
        else:
            continue
        kept = chosen.get(e.seed)
        if kept is None or (kept.value is None and run.value is not None) or (
                run.value is not None and run.order < kept.order):
            chosen[e.seed] = run
    return tuple(sorted(chosen.values(), key=lambda r: r.unit))


def step_runs(experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
              accelerator: str | None = None) -> list[StepRun]:
    """Every finished run with steps, grouped by what should take the same steps: code, configuration,
    accelerator and budget."""
    out = []
    for e in experiments:
        res = results.get(e.id)
        value = metric_value(res)
        if e.state != ExperimentState.DONE or value is None or res is None:
            continue
        acc = res.accelerator or "unknown"
        if accelerator is not None and acc != accelerator:
            continue
        out.append(StepRun(f"{e.code}/{e.config_key}/{acc}/{budget_of(e)}", value, res.num_steps))
    return out


def slope_for(experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow], accelerator: str,
              fleet_slope: float | None) -> float | None:
    """The steps→metric slope on this accelerator (its jitter's own, else the fleet's), or None."""
    return choose_slope(step_runs(experiments, results, accelerator), fleet_slope).slope


def offset_outside(cand: Sequence[Run], base: Sequence[Run]) -> StepOffset | None:
    """The typical ln-steps difference from runs that are not in a judged pair (seeds only one side
    finished), or None when each side has fewer than two."""
    paired = {r.unit for r in cand if r.value is not None} & {r.unit for r in base if r.value is not None}

    def outside(runs: Sequence[Run]) -> list[float]:
        return [math.log(r.steps) for r in runs if r.unit not in paired and r.value is not None and r.steps]

    return outside_offset(outside(cand), outside(base))
