"""Wave files: a YAML description of many experiments, validated before anything is submitted.

```yaml
name: lr-wd               # [a-z0-9][a-z0-9-_]*, at most 40 characters (default: the file name)
tier: screen              # a tier from fleet.yaml (default: screen)
seeds: 1                  # runs per configuration, SEED=0..seeds-1 (default: the tier's seeds)
description: optional text
max_gpu_hours: 20         # optional budget cap for this wave
priority: 5               # optional: higher starts first within its track (default: the tier's priority)
track: agent-a            # optional: the fair-share track it runs on (e.g. one per agent; default: none)
env: {TIME_BUDGET: 300}   # fixed knob overrides for every experiment
grid:                     # factorial product of knob values
  MATRIX_LR: [0.03, 0.04, 0.05]
  WEIGHT_DECAY: [0.0, 0.1]
experiments:              # explicit override sets on top of `env`; each may carry a description
  - {description: baseline}
  - {MATRIX_LR: 0.06, description: hot}
  - {code: my-branch}     # a code variant: a git ref's workload, or `patch: idea.diff`; the grid runs on it too
search:                   # an adaptive search (fleet.core.wave_search): `trials` configurations chosen by a sampler
  trials: 24
  space: {WEIGHT_DECAY: {low: 0.0, high: 0.2}}
early_stop: {at: [0.25], margin: 0.1}   # stop runs whose loss trails the baseline's at 25% of the budget
```

`load_wave` reads and validates a file (I/O at the edge). Expanding the resulting `WaveSpec` into
experiments (`expand_wave`, `count_experiments`, `check_size`) is pure and lives in `fleet.core.expand`;
the validated plain records (`WaveSpec`) live in `fleet.core.wave_spec`, which both modules import.
"""
from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fleet.core import wave_search
from fleet.core.expand import RESERVED_KNOBS, duplicate_warnings
from fleet.core.wave_search import EarlyStopFile, SearchFile, SpaceDimFile
from fleet.core.wave_spec import EarlyStop, ExplicitExperiment, KnobValue, Scalar, SearchDim, SearchSpec, WaveSpec
from fleet.errors import InputError, field_path

# Single '-' or '_' between runs of letters and digits: job names (`<wave>-001.a1`) must pass
# SkyPilot's name check, which rejects triple separators and a separator at either end.
NAME_PATTERN = r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$"
NAME_MAX = 40
KNOB_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def _value(value: object) -> KnobValue:
    """One knob value: a scalar, or a flat list of scalars (the value of a tuple or list knob)."""
    if isinstance(value, list):
        if not value:
            raise PydanticCustomError("value_list", "must not be an empty list")
        for item in value:
            if isinstance(item, (list, dict)):
                raise PydanticCustomError("value_list", "must be one value or a flat list (a tuple knob's), not a "
                                          "list of {kind}", {"kind": "lists" if isinstance(item, list) else "mappings"})
        return [_scalar(item) for item in value]
    return _scalar(value)


def _scalar(value: object) -> Scalar:
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise PydanticCustomError("finite_scalar", "must be a finite number")
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise PydanticCustomError("scalar_nul", "must not contain a NUL character (it cannot be an env value)")
        return value
    if isinstance(value, (bool, int)):
        return value
    kinds = {dict: "a mapping", list: "a list of lists", type(None): "an empty value (null)"}
    kind = kinds.get(type(value), type(value).__name__)
    raise PydanticCustomError("scalar_type", "must be a single number, string or boolean, not {kind}", {"kind": kind})


def _knob_name(name: str) -> str:
    if name in RESERVED_KNOBS:
        raise PydanticCustomError(
            "reserved_knob",
            "{name} is set by the fleet for each run ({name}=0..seeds-1) and cannot be a knob here; "
            "remove it and set `seeds: N` instead",
            {"name": name},
        )
    if not KNOB_NAME.match(name):
        message = "is not a knob name; knobs are UPPER_CASE environment variable names such as MATRIX_LR"
        raise PydanticCustomError("knob_name", message)
    return name


SCALAR_SCHEMA = {"type": ["boolean", "integer", "number", "string"]}
VALUE_SCHEMA = {"anyOf": [SCALAR_SCHEMA, {"type": "array", "items": SCALAR_SCHEMA, "minItems": 1}]}
ScalarValue = Annotated[KnobValue, PlainValidator(_value), WithJsonSchema(VALUE_SCHEMA)]
KnobName = Annotated[str, AfterValidator(_knob_name)]


