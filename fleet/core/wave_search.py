"""The `search:` and `early_stop:` blocks of a wave file, as the user writes them (pydantic models).

```yaml
search:
  trials: 48              # configurations the search tries (each runs `seeds` times)
  sampler: tpe            # tpe | cmaes | gp | random (Optuna's samplers)
  seed: 0                 # the sampler's seed: same seed and results, same configurations
  space:
    MATRIX_LR: {low: 0.01, high: 0.1, log: true}
    WARMDOWN_RATIO: {low: 0.2, high: 0.8}
    DEPTH: {choices: [6, 8, 10]}
early_stop: {at: [0.25], margin: 0.1}
```

Only the shape is checked here (pure): that each range has `low < high`, a log range positive bounds,
choices at least one value, and `early_stop.at` fractions strictly between 0 and 1. Whether the knobs
exist and take those values is the workload's to say, checked with the rest of the wave's knobs; whether
`at` comes before the warmdown needs the wave's WARMDOWN_RATIO (`fleet.core.search_checks`).
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from fleet.config import EarlyStopSettings, Number

SAMPLERS = ("tpe", "cmaes", "gp", "random")
MAX_TRIALS = 10_000


class SpaceDimFile(BaseModel):
    """One knob's range (`low`, `high`, optionally `log`) or its `choices`."""

    model_config = ConfigDict(extra="forbid")
    low: Number | None = Field(None, description="smallest value tried")
    high: Number | None = Field(None, description="largest value tried")
    log: StrictBool = Field(False, description="sample on a log scale (bounds must be positive)")
    # Scalars only (validated by the knob check like any value); a list value would be a tuple knob's.
    choices: list[Union[StrictBool, StrictInt, StrictFloat, str]] | None = Field(
        None, min_length=1, description="the values tried, instead of a range")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SpaceDimFile":
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise PydanticCustomError("space_dim", "give `choices` or a range (`low`, `high`, `log`), not both")
            return self
        if self.low is None or self.high is None:
            missing = " and ".join(k for k in ("low", "high") if getattr(self, k) is None)
            raise PydanticCustomError("space_dim", "needs `{missing}` (e.g. `{{low: 0.01, high: 0.1}}`), or `choices` "
                                      "(e.g. `{{choices: [6, 8]}}`)", {"missing": missing})
        if not self.low < self.high:
            raise PydanticCustomError("space_dim", "`low` ({low}) must be below `high` ({high}); for one fixed value "
                                      "put the knob in `env` instead", {"low": self.low, "high": self.high})
        if self.log and self.low <= 0:
            raise PydanticCustomError("space_dim", "`log: true` needs positive bounds, but `low` is {low}; raise `low` "
                                      "(e.g. `low: 0.001`) or drop `log`", {"low": self.low})
        return self


class SearchFile(BaseModel):
    """The `search:` block: the trial budget, the sampler and the space."""

    model_config = ConfigDict(extra="forbid")
    trials: StrictInt = Field(..., ge=1, le=MAX_TRIALS, description="configurations to try")
    sampler: Literal["tpe", "cmaes", "gp", "random"] = Field("tpe", description="Optuna's sampler")
    seed: StrictInt = Field(0, ge=0, description="the sampler's seed")
    startup_trials: StrictInt | None = Field(
        None, ge=0, description="random configurations before the sampler models (default: trials/4, 2..10)")
    space: dict[str, SpaceDimFile] = Field(..., min_length=1, description="knob -> range or choices")


EarlyStopFile = EarlyStopSettings  # the same block in a wave file and under a tier in fleet.yaml


SEARCH_KEYS = tuple(SearchFile.model_fields)
DIM_KEYS = tuple(SpaceDimFile.model_fields)
EARLY_STOP_KEYS = tuple(EarlyStopFile.model_fields)
CUSTOM_ERRORS = {"space_dim", "early_stop_at"}
HINTS = {
    "search": "allowed: `trials` (a positive integer), `sampler` (tpe, cmaes, gp or random), `seed`, "
    "`startup_trials` and `space` (knob -> `{low, high, log}` or `{choices}`), e.g. "
    "`search: {trials: 24, space: {MATRIX_LR: {low: 0.01, high: 0.1, log: true}}}`",
    "early_stop": "allowed: `at` (fractions of the budget, e.g. [0.25]) and `margin` (training-loss units, "
    "e.g. 0.1), e.g. `early_stop: {at: [0.25], margin: 0.1}`",
}
VALID_KEYS = {("search",): SEARCH_KEYS, ("early_stop",): EARLY_STOP_KEYS}
FIELD_HINTS = {
    ("search", "trials"): f"allowed: a whole number of configurations from 1 to {MAX_TRIALS:,} (e.g. `trials: 24`)",
    ("search", "sampler"): "allowed: tpe, cmaes, gp or random (Optuna's samplers; e.g. `sampler: tpe`)",
    ("search", "seed"): "allowed: a whole number >= 0 (e.g. `seed: 0`)",
    ("search", "startup_trials"): "allowed: a whole number >= 0 of random configurations before the sampler models, "
    "or leave it out",
    ("search", "space"): "allowed: a mapping of knobs to ranges or choices "
    "(e.g. `space: {MATRIX_LR: {low: 0.01, high: 0.1, log: true}, DEPTH: {choices: [6, 8]}}`)",
    ("early_stop", "at"): "allowed: a list of fractions of the budget between 0 and 1 (e.g. `at: [0.25]`)",
    ("early_stop", "margin"): "allowed: a number >= 0 of training-loss units (e.g. `margin: 0.1`)",
}
DIM_HINT = ("allowed: `{low, high}` with an optional `log: true`, or `{choices: [...]}` "
            "(e.g. `MATRIX_LR: {low: 0.01, high: 0.1, log: true}`)")


def hint_for(loc: tuple) -> str | None:
    """The most specific "allowed: ..." for a field inside the `search` or `early_stop` blocks."""
    if len(loc) >= 3 and loc[:2] == ("search", "space"):
        return DIM_HINT
    return FIELD_HINTS.get(tuple(loc[:2]))


def valid_keys_at(loc: tuple) -> tuple[str, ...] | None:
    """The keys a mapping at `loc` may hold (for "unknown field" messages inside the blocks)."""
    if len(loc) == 3 and loc[:2] == ("search", "space"):
        return DIM_KEYS
    return VALID_KEYS.get(loc[:1]) if len(loc) == 1 else None


__all__ = ["CUSTOM_ERRORS", "EarlyStopFile", "HINTS", "SAMPLERS", "SearchFile", "SpaceDimFile", "hint_for",
           "valid_keys_at"]
