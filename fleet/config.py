"""Project configuration: `fleet.yaml` beside `experiment.yaml` (optional; every field has a default).

```yaml
task: experiment.yaml        # the SkyPilot task that runs one experiment
workload: train              # the directory snapshotted for each experiment (`.`: the project root)
script: train.py             # the training script, relative to the workload directory
knobs: auto                  # env: knobs are environment variables the script lists with `--knobs`;
                             # constants: its module-level ALL_CAPS constants; auto: env if it mentions --knobs
snapshot: null               # what a snapshot holds: paths or globs under the workload (null: everything)
metric: {name: val_bpb, direction: minimize}  # the summary key experiments are judged by
queue_depth: 2               # jobs kept in each cluster's queue (one running, one waiting)
tiers:                       # priority: waves of higher-priority tiers start first (within a track)
  screen:   {accelerators: [H100], seeds: 1, priority: 0}
  validate: {accelerators: [H200], seeds: 3, priority: 10}   # a tier may also set `early_stop` for its waves
tracks: {}                   # fair-share weights of tracks (e.g. {agent-a: 2, agent-b: 1}); others weigh 1
fleet_size: {replace_lost: true, backoff_s: 60, autodown_minutes: 30}  # see FleetSizeConfig
prices: {H100: 2.25, H200: 3.15, cpu: 0.0}   # $ per GPU-hour
max_gpu_hours: null          # budget cap for the whole ledger
local: {slots: 2, accelerators: null}         # local backend: CPU slots, or labels per slot
env_passthrough: []          # variables of your shell jobs may see (e.g. [HF_TOKEN]); others never reach them
snapshot_include: []         # dotfiles or ignored paths of the workload to snapshot anyway (e.g. [.config.json])
verdicts: {alpha: 0.05, min_effect: 0.0005, max_seeds: 16, first_look: 3, step_mismatch: 0.1}
backfill: {enabled: true, max_gpu_hours: 4}  # useful work the fleet queues itself when clusters would idle
```
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fleet.errors import InputError, format_validation_error

CONFIG_FILE = "fleet.yaml"

# Documented defaults: on-demand list prices of single GPUs on common Kubernetes GPU clouds, late
# 2026. Override them in fleet.yaml; they only feed the cost column and the budget cap.
DEFAULT_PRICES = {"H100": 2.25, "H200": 3.15, "cpu": 0.0}
# Waves that decide a verdict (validation tiers, promote and ablate waves) start before screens.
VALIDATION_PRIORITY = 10
TRACK_PATTERN = r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$"


def _finite(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise PydanticCustomError("finite_scalar", "must be a finite number")
    return value


Number = Annotated[Union[StrictInt, StrictFloat], AfterValidator(_finite)]


class EarlyStopSettings(BaseModel):
    """`early_stop:` of a wave or a tier: checkpoints (fractions of the budget) and a margin in training-loss units.

    A run whose loss at a checkpoint trails the wave's baseline (or median) run at the same fraction by more
    than `margin` is stopped and recorded as pruned. Whether the checkpoints come before the warmdown is
    checked when a wave is submitted, against its WARMDOWN_RATIO.
    """

    model_config = ConfigDict(extra="forbid")
    at: list[Number] = Field(..., min_length=1, description="fractions of the budget, before the warmdown")
    margin: Number = Field(..., ge=0, description="training-loss units a run may trail the reference by")

    @model_validator(mode="after")
    def _fractions(self) -> "EarlyStopSettings":
        for value in self.at:
            if not 0 < value < 1:
                raise PydanticCustomError("early_stop_at", "`at` = {value} is not a fraction of the budget; give "
                                          "values between 0 and 1 (e.g. `at: [0.25]`)", {"value": value})
        if list(self.at) != sorted(set(self.at)):
            raise PydanticCustomError("early_stop_at", "`at` must list distinct fractions in increasing order "
                                      "(e.g. `at: [0.2, 0.4]`)")
        return self


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accelerators: list[str] = Field(default_factory=list, description="accelerators that run this tier; empty = any")
    seeds: int = Field(1, ge=1, description="default seeds for waves of this tier")
    priority: int = Field(0, ge=-1000, le=1000,
                          description="waves of this tier start before lower-priority waves of the same track")
    early_stop: EarlyStopSettings | None = Field(None, description="early stopping for this tier's waves")


class LocalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slots: int | None = Field(None, ge=1, description="CPU slots when there is no GPU (default: 1 per 4 cores, at least 2)")
    accelerators: list[str] | None = Field(
        None, description="label each slot with an accelerator name (testing tiers and normalization locally)"
    )


class FleetSizeConfig(BaseModel):
    """Keeping the fleet at the size `fleet up --clusters N` recorded."""

    model_config = ConfigDict(extra="forbid")
    replace_lost: bool = Field(True, description="launch a replacement for a cluster lost while work is queued")
    backoff_s: float = Field(60.0, gt=0, description="wait after a failed replacement launch (doubles each time)")
    max_backoff_s: float = Field(1800.0, gt=0, description="the longest wait between replacement launches")
    autodown_minutes: int = Field(30, ge=1, description="a SkyPilot cluster tears itself down after this many idle "
                                  "minutes once the ledger has no work left (the controller keeps it up meanwhile)")


class MetricConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("val_bpb", pattern=r"^[a-z][A-Za-z0-9_]*$",
                      description="the key of the run's `---` summary that judges it (e.g. val_bpb)")
    direction: Literal["minimize", "maximize"] = Field("minimize", description="minimize: lower is better")

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"


class VerdictConfig(BaseModel):
    """How `fleet promote`, `fleet recheck` and `fleet ablate` decide (fleet.research.verdicts)."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.05, gt=0, lt=1, description="error rate per wave: false keeps over all its candidates "
                         "(Holm), and false discards per candidate")
    min_effect: float = Field(0.0005, ge=0, allow_inf_nan=False,
                              description="smallest gain worth keeping, in the metric's units (val_bpb)")
    max_seeds: int = Field(16, ge=2, le=1024, description="seed pairs per candidate at most (the sequential cap)")
    first_look: int = Field(3, ge=2, le=64, description="pairs before the first look (the seeds a candidate starts with)")
    step_mismatch: float = Field(0.1, gt=0, description="flag seed pairs whose step ratio is this far (relative) "
                                 "off the configurations' typical ratio")