class ExperimentEntry(BaseModel):
    """One explicit override set: knob overrides on top of `env`, with an optional description, on the
    wave's code or on a code variant (`code:` a git ref, or `patch:` a diff file)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"propertyNames": {"pattern": "^[A-Z][A-Z0-9_]*$|^description$|^code$|^patch$"}},
    )
    description: str = Field("", description="what this configuration tries", strict=True)
    code: str | None = Field(None, min_length=1, strict=True,
                             description="run this git commit, branch or tag's workload instead of the working tree")
    patch: str | None = Field(None, min_length=1, strict=True,
                              description="a unified diff file applied to the wave's code")
    __pydantic_extra__: dict[KnobName, ScalarValue]

    @model_validator(mode="after")
    def _one_variant(self) -> "ExperimentEntry":
        if self.code is not None and self.patch is not None:
            raise PydanticCustomError("one_variant", "give `code` or `patch`, not both (commit the patch on the "
                                      "branch and name the branch in `code`)")
        return self


class SearchBlock(SearchFile):
    space: dict[KnobName, SpaceDimFile] = Field(..., min_length=1, description="knob -> range or choices")


class WaveFile(BaseModel):
    """The wave file as the user writes it (the JSON schema of `fleet schema`)."""

    model_config = ConfigDict(extra="forbid", title="skyfleet wave")
    name: str = Field(
        ..., pattern=NAME_PATTERN, max_length=NAME_MAX, strict=True, description="wave name (default: the file name)"
    )
    tier: str = Field("screen", strict=True, description="tier that runs the wave (tiers come from fleet.yaml)")
    seeds: int | None = Field(None, ge=1, strict=True, description="runs per configuration (default: the tier's seeds)")
    description: str = Field("", strict=True)
    max_gpu_hours: float | None = Field(
        None, gt=0, strict=True, allow_inf_nan=False, description="budget cap for this wave, in GPU-hours"
    )
    env: dict[KnobName, ScalarValue] = Field(default_factory=dict, description="knob overrides for every experiment")
    grid: dict[KnobName, Annotated[list[ScalarValue], Field(min_length=1)]] | None = Field(
        None, min_length=1, description="factorial product of knob values"
    )
    experiments: list[ExperimentEntry] | None = Field(
        None, min_length=1, description="explicit override sets, run after the grid's configurations"
    )
    priority: int | None = Field(None, ge=-1000, le=1000, strict=True,
                                 description="higher starts first within its track (default: the tier's priority)")
    track: str | None = Field(None, pattern=NAME_PATTERN, max_length=NAME_MAX, strict=True,
                              description="the fair-share track the wave runs on, e.g. one per agent")
    search: SearchBlock | None = Field(None, description="an adaptive search: configurations chosen by a sampler")
    early_stop: EarlyStopFile | None = Field(None, description="stop runs whose training loss clearly trails")

    @model_validator(mode="after")
    def _searched_or_gridded(self) -> "WaveFile":
        both = sorted(set(self.grid or {}) & set(self.search.space if self.search else {}))
        if both:
            raise PydanticCustomError("grid_and_search", "{knob} is in both `grid` and `search.space`; a knob is "
                                      "either gridded or searched: remove it from one", {"knob": both[0]})
        return self

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, tier: str, info: ValidationInfo) -> str:
        tiers = (info.context or {}).get("tiers")
        if tiers is not None and tier not in tiers:
            close = difflib.get_close_matches(tier, list(tiers), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise PydanticCustomError(
                "unknown_tier",
                "unknown tier; {hint}configured tiers: {tiers} (define tiers under `tiers:` in fleet.yaml)",
                {"hint": hint, "tiers": ", ".join(sorted(tiers)) or "(none)"},
            )
        return tier


TOP_LEVEL_KEYS = tuple(WaveFile.model_fields)


def wave_json_schema() -> dict[str, Any]:
    schema = WaveFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["required"] = []  # `name` defaults to the file name
    return schema


# ---- reading the file -----------------------------------------------------------------------------

HINTS = {
    "name": "allowed: lowercase letters and digits, with single '-' or '_' between them (not at either end), "
    f"at most {NAME_MAX} characters (e.g. `name: lr-wd`)",
    "tier": "allowed: the name of a tier from fleet.yaml (e.g. `tier: screen`)",
    "seeds": "allowed: a positive integer (e.g. `seeds: 3`), or leave it out for the tier's default",
    "description": "allowed: text (quote it if it looks like a number)",
    "max_gpu_hours": "allowed: a positive number of GPU-hours (e.g. `max_gpu_hours: 20`), or leave it out",
    "priority": "allowed: an integer from -1000 to 1000 (e.g. `priority: 5`), or leave it out for the tier's",
    "track": "allowed: lowercase letters and digits, with single '-' or '_' between them (e.g. `track: agent-a`)",
    "env": "allowed: a mapping of knob names to single values (e.g. `env: {TIME_BUDGET: 300}`)",
    "grid": "allowed: a mapping of knob names to non-empty lists of values (e.g. `grid: {MATRIX_LR: [0.03, 0.04]}`)",
    "experiments": "allowed: a list of mappings of knob overrides, each may carry `description`, and `code` "
    "(a git ref) or `patch` (a diff file) (e.g. `- {MATRIX_LR: 0.06, description: hot}`)",
    **wave_search.HINTS,
}
CUSTOM_ERRORS = {"finite_scalar", "scalar_nul", "scalar_type", "reserved_knob", "knob_name", "unknown_tier",
                 "value_list", "one_variant", "grid_and_search", *wave_search.CUSTOM_ERRORS}


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 2, 4, 50, 50


def _shown(value: object) -> str:
    return "{...}" if isinstance(value, dict) else _SHORT.repr(value)


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _describe(err: dict[str, Any]) -> tuple[tuple, str]:
    """One pydantic error -> (location, message naming the value, what is allowed and how to fix it)."""
    is_key = bool(err["loc"]) and err["loc"][-1] == "[key]"
    loc = tuple(p for p in err["loc"] if p != "[key]")
    where = field_path(loc)
    kind, root, value = err["type"], (loc[0] if loc else ""), err.get("input")
    if kind == "extra_forbidden" and len(loc) == 1:
        close = difflib.get_close_matches(str(loc[0]), TOP_LEVEL_KEYS, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return loc, f"`{where}` is not a known field; {hint}valid keys: {', '.join(TOP_LEVEL_KEYS)}"
    nested = wave_search.valid_keys_at(loc[:-1]) if kind == "extra_forbidden" else None
    if nested is not None:
        close = difflib.get_close_matches(str(loc[-1]), nested, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return loc, f"`{where}` is not a known field; {hint}valid keys: {', '.join(nested)}"
    if kind == "missing" and root in wave_search.HINTS:
        return loc, f"`{where}` is missing; {wave_search.hint_for(loc) or HINTS[root]}"
    if kind == "too_short" and loc[-1:] == ("choices",):
        return loc, f"`{where}` is empty; give at least one value (e.g. `choices: [6, 8]`) or a range (`low`, `high`)"
    if kind == "knob_name" and root == "experiments" and difflib.get_close_matches(str(loc[-1]), ["description"]):
        return loc, f"`{where}` is not a knob name; did you mean `description`?"
    if kind == "reserved_knob":  # the key is the problem, not its value
        return loc, f"`{where}`: {err['msg']}"
    prefix = f"`{where}`" if is_key else f"`{where}` = {_shown(value)}"
    if root == "grid" and len(loc) == 1 and kind == "too_short":
        return loc, f"`grid` is empty; {HINTS['grid']}, or remove `grid`"
    if root == "grid" and len(loc) == 2 and kind == "list_type":
        example = f"`{loc[1]}: [{value!r}]`"
        return loc, f"{prefix}: must be a list of values (e.g. {example}); put a fixed value in `env` instead"
    if root == "grid" and len(loc) == 2 and kind == "too_short":
        return loc, f"`{where}` is an empty list; give at least one value (e.g. `{loc[1]}: [0.03, 0.04]`) or remove it"
    if root == "experiments" and len(loc) == 1 and kind == "too_short":
        return loc, f"`experiments` is an empty list; {HINTS['experiments']}, or remove `experiments`"
    if kind == "grid_and_search":
        return loc, err["msg"]
    if kind in CUSTOM_ERRORS:
        return loc, f"{prefix}: {err['msg']}"
    hint = HINTS["description" if loc[-1:] == ("description",) else str(root)] if root in HINTS else ""
    hint = wave_search.hint_for(loc) or hint
    if root == "name":
        return loc, f"{prefix}: not a valid wave name; {hint}"
    if root == "experiments" and len(loc) == 2 and kind == "model_type":
        return loc, f"{prefix}: must be a mapping; {hint}"
    return loc, f"{prefix}: {err['msg']}" + (f"; {hint}" if hint else "")


def format_wave_errors(source: str, exc: ValidationError, lines: dict[tuple, int] | None = None) -> str:
    out = []
    for err in exc.errors():
        loc, message = _describe(err)
        line = _line_of(lines or {}, loc)
        out.append((line or 0, f"{source}:{line}: {message}" if line else f"{source}: {message}"))
    return "\n".join(message for _, message in sorted(out, key=lambda item: item[0]))


def _node_lines(
    node: yaml.Node, path: tuple, lines: dict[tuple, int], source: str, seen: set[int] | None = None
) -> None:
    """Map each field path to its line, and refuse duplicate keys (YAML would silently keep the last)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: walked once (a "billion laughs" file must not explode here)
        return
    seen.add(id(node))
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            if key in keys:
                line = key_node.start_mark.line + 1
                raise InputError(
                    f"{source}:{line}: `{field_path(path + (key,))}` appears twice; YAML would keep only the "
                    "last one, so merge them into one entry"
                )
            keys.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _node_lines(value_node, path + (key,), lines, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, path + (index,), lines, source, seen)


