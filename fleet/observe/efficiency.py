"""What the GPU time bought: the frontier of best results against GPU-hours spent, the cost of each 0.001
of improvement, and the share of GPU time that went to work that taught nothing (pure arithmetic).

- **Frontier.** Finished runs in the order they finished; the GPU-hours (and dollars) spent by then,
  counting every finished run (crashed and pruned ones too); a point each time a run beats the best so
  far. The last point is "GPU-hours to reach the best".
- **Cost of improvement.** GPU-hours (and $) spent until the best result, per 0.001 by which it beats
  the first finished result. With no improvement yet, none.
- **Waste.** Shares of all GPU time that went to runs that were *pruned* (stopped early), *crashed*
  (crash or timeout), or *duplicate*: a run of a configuration, seed and code that had already
  finished with a result (it repeats a measurement the ledger has; replicates of a workload without
  a SEED knob are not duplicates, each is a new sample).

Values are lower-is-better (`normalize_view.comparable_values`: hardware-normalized on a mixed fleet);
`sign` turns them back into the metric's own direction for display.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.core.ledger_rows import REPLICATE, ExperimentRow, ResultRow
from fleet.types import ExperimentState

IMPROVEMENT_UNIT = 0.001  # "per 0.001 bpb": the size of a step a researcher cares about
WASTE_STATES = {"pruned": (ExperimentState.PRUNED,), "crashed": (ExperimentState.CRASH, ExperimentState.TIMEOUT)}


@dataclass(frozen=True)
class Run:
    """One finished experiment as the accounting reads it."""

    experiment: str
    finished_at: float
    state: ExperimentState
    value: float | None  # lower is better; None without a result
    gpu_seconds: float
    accelerator: str | None
    repeat_of: tuple | None = None  # (code, configuration, seed): same key, same measurement; None: a replicate
    label: str = ""


@dataclass(frozen=True)
class FrontierPoint:
    experiment: str
    label: str
    value: float  # in the metric's own direction
    gpu_hours: float  # spent by the time it finished, every finished run counted
    dollars: float


@dataclass(frozen=True)
class Efficiency:
    frontier: tuple[FrontierPoint, ...]
    gpu_hours: float  # all finished runs
    dollars: float
    improvement: float | None  # first finished result -> best (positive = better)
    gpu_hours_per_unit: float | None  # GPU-hours to the best per IMPROVEMENT_UNIT of improvement
    dollars_per_unit: float | None
    waste: dict[str, float] = field(default_factory=dict)  # pruned / crashed / duplicate: share of GPU time
    waste_gpu_hours: dict[str, float] = field(default_factory=dict)

    def compact(self) -> dict:
        """The few numbers `fleet status --json` carries."""
        best = self.frontier[-1] if self.frontier else None
        return {"gpu_hours": round(self.gpu_hours, 4), "best": None if best is None else best.value,
                "best_experiment": None if best is None else best.experiment,
                "gpu_hours_to_best": None if best is None else round(best.gpu_hours, 4),
                "gpu_hours_per_0.001": _round(self.gpu_hours_per_unit), "dollars_per_0.001": _round(self.dollars_per_unit),
                "waste": {k: round(v, 4) for k, v in self.waste.items()}}

    def as_dict(self) -> dict:
        return asdict(self)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def runs_from(experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
              values: Mapping[str, float | None]) -> list[Run]:
    """The finished experiments that used GPU time (cancelled ones never record it), as `Run`s."""
    out = []
    for exp in experiments:
        res = results.get(exp.id)
        if not exp.state.finished or exp.state == ExperimentState.CANCELLED or res is None:
            continue
        key = None if exp.seeding == REPLICATE else (exp.code, exp.config_key, exp.seed)
        value = values.get(exp.id) if exp.state == ExperimentState.DONE else None
        out.append(Run(exp.id, exp.finished_at or res.recorded_at, exp.state, value, max(0.0, res.gpu_seconds or 0.0),
                       res.accelerator, key, exp.label or exp.description))
    return out


def runs_from_rows(rows: Sequence[Mapping[str, Any]], values: Mapping[str, float | None]) -> list[Run]:
    """`runs_from` over the ledger's lean rows (`Ledger.finished_runs`): the same runs, no records decoded."""
    out = []
    for row in rows:
        state = ExperimentState(row["state"])
        key = None if row["seeding"] == REPLICATE else (row["code"], row["config_key"], row["seed"])
        value = values.get(row["experiment"]) if state == ExperimentState.DONE else None
        out.append(Run(row["experiment"], row["finished_at"], state, value, max(0.0, row["gpu_seconds"] or 0.0),
                       row["accelerator"], key, row["label"] or ""))
    return out


def efficiency(runs: Sequence[Run], prices: Mapping[str, float], sign: float = 1.0) -> Efficiency:
    """The frontier, the cost of improvement and the waste of `runs` (see the module docstring)."""
    ordered = sorted(runs, key=lambda r: (r.finished_at, r.experiment))
    hours = dollars = 0.0
    best: float | None = None
    first: float | None = None
    frontier: list[FrontierPoint] = []
    measured: set[tuple] = set()
    wasted = {"pruned": 0.0, "crashed": 0.0, "duplicate": 0.0}
    for run in ordered:
        h = run.gpu_seconds / 3600
        hours += h
        dollars += h * prices.get(run.accelerator or "", 0.0)
        kind = next((k for k, states in WASTE_STATES.items() if run.state in states), None)
        if kind is None and run.repeat_of is not None and run.repeat_of in measured:
            kind = "duplicate"
        if kind is not None:
            wasted[kind] += h
        if run.state == ExperimentState.DONE and run.value is not None:
            if run.repeat_of is not None:
                measured.add(run.repeat_of)
            first = run.value if first is None else first
            if best is None or run.value < best:
                best = run.value
                frontier.append(FrontierPoint(run.experiment, run.label, sign * run.value, hours, dollars))
    improvement = (first - best) if first is not None and best is not None else None
    per_unit = per_dollar = None
    if improvement is not None and improvement > 0:
        steps = improvement / IMPROVEMENT_UNIT
        per_unit, per_dollar = frontier[-1].gpu_hours / steps, frontier[-1].dollars / steps
    share = {k: (v / hours if hours > 0 else 0.0) for k, v in wasted.items()}
    return Efficiency(tuple(frontier), hours, dollars, improvement, per_unit, per_dollar, share, wasted)


def describe(eff: Efficiency) -> str:
    """One line for people (status, dashboard)."""
    if not eff.frontier:
        return f"{eff.gpu_hours:.2f} GPU-hours, no result yet"
    best = eff.frontier[-1]
    parts = [f"best {best.value:.4f} after {best.gpu_hours:.2f} of {eff.gpu_hours:.2f} GPU-hours"]
    if eff.gpu_hours_per_unit is not None:
        parts.append(f"{eff.gpu_hours_per_unit:.3f} GPU-h (${eff.dollars_per_unit:.2f}) per {IMPROVEMENT_UNIT:g} "
                     "of improvement")
    parts.append("GPU time to " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in eff.waste.items()))
    return " · ".join(parts)


__all__ = ["IMPROVEMENT_UNIT", "Efficiency", "FrontierPoint", "Run", "describe", "efficiency", "runs_from"]
