"""Expanding a validated wave into experiments (pure): configurations x seeds, duplicates dropped.

`expand_wave`, `count_experiments`, `check_size` and `duplicate_warnings` are pure functions over the
`WaveSpec` (`fleet.core.wave_spec`) that `fleet.core.wave.load_wave` returns; nothing here reads files. A configuration is the knob
overrides of one run, SEED excluded (the fleet sets SEED=0..seeds-1 for each, so it is reserved), plus
its code variant when it has one: `code` (a git ref) or `patch` (a diff file), lowercase keys beside
the UPPER_CASE knobs, so that a variant is a configuration of its own everywhere (keys, labels,
promotion, ablation). The grid runs on the wave's code and again on each variant.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from fleet.core.wave_spec import VARIANT_KEYS, ExplicitExperiment, KnobValue, WaveSpec
from fleet.errors import InputError

RESERVED_KNOBS = ("SEED",)  # set by the fleet for each run


@dataclass(frozen=True)
class PlannedExperiment:
    """One run to submit: a configuration (knob overrides, SEED excluded) and a seed."""

    config: dict[str, str]
    seed: int
    description: str
    config_key: str  # same knobs => same key, across waves
    label: str  # short and human: the knobs that vary within the wave, or the description
    origins: dict[str, str] = field(default_factory=dict, compare=False)  # knob -> its field path in the file
    snapshot: str | None = None  # None: the wave's code; else this run's own (a baseline from another commit)

    @property
    def envs(self) -> dict[str, str]:
        """The environment the run gets: the configuration's knobs plus its SEED."""
        return {**knob_values(self.config), "SEED": str(self.seed)}


def knob_values(config: Mapping[str, str]) -> dict[str, str]:
    """A configuration's knobs, without its code variant."""
    return {k: v for k, v in config.items() if k not in VARIANT_KEYS}


def variant_of(config: Mapping[str, str]) -> tuple[str, str] | None:
    """("code", value) or ("patch", value) when the configuration runs a code variant."""
    return next(((k, config[k]) for k in VARIANT_KEYS if k in config), None)


@dataclass(frozen=True)
class _Config:
    config: dict[str, str]
    description: str
    origins: dict[str, str]
    where: str  # for messages: "experiments[1]", "grid point MATRIX_LR=0.04"


def env_value(value: KnobValue) -> str:
    """A knob value as an environment string: bools are 1/0, floats keep their shortest repr (0.1 -> "0.1"),
    a list (a tuple knob's value) is JSON."""
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def config_key(config: Mapping[str, str]) -> str:
    """Short stable hash of a configuration's knob overrides (SEED excluded)."""
    items = sorted((k, v) for k, v in config.items() if k not in RESERVED_KNOBS)
    return hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).hexdigest()[:12]


def _base(spec: WaveSpec) -> tuple[dict[str, str], dict[str, str]]:
    return {k: env_value(v) for k, v in spec.env.items()}, {k: f"env.{k}" for k in spec.env}


def _distinct(values: list[KnobValue]) -> list[tuple[int, str]]:
    seen: dict[str, int] = {}
    for index, value in enumerate(values):
        seen.setdefault(env_value(value), index)
    return [(index, text) for text, index in seen.items()]


def _grid_configs(spec: WaveSpec) -> Iterator[_Config]:
    base, base_origins = _base(spec)
    keys = list(spec.grid)
    for combo in itertools.product(*(_distinct(spec.grid[k]) for k in keys)):
        config, origins = dict(base), dict(base_origins)
        for key, (index, text) in zip(keys, combo):
            config[key], origins[key] = text, f"grid.{key}[{index}]"
        yield _Config(config, "", origins, "grid point " + " ".join(f"{k}={config[k]}" for k in keys))


def _explicit_configs(spec: WaveSpec) -> list[_Config]:
    """One configuration per plain entry; a variant entry's on each grid point when there is a grid."""
    base, base_origins = _base(spec)
    out = []
    for i, exp in enumerate(spec.experiments):
        own = {k: env_value(v) for k, v in exp.overrides.items()}
        origins = {k: f"experiments[{i}].{k}" for k in exp.overrides}
        variant = exp.variant
        if variant is not None:
            own[variant[0]] = variant[1]
            origins[variant[0]] = f"experiments[{i}].{variant[0]}"
        if variant is None or not spec.grid:
            out.append(_Config({**base, **own}, exp.description, {**base_origins, **origins}, f"experiments[{i}]"))
            continue
        for point in _grid_configs(spec):
            out.append(_Config({**point.config, **own}, exp.description, {**point.origins, **origins},
                               f"experiments[{i}] on {point.where}"))
    return out


def variant_entries(spec: WaveSpec) -> list[tuple[int, ExplicitExperiment]]:
    """The entries that name a code variant, with their index."""
    return [(i, e) for i, e in enumerate(spec.experiments) if e.variant is not None]


def _in_grid(spec: WaveSpec, config: dict[str, str]) -> bool:
    base, _ = _base(spec)
    if not spec.grid or set(config) != set(base) | set(spec.grid):
        return False
    return all(config[k] in {env_value(v) for v in spec.grid[k]} for k in spec.grid) and all(
        config[k] == v for k, v in base.items() if k not in spec.grid
    )