def _parse_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    source = str(path)
    if not path.exists():
        raise InputError(f"{source}: wave file not found; check the path (e.g. `fleet wave examples/quickstart.yaml`)")
    if not path.is_file():
        raise InputError(f"{source}: is a directory, not a wave file; pass the path of a .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text (byte {exc.start}); save the wave file as UTF-8") from None
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        detail = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context:
            detail += f" ({context}" + (f" started on line {context_mark.line + 1})" if context_mark else ")")
        raise InputError(
            f"{where}: not valid YAML: {detail}; check indentation, colons and brackets on that line"
        ) from None
    if node is not None:
        _node_lines(node, (), lines, source)
    return data, lines


def default_wave_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower())
    name = re.sub(r"[_-]{2,}", "-", name).strip("-_")[:NAME_MAX].strip("-_")
    return name or "wave"


def load_wave(path: Path, tiers: Collection[str]) -> WaveSpec:
    """Read and validate a wave file; every problem is reported, one line each, in one InputError."""
    path = Path(path)
    source = str(path)
    data, lines = _parse_yaml(path)
    if data is None:
        raise InputError(f"{source}: the file is empty; a wave needs at least `grid`, `experiments` or `env` "
                         "(e.g. `grid: {MATRIX_LR: [0.03, 0.04]}`)")
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: must be a mapping of wave settings, got a {type(data).__name__}; "
            f"valid keys: {', '.join(TOP_LEVEL_KEYS)}"
        )
    data = dict(data)
    data.setdefault("name", default_wave_name(path))
    try:
        model = WaveFile.model_validate(data, context={"tiers": list(tiers)})
    except ValidationError as exc:
        raise InputError(format_wave_errors(source, exc, lines)) from None
    spec = WaveSpec(
        name=model.name,
        tier=model.tier,
        seeds=model.seeds,
        description=model.description,
        max_gpu_hours=model.max_gpu_hours,
        priority=model.priority,
        track=model.track,
        env=dict(model.env),
        grid={k: list(v) for k, v in (model.grid or {}).items()},
        experiments=[
            ExplicitExperiment(overrides=dict(e.__pydantic_extra__ or {}), description=e.description,
                               code=e.code, patch=e.patch)
            for e in (model.experiments or [])
        ],
        search=_search_spec(model.search),
        early_stop=None if model.early_stop is None else EarlyStop(tuple(float(f) for f in model.early_stop.at),
                                                                   float(model.early_stop.margin)),
        source=source,
        lines={field_path(loc): line for loc, line in lines.items()},
    )
    warnings = duplicate_warnings(spec)
    if warnings:
        spec = replace(spec, warnings=tuple(warnings))
    return spec


def _search_spec(block: SearchBlock | None) -> SearchSpec | None:
    if block is None:
        return None
    space = {name: SearchDim(low=d.low, high=d.high, log=d.log,
                             choices=None if d.choices is None else tuple(d.choices))
             for name, d in block.space.items()}
    return SearchSpec(block.trials, space, block.sampler, block.seed, block.startup_trials)


__all__ = ["TOP_LEVEL_KEYS", "WaveFile", "load_wave", "wave_json_schema"]
