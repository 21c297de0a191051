"""Adaptive search waves, the decisions: spaces, how many configurations to ask for, what a trial scored.

A search wave has `trials` configurations to try, each run `seeds` times. The wave is recorded whole
when it is submitted, its trials as `planned` runs; while it runs, the scheduler gives it slots like
any wave's work (`unasked_trials` is how many it can still fill), the study is asked for a
configuration for each, and it is told each trial's score once all its runs have finished
(`trial_outcome`).

Everything here is pure: Optuna's distributions are plain values (imported only when needed), and the study's I/O lives in
`fleet.research.study`; the controller-side glue in `fleet.research.search_hook`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fleet.core.expand import config_key, env_value
from fleet.core.knobs import KnobInfo, KnobListing, canonical_config
from fleet.core.wave_spec import KnobValue, SearchDim, SearchSpec
from fleet.types import ExperimentState

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

SIGNIFICANT_DIGITS = 4  # a sampled float runs as 0.03457, not 0.034571893215: readable labels, same science
NUMERIC_TYPES = {"float": "float", "int": "int"}


# ---- the space ----------------------------------------------------------------------------------------------


def dim_kind(name: str, dim: SearchDim, knob: KnobInfo | None, where: str) -> tuple[str, str | None]:
    """("float" | "int" | "choice", problem or None): how a knob is sampled, from its type in the workload.

    A range over an int knob samples integers, over a float knob floats (`{low: 0, high: 1}` on a float
    knob is 0..1, not {0, 1}); a range over a knob that is neither is refused (give `choices`).
    """
    if dim.choices is not None:
        return "choice", None
    kind = NUMERIC_TYPES.get(knob.type) if knob is not None else ("int" if _ints(dim) else "float")
    if kind is None:
        return "float", (f"`{where}`: {name} is a {knob.type} knob, so it has no range; "
                         f"give its values as `choices` (e.g. `{name}: {{choices: [...]}}`)")
    if kind == "int":
        if not _ints(dim):
            return kind, (f"`{where}` = {{low: {dim.low}, high: {dim.high}}}: {name} is an int knob; "
                          "give whole-number bounds")
        if dim.log and dim.low < 1:
            return kind, f"`{where}`: a log range over the int knob {name} needs `low` >= 1"
    return kind, None


def _ints(dim: SearchDim) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())
               for v in (dim.low, dim.high))


def distributions(space: Mapping[str, SearchDim]) -> dict[str, BaseDistribution]:
    """The space as Optuna distributions (each dimension's `kind` already resolved on submit)."""
    # Imported here: every `fleet` command imports this module, and Optuna takes a moment to load.
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, BaseDistribution] = {}
    for name, dim in space.items():
        if dim.choices is not None:
            out[name] = CategoricalDistribution(list(dim.choices))
        elif dim.kind == "int":
            out[name] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[name] = FloatDistribution(float(dim.low), float(dim.high), log=dim.log)
    return out


def space_from_json(data: Mapping[str, Any]) -> dict[str, SearchDim]:
    """The space as the ledger keeps it (`SearchSpec.to_json`) -> plain records."""
    return {name: SearchDim(low=d.get("low"), high=d.get("high"), log=bool(d.get("log")),
                            choices=tuple(d["choices"]) if "choices" in d else None, kind=d.get("kind", ""))
            for name, d in data.items()}


def spec_from_json(data: Mapping[str, Any]) -> SearchSpec:
    return SearchSpec(int(data["trials"]), space_from_json(data["space"]), data.get("sampler", "tpe"),
                      int(data.get("seed", 0)), data.get("startup_trials"))


def probe_values(space: Mapping[str, SearchDim]) -> list[tuple[str, str, KnobValue]]:
    """(knob, field path, value) for every bound and choice: what the workload's knob check must accept."""
    out: list[tuple[str, str, KnobValue]] = []
    for name, dim in space.items():
        if dim.choices is not None:
            out += [(name, f"search.space.{name}.choices[{i}]", v) for i, v in enumerate(dim.choices)]
        else:
            out += [(name, f"search.space.{name}.low", dim.low), (name, f"search.space.{name}.high", dim.high)]
    return out


