"""A validated wave as plain records: what `fleet.core.wave` produces and `fleet.core.expand` consumes.

Kept apart from both so that the file validator and the pure expansion depend on it, not on each other.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

Scalar = Union[bool, int, float, str]
KnobValue = Union[Scalar, list]  # a list (of scalars) is the value of a tuple or list knob
VARIANT_KEYS = ("code", "patch")  # a configuration's code variant, beside its (UPPER_CASE) knobs


@dataclass(frozen=True)
class ExplicitExperiment:
    overrides: dict[str, KnobValue]
    description: str = ""
    code: str | None = None  # a git ref whose workload this configuration runs
    patch: str | None = None  # a diff file applied to the wave's code

    @property
    def variant(self) -> tuple[str, str] | None:
        """("code", ref) or ("patch", file), or None for the wave's own code."""
        if self.code is not None:
            return ("code", self.code)
        if self.patch is not None:
            return ("patch", self.patch)
        return None


@dataclass(frozen=True)
class SearchDim:
    """One knob of a search space: a range (`low`..`high`, optionally on a log scale) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[KnobValue, ...] | None = None
    kind: str = ""  # "float" | "int" | "choice", from the knob's type in the workload (set on submit)

    def to_json(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices), "kind": self.kind or "choice"}
        return {"low": self.low, "high": self.high, "log": self.log, **({"kind": self.kind} if self.kind else {})}


@dataclass(frozen=True)
class SearchSpec:
    """A wave's `search:` block: how many configurations to try, chosen by which sampler, over which space."""

    trials: int
    space: dict[str, SearchDim]
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int | None = None  # random configurations before the sampler models (None: from `trials`)

    def to_json(self) -> dict[str, Any]:
        return {"trials": self.trials, "sampler": self.sampler, "seed": self.seed,
                "startup_trials": self.startup_trials, "space": {k: d.to_json() for k, d in self.space.items()}}


@dataclass(frozen=True)
class EarlyStop:
    """`early_stop:`: compare each run's training loss at these fractions of its budget with the wave's
    baseline (or median) run at the same fractions; stop it when worse by more than `margin`."""

    at: tuple[float, ...]
    margin: float
    warmdown_default: float | None = None  # the workload's WARMDOWN_RATIO default (set on submit); None: no warmdown

    def to_json(self) -> dict[str, Any]:
        return {"at": list(self.at), "margin": self.margin, "warmdown_default": self.warmdown_default}


@dataclass(frozen=True)
class WaveSpec:
    """A validated wave, as plain data."""

    name: str
    tier: str = "screen"
    seeds: int | None = None  # None: the tier's seeds
    description: str = ""
    max_gpu_hours: float | None = None
    priority: int | None = None  # None: the tier's priority (validation tiers go first)
    track: str | None = None  # None: the default track (or $FLEET_TRACK)
    env: dict[str, KnobValue] = field(default_factory=dict)
    grid: dict[str, list[KnobValue]] = field(default_factory=dict)
    experiments: list[ExplicitExperiment] = field(default_factory=list)
    search: SearchSpec | None = None
    early_stop: EarlyStop | None = None
    source: str = ""  # the file it came from, for messages
    warnings: tuple[str, ...] = ()  # not fatal (duplicate configurations); the CLI prints them on stderr
    lines: Mapping[str, int] = field(default_factory=dict)  # field path ("grid.MATRIX_LR") -> its line in the file

    def to_json(self) -> dict[str, Any]:
        """The wave as the user meant it, JSON-ready (for the ledger and `--json` output)."""
        return {
            "name": self.name, "tier": self.tier, "seeds": self.seeds, "description": self.description,
            "max_gpu_hours": self.max_gpu_hours, "priority": self.priority, "track": self.track,
            "env": dict(self.env),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "experiments": [_entry_json(e) for e in self.experiments],
            **({"search": self.search.to_json()} if self.search else {}),
            **({"early_stop": self.early_stop.to_json()} if self.early_stop else {}),
        }


def _entry_json(entry: ExplicitExperiment) -> dict[str, Any]:
    out: dict[str, Any] = dict(entry.overrides)
    for key in ("description", "code", "patch"):
        if getattr(entry, key):
            out[key] = getattr(entry, key)
    return out
