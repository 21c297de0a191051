"""Checking a search wave (and early stopping) against the workload before anything is submitted.

- Every knob of `search.space` must be one the workload has, and every bound and choice a value it
  takes: the bounds and choices are checked like grid values, by the workload's own knob check.
- A range samples what the knob is: integers for an int knob, floats for a float knob (`dim_kind`).
- `early_stop.at` must come before the warmdown: from the warmdown start on, the learning rate falls
  and the loss drops for reasons that have nothing to do with the configuration, so comparing runs
  there judges the schedule. The earliest warmdown start in the wave is 1 − the largest
  WARMDOWN_RATIO any of its runs can have (env, grid, experiments, search space, or the workload's
  default), and every checkpoint must lie before it.

The rules are pure (`resolve_space`, `probe_experiments`, `warmdown_problems`); `check_search_wave`
runs them against a code snapshot.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fleet.config import EarlyStopSettings
from fleet.core.expand import PlannedExperiment, config_key, env_value
from fleet.core.knobs import KnobInfo, KnobListing
from fleet.core.materialize import CodeStore, knob_problems
from fleet.core.wave_spec import EarlyStop, WaveSpec
from fleet.errors import InputError
from fleet.research.search import dim_kind, probe_values

WARMDOWN_KNOB = "WARMDOWN_RATIO"


def resolve_space(spec: WaveSpec, listing: KnobListing) -> tuple[WaveSpec, list[str]]:
    """The spec with each search dimension's kind set from the knob's type, and the problems found."""
    if spec.search is None:
        return spec, []
    problems, space = [], {}
    for name, dim in spec.search.space.items():
        kind, problem = dim_kind(name, dim, listing.knobs.get(name), f"search.space.{name}")
        if problem:
            problems.append(f"{spec.source}: {problem}")
        space[name] = dataclasses.replace(dim, kind=kind)
    return dataclasses.replace(spec, search=dataclasses.replace(spec.search, space=space)), problems


def probe_experiments(spec: WaveSpec) -> list[PlannedExperiment]:
    """One configuration per bound and choice of the space (on top of `env`), for the knob check; each is
    labelled with its field path (`search.space.K.low`)."""
    if spec.search is None:
        return []
    base = {k: env_value(v) for k, v in spec.env.items()}
    origins = {k: f"env.{k}" for k in spec.env}
    out = []
    for name, where, value in probe_values(spec.search.space):
        config = {**base, name: env_value(value)}
        out.append(PlannedExperiment(config, 0, "", config_key(config), where, {**origins, name: where}))
    return out


def _default(knob: KnobInfo | None) -> float | None:
    values = [v for v in (knob.default or {}).values() if isinstance(v, (int, float)) and not isinstance(v, bool)] \
        if knob is not None else []
    return float(max(values)) if values else None


def _numbers(values: Any) -> list[float]:
    values = values if isinstance(values, (list, tuple)) else [values]
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return out


def largest_warmdown(spec: WaveSpec, listing: KnobListing) -> tuple[float, str] | None:
    """(the largest WARMDOWN_RATIO a run of the wave can have, where it comes from), or None when the
    workload has no such knob (it has no warmdown the fleet knows of)."""
    knob = listing.knobs.get(WARMDOWN_KNOB)
    found: list[tuple[float, str]] = []
    if WARMDOWN_KNOB in spec.env:
        found += [(v, f"env.{WARMDOWN_KNOB}") for v in _numbers(spec.env[WARMDOWN_KNOB])]
    elif _default(knob) is not None:
        found.append((_default(knob), "the workload's default"))
    found += [(v, f"grid.{WARMDOWN_KNOB}") for v in _numbers(spec.grid.get(WARMDOWN_KNOB, []))]
    for i, exp in enumerate(spec.experiments):
        if WARMDOWN_KNOB in exp.overrides:
            found += [(v, f"experiments[{i}].{WARMDOWN_KNOB}") for v in _numbers(exp.overrides[WARMDOWN_KNOB])]
    dim = spec.search.space.get(WARMDOWN_KNOB) if spec.search else None
    if dim is not None:
        values = dim.choices if dim.choices is not None else (dim.high,)
        found += [(v, f"search.space.{WARMDOWN_KNOB}") for v in _numbers(list(values))]
    if not found:
        return None
    return max(found, key=lambda item: item[0])


def warmdown_problems(early_stop: EarlyStop | None, spec: WaveSpec, listing: KnobListing, field: str) -> list[str]:
    """One line per checkpoint at or after the wave's earliest warmdown start (pure)."""
    if early_stop is None:
        return []
    largest = largest_warmdown(spec, listing)
    if largest is None:
        return []
    ratio, origin = largest
    start = 1 - ratio
    out = []
    for i, at in enumerate(early_stop.at):
        if at >= start - 1e-12:
            below = [a for a in early_stop.at if a < start - 1e-12]
            example = f"`at: {below}`" if below else f"`at: [{round(start / 2, 3):g}]`"
            out.append(
                f"{spec.source}: `{field}.at[{i}]` = {at:g} is at or after the warmdown start: {WARMDOWN_KNOB} is up "
                f"to {ratio:g} in this wave ({origin}), so the learning rate starts falling at {start:.0%} of the "
                f"budget and the loss there reflects the schedule, not the configuration; use fractions below "
                f"{start:g} (e.g. {example})")
    return out