# ---- a trial's configuration --------------------------------------------------------------------------------


def rounded(value: Any) -> Any:
    """A sampled float to SIGNIFICANT_DIGITS; other values as they are."""
    if isinstance(value, float) and value != 0 and math.isfinite(value):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def trial_config(params: Mapping[str, Any], env: Mapping[str, KnobValue]) -> dict[str, str]:
    """The configuration a trial runs: the wave's env, then the sampled knobs on top."""
    config = {k: env_value(v) for k, v in env.items()}
    config.update({k: env_value(rounded(v)) for k, v in params.items()})
    return config


def trial_label(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={env_value(rounded(v))}" for k, v in params.items())


def trial_key(params: Mapping[str, Any], env: Mapping[str, KnobValue], listing: KnobListing) -> str:
    """The trial's configuration key with defaults filled in, as every other wave's experiments are keyed
    (`fleet.core.knobs.canonicalize`): `fleet promote` and its verdict find the trial's runs by it, so
    `TIME_BUDGET: 8` (spelled "8.0" once canonical) must key alike here and there."""
    return config_key(canonical_config(trial_config(params, env), listing))


def default_startup_trials(trials: int) -> int:
    """Random configurations before the model takes over: Optuna's 10, fewer for small budgets (a
    24-trial search spends 6, a 12-trial one 3), never below 2 (the model needs two points to split)."""
    return min(10, max(2, trials // 4))


def sampler_seed(seed: int, asked: int) -> int:
    """The sampler's seed for a cycle that starts with `asked` trials in the study.

    The sampler is made afresh each cycle from the study alone, so a restarted controller asks exactly
    what the old one would have; the seed moves on with the study so no two cycles draw alike.
    """
    return (seed * 1_000_003 + asked) % 2**32


# ---- what is left to ask -----------------------------------------------------------------------------------


def unasked_trials(trials: Mapping[int, Sequence[ExperimentState]], asked: int) -> list[int]:
    """The trial numbers still to ask for: planned, and beyond the `asked` trials the study already has
    (the study numbers its trials 0, 1, 2, ... in the order they are asked). A trial whose planned runs
    were cancelled is not asked for."""
    return sorted(n for n, states in trials.items() if n >= asked and ExperimentState.PLANNED in states)


# ---- what a trial scored ------------------------------------------------------------------------------------

TrialState = Literal["running", "complete", "pruned", "fail"]


@dataclass(frozen=True)
class RunOutcome:
    """One run of a trial: its state and its (comparable) metric value."""

    state: ExperimentState
    value: float | None = None


@dataclass(frozen=True)
class TrialOutcome:
    state: TrialState
    value: float | None = None
    note: str = ""


def trial_outcome(runs: Sequence[RunOutcome]) -> TrialOutcome:
    """A trial is scored once every run has finished: the mean over its finished runs.

    No finished value but a pruned run: `pruned` (early stopping judged it behind). No value at all
    (crashes, timeouts, cancellations, a configuration the workload refused): `fail`.
    """
    if not runs or any(not r.state.finished for r in runs):
        return TrialOutcome("running")
    values = [r.value for r in runs if r.state == ExperimentState.DONE and r.value is not None
              and math.isfinite(r.value)]
    if values:
        return TrialOutcome("complete", sum(values) / len(values), f"mean of {len(values)} of {len(runs)} runs")
    if any(r.state == ExperimentState.PRUNED for r in runs):
        return TrialOutcome("pruned", note="stopped early")
    return TrialOutcome("fail", note="no run finished with a value")


__all__ = [
    "RunOutcome", "TrialOutcome", "default_startup_trials", "dim_kind", "distributions", "probe_values", "rounded",
    "sampler_seed", "space_from_json", "spec_from_json", "trial_config", "trial_key", "trial_label", "trial_outcome",
    "unasked_trials",
]