def _explicit_duplicates(spec: WaveSpec) -> dict[int, str]:
    """Explicit experiments that repeat an earlier configuration -> what they repeat (no grid expansion)."""
    repeats: dict[int, str] = {}
    first: dict[str, str] = {}
    plain = [(i, e) for i, e in enumerate(spec.experiments) if e.variant is None or not spec.grid]
    base, _ = _base(spec)
    for index, exp in plain:
        config = {**base, **{k: env_value(v) for k, v in exp.overrides.items()}}
        if exp.variant is not None:
            config[exp.variant[0]] = exp.variant[1]
        key = config_key(config)
        if _in_grid(spec, config):
            repeats[index] = "a grid point (" + " ".join(f"{k}={config[k]}" for k in spec.grid) + ")"
        elif key in first:
            repeats[index] = f"`{first[key]}`"
        else:
            first[key] = f"experiments[{index}]"
    return repeats


def duplicate_warnings(spec: WaveSpec) -> list[str]:
    """Configurations that appear twice run once; say so (a warning, not an error)."""
    out = []
    for knob, values in spec.grid.items():
        kept = {index for index, _ in _distinct(values)}
        for index, value in enumerate(values):
            if index not in kept:
                out.append(f"{spec.source}: `grid.{knob}[{index}]` = {value!r} repeats an earlier value; it runs once")
    for index, what in _explicit_duplicates(spec).items():
        out.append(f"{spec.source}: `experiments[{index}]` repeats the configuration of {what}; it runs once")
    return out


def count_experiments(spec: WaveSpec, default_seeds: int) -> int:
    """How many experiments `expand_wave` would return, without expanding (check size before expanding)."""
    grid = math.prod(len(_distinct(v)) for v in spec.grid.values()) if spec.grid else 0
    on_grid = len(variant_entries(spec)) if spec.grid else 0  # each runs the whole grid
    configs = grid * (1 + on_grid) + len(spec.experiments) - on_grid - len(_explicit_duplicates(spec))
    if spec.search is not None:  # a search wave runs its fixed configurations (if any) and its trials
        return (configs + spec.search.trials) * (spec.seeds or default_seeds)
    return max(configs, 1) * (spec.seeds or default_seeds)


def check_size(n: int, limit: int = 10_000, yes: bool = False) -> None:
    if n > limit and not yes:
        raise InputError(
            f"wave has {n:,} experiments (limit {limit:,} without --yes); shrink the grid or `seeds`, "
            "split it into several waves, or pass --yes if you mean it"
        )


def expand_wave(spec: WaveSpec, default_seeds: int) -> list[PlannedExperiment]:
    """Configurations (grid product, then explicit experiments) x seeds, duplicates dropped.

    A search wave's trials are not here: their configurations are chosen while the wave runs."""
    seeds = spec.seeds or default_seeds
    if seeds < 1:
        raise InputError(f"{spec.source}: `seeds` is {seeds}, but must be a positive integer (e.g. `seeds: 3`)")
    base, base_origins = _base(spec)
    candidates = list(_grid_configs(spec)) if spec.grid else []
    candidates += _explicit_configs(spec)
    if not candidates and spec.search is None:  # a search wave's trials are its configurations
        candidates = [_Config(base, "", base_origins, "env")]
    configs: dict[str, _Config] = {}
    for cfg in candidates:
        key = config_key(cfg.config)
        kept = configs.get(key)
        if kept is None:
            configs[key] = cfg
        elif not kept.description and cfg.description:
            configs[key] = _Config(kept.config, cfg.description, kept.origins, kept.where)
    knobs = list(dict.fromkeys(k for cfg in configs.values() for k in cfg.config))
    varying = [k for k in knobs if len({cfg.config.get(k) for cfg in configs.values()}) > 1]
    varying.sort(key=lambda k: k not in VARIANT_KEYS)  # the code first: `code=idea MATRIX_LR=0.04`
    shared = {cfg.description for cfg in configs.values() if cfg.description and " on grid point " in cfg.where}
    planned = []
    for key, cfg in configs.items():
        knobs_label = " ".join(f"{k}={cfg.config[k]}" for k in varying if k in cfg.config)
        if cfg.description in shared:  # one description for a variant's whole grid: say which point
            label = f"{cfg.description}: {knobs_label}" if knobs_label else cfg.description
        else:
            label = cfg.description or knobs_label or "base"
        for seed in range(seeds):
            planned.append(PlannedExperiment(cfg.config, seed, cfg.description, key, label, cfg.origins))
    return planned



def interleave_baseline(planned: list[PlannedExperiment], baseline_description: str = "baseline") -> list[PlannedExperiment]:
    """The baseline's runs spread evenly through the wave instead of after the grid.

    Runs start in submission order, so a baseline run last would meet a different fleet (other jobs,
    a warmer machine) than the ideas it is compared with; spread out, it samples the same conditions.
    The other runs keep their order.
    """
    is_base = [p.description.strip().lower() == baseline_description for p in planned]
    base = [p for p, b in zip(planned, is_base) if b]
    rest = [p for p, b in zip(planned, is_base) if not b]
    if not base or not rest:
        return list(planned)
    out: list[PlannedExperiment] = []
    step = (len(rest) + len(base)) / len(base)
    slots = {int(step * i + step / 2) for i in range(len(base))}
    b, r = iter(base), iter(rest)
    for position in range(len(planned)):
        out.append(next(b) if position in slots else next(r))
    return out