def effective_early_stop(spec: WaveSpec, tier: EarlyStopSettings | None, tier_name: str) -> tuple[EarlyStop | None, str]:
    """The wave's `early_stop`, else its tier's, with the field path messages name."""
    if spec.early_stop is not None:
        return spec.early_stop, "early_stop"
    if tier is not None:
        return EarlyStop(tuple(float(a) for a in tier.at), float(tier.margin)), f"tiers.{tier_name}.early_stop"
    return None, ""


def check_search_wave(spec: WaveSpec, codes: CodeStore, snapshot: str,
                      tier_early_stop: EarlyStopSettings | None = None) -> WaveSpec:
    """The wave with its space resolved and its effective early stopping, or InputError naming every problem."""
    early_stop, field = effective_early_stop(spec, tier_early_stop, spec.tier)
    if spec.search is None and early_stop is None:
        return spec
    listing = codes.listing(snapshot)
    resolved, problems = resolve_space(spec, listing)
    # A knob with a range problem is reported once: its values are not checked again below.
    flawed = {name for name in spec.search.space if any(f"`search.space.{name}`" in p for p in problems)} \
        if spec.search else set()
    spec = resolved
    probes = [p for p in probe_experiments(spec) if p.label.split(".")[2] not in flawed]
    if probes:
        problems += knob_problems(probes, codes, snapshot, spec.source, spec)
    problems += warmdown_problems(early_stop, spec, listing, field)
    if problems:
        raise InputError("\n".join(dict.fromkeys(problems)))
    if early_stop is not None:
        early_stop = dataclasses.replace(early_stop, warmdown_default=_default(listing.knobs.get(WARMDOWN_KNOB)))
    return dataclasses.replace(spec, early_stop=early_stop)


def space_rows(space: Mapping[str, Any]) -> list[str]:
    """The space for people, one line per knob."""
    out = []
    for name, dim in space.items():
        if dim.choices is not None:
            out.append(f"{name}: one of {', '.join(env_value(c) for c in dim.choices)}")
        else:
            scale = ", log scale" if dim.log else ""
            out.append(f"{name}: {dim.kind or 'float'} in [{env_value(dim.low)}, {env_value(dim.high)}]{scale}")
    return out


__all__ = ["check_search_wave", "effective_early_stop", "largest_warmdown", "probe_experiments", "resolve_space",
           "space_rows", "warmdown_problems"]