class BackfillConfig(BaseModel):
    """What the fleet queues by itself when a cluster would go idle (`fleet.research.backfill`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="queue backfill at the lowest priority when nothing else is pending")
    max_gpu_hours: float = Field(4.0, gt=0, allow_inf_nan=False,
                                 description="GPU-hours backfill may use in all (spent plus queued)")


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = "experiment.yaml"
    workload: str = "train"
    script: str = Field("train.py", min_length=1, description="the training script, relative to the workload")
    knobs: Literal["auto", "env", "constants"] = "auto"
    snapshot: list[str] | None = Field(None, min_length=1, description="paths or globs the snapshot holds")
    metric: MetricConfig = Field(default_factory=MetricConfig)
    queue_depth: int = Field(2, ge=1, le=16)
    tiers: dict[str, Tier] = Field(
        default_factory=lambda: {
            "screen": Tier(accelerators=["H100"], seeds=1),
            "validate": Tier(accelerators=["H200"], seeds=3, priority=VALIDATION_PRIORITY),
        }
    )
    tracks: dict[str, float] = Field(
        default_factory=dict, description="fair-share weight of each track (a track not listed weighs 1)")
    fleet_size: FleetSizeConfig = Field(default_factory=FleetSizeConfig)
    prices: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    max_gpu_hours: float | None = Field(None, gt=0)
    local: LocalConfig = Field(default_factory=LocalConfig)
    reference_accelerator: str = "H100"
    env_passthrough: list[str] = Field(
        default_factory=list, description="environment variables jobs may see besides knobs and the fleet's own")
    snapshot_include: list[str] = Field(
        default_factory=list, description="gitignore-style patterns of dotfiles or ignored files to snapshot anyway")

    @field_validator("env_passthrough")
    @classmethod
    def _variable_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name (e.g. HF_TOKEN)")
        return names
    verdicts: VerdictConfig = Field(default_factory=VerdictConfig)
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)

    @field_validator("tracks")
    @classmethod
    def _track_weights(cls, tracks: dict[str, float]) -> dict[str, float]:
        for name, weight in tracks.items():
            if not re.fullmatch(TRACK_PATTERN, name):
                raise ValueError(f"track {name!r} is not a track name (lowercase letters, digits, '-' or '_', e.g. agent-a)")
            if not weight > 0:
                raise ValueError(f"track {name!r} has weight {weight}, but a weight must be positive (e.g. {name}: 1)")
        return tracks

    def track_weight(self, track: str) -> float:
        return self.tracks.get(track, 1.0)

    @field_validator("script")
    @classmethod
    def _relative_script(cls, script: str) -> str:
        if script.startswith("/") or ".." in script.split("/"):
            raise ValueError("must be a path inside the workload directory, e.g. `train.py`")
        return script


def load_config(root: Path) -> FleetConfig:
    path = root / CONFIG_FILE
    if not path.exists():
        config = FleetConfig()
    else:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: must be a mapping of settings, got {type(data).__name__}")
        try:
            config = FleetConfig.model_validate(data)
        except ValidationError as exc:
            raise InputError(format_validation_error(path, exc)) from None
    # FLEET_LOCAL_ACCELERATORS=H100,H200 labels local slots without a config file (tests, demos).
    labels = os.environ.get("FLEET_LOCAL_ACCELERATORS")
    if labels:
        config.local.accelerators = [x.strip() for x in labels.split(",") if x.strip()]
    return config
