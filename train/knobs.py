"""Knob machinery for train/train.py: declaration, validation, preset resolution and the CLI flags.

Experiments change the knob *block* at the top of train.py, not this file. This module imports
nothing heavy (no torch, no numpy), so `train.py --knobs` and `train.py --check-knobs` work on a
laptop without torch, and a malformed value fails before torch is imported.

A knob's value comes from, in order: the environment variable of the same name (an empty string
counts as unset), else the default of the active preset. Presets are `gpu`, `cpu` and `tiny`; the
`PRESET` knob (default `auto`) picks `gpu` when the resolved device is CUDA, else `cpu`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Collection, Mapping

PRESETS = ("gpu", "cpu", "tiny")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
KNOB_ERROR_EXIT = 2


@dataclass
class Knob:
    """One ALL_CAPS knob: a default per preset plus the constraints every value must meet.

    `Knob(8, 4, 2, min=1, help=...)` means gpu=8, cpu=4, tiny=2; a single default serves all presets.
    The type is taken from the gpu default (bool, int, float or str).
    """

    gpu: Any
    cpu: Any = None
    tiny: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.cpu is None:
            self.cpu = self.gpu
        if self.tiny is None:
            self.tiny = self.cpu

    @property
    def type_name(self) -> str:
        return type(self.gpu).__name__

    def default(self, preset: str) -> Any:
        return {"gpu": self.gpu, "cpu": self.cpu, "tiny": self.tiny}[preset]

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "default": {p: self.default(p) for p in PRESETS},
            "help": self.help,
            "choices": list(self.choices) if self.choices else None,
            "min": self.min,
            "max": self.max,
        }


class KnobError(ValueError):
    """A knob value that cannot be used; the message is one line a person can act on."""


def _allowed(name: str, knob: Knob) -> str:
    """What values are allowed, as a short phrase ending in an example."""
    example = f"{name}={_format(knob.gpu)}"
    if knob.choices:
        return f"one of {', '.join(knob.choices)} (e.g. {example})"
    if knob.type_name == "bool":
        return f"a bool: {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)} (e.g. {example})"
    bounds = []
    if knob.min is not None:
        bounds.append(f">= {_format(knob.min)}")
    if knob.max is not None:
        bounds.append(f"<= {_format(knob.max)}")
    bound_text = f" {' and '.join(bounds)}" if bounds else ""
    article = "an" if knob.type_name == "int" else "a"
    return f"{article} {knob.type_name}{bound_text} (e.g. {example})"


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def parse_value(name: str, knob: Knob, text: str) -> Any:
    """Parse one environment string into the knob's type, or raise KnobError with one line."""
    raw = text.strip()
    bad = f"knob {name}={text!r}"
    kind = knob.type_name
    if kind == "bool":
        if raw.lower() in TRUE_WORDS:
            return True
        if raw.lower() in FALSE_WORDS:
            return False
        raise KnobError(f"{bad} is not {_allowed(name, knob)}")
    if kind == "int":
        try:
            value: Any = int(raw)
        except ValueError:
            raise KnobError(f"{bad} is not an int; allowed: {_allowed(name, knob)}") from None
    elif kind == "float":
        try:
            value = float(raw)
        except ValueError:
            raise KnobError(f"{bad} is not a float; allowed: {_allowed(name, knob)}") from None
        if not math.isfinite(value):
            raise KnobError(f"{bad} is not a finite float; allowed: {_allowed(name, knob)}")
    else:
        value = raw
    if knob.choices and value not in knob.choices:
        raise KnobError(f"{bad} is not {_allowed(name, knob)}")
    if knob.min is not None and value < knob.min:
        raise KnobError(f"{bad} is below the minimum {_format(knob.min)}; allowed: {_allowed(name, knob)}")
    if knob.max is not None and value > knob.max:
        raise KnobError(f"{bad} is above the maximum {_format(knob.max)}; allowed: {_allowed(name, knob)}")
    return value


def declared_knobs(namespace: Mapping[str, Any]) -> dict[str, Knob]:
    """The ALL_CAPS Knob objects of a module namespace, in declaration order."""
    return {k: v for k, v in namespace.items() if k.isupper() and isinstance(v, Knob)}


def check_env(knobs: Mapping[str, Knob], env: Mapping[str, str]) -> dict[str, Any]:
    """Parse every knob set in `env`; unknown names are ignored. Raises KnobError on the first bad one."""
    values = {}
    for name, knob in knobs.items():
        text = env.get(name)
        if text is None or text.strip() == "":
            continue
        values[name] = parse_value(name, knob, text)
    return values


def combination_error(values: Mapping[str, Any], given: Collection[str] = ()) -> str | None:
    """Rules that tie knobs together (each knob alone may be fine); one line naming the fix, or None.

    `given` are the knobs the run sets on purpose (the change being tested): fixes that keep them
    come first, so the advice is never only "undo your change".
    """
    head_dim = values["HEAD_DIM"]
    if head_dim % 2:
        return f"knob HEAD_DIM={head_dim} must be even (rotary embeddings rotate pairs), e.g. HEAD_DIM={head_dim + 1}"
    micro = values["DEVICE_BATCH_SIZE"] * values["MAX_SEQ_LEN"]
    total = values["TOTAL_BATCH_SIZE"]
    if total % micro:
        return (f"knob TOTAL_BATCH_SIZE={total} is not a multiple of DEVICE_BATCH_SIZE*MAX_SEQ_LEN="
                f"{values['DEVICE_BATCH_SIZE']}*{values['MAX_SEQ_LEN']}={micro}; "
                f"e.g. {' or '.join(_batch_fixes(values, given))}")
    return None


def _batch_fixes(values: Mapping[str, Any], given: Collection[str]) -> list[str]:
    """Ways to make TOTAL_BATCH_SIZE a multiple of the micro-batch; those keeping the given knobs first."""
    device, seq, total = values["DEVICE_BATCH_SIZE"], values["MAX_SEQ_LEN"], values["TOTAL_BATCH_SIZE"]
    micro = device * seq
    fixes: list[tuple[bool, str]] = []
    if total % seq == 0:  # keep TOTAL_BATCH_SIZE: the largest smaller DEVICE_BATCH_SIZE that divides it
        fit = next(d for d in range(device, 0, -1) if (total // seq) % d == 0)
        fixes.append(("DEVICE_BATCH_SIZE" in given, f"DEVICE_BATCH_SIZE={fit} (keeps TOTAL_BATCH_SIZE={total})"))
    fixes.append(("TOTAL_BATCH_SIZE" in given, f"TOTAL_BATCH_SIZE={micro * max(1, total // micro)}"))
    return [text for _, text in sorted(fixes, key=lambda fix: fix[0])]  # fixes that change a given knob last


def _presets_for(given: Mapping[str, Any]) -> tuple[str, ...]:
    """The presets a run with these knobs may resolve to (auto: whichever device the cluster has)."""
    preset = given.get("PRESET", "auto")
    if preset != "auto":
        return (preset,)
    return {"cuda": ("gpu",), "cpu": ("cpu",)}.get(given.get("DEVICE", "auto"), ("gpu", "cpu"))


def check_combinations(knobs: Mapping[str, Knob], given: Mapping[str, Any]) -> None:
    """Raise KnobError if the values break a combination rule under any preset they may run with."""
    for preset in _presets_for(given):
        values = {name: given.get(name, knob.default(preset)) for name, knob in knobs.items()}
        problem = combination_error(values, given)
        if problem:
            raise KnobError(problem + (f" (with PRESET={preset})" if "PRESET" not in given else ""))


def check_many(knobs: Mapping[str, Knob], envs: list[Any]) -> list[str | None]:
    """For each env dict: None when every known knob parses and they fit together, else the first error line."""
    results: list[str | None] = []
    for env in envs:
        if not isinstance(env, dict):
            results.append(f"expected an object of KNOB: value strings, got {type(env).__name__}")
            continue
        try:
            check_combinations(knobs, check_env(knobs, {str(k): str(v) for k, v in env.items()}))
            results.append(None)
        except KnobError as error:
            results.append(str(error))
    return results


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. Imports torch (values are already valid)."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise KnobError("knob DEVICE='cuda' but torch sees no CUDA device; allowed here: DEVICE=cpu or DEVICE=auto")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve(knobs: Mapping[str, Knob], env: Mapping[str, str]) -> dict[str, Any]:
    """Final values for every knob: env overrides, else the preset's defaults; PRESET/DEVICE resolved."""
    given = check_env(knobs, env)
    device = resolve_device(given.get("DEVICE", knobs["DEVICE"].gpu))
    preset = given.get("PRESET", knobs["PRESET"].gpu)
    if preset == "auto":
        preset = "gpu" if device == "cuda" else "cpu"
    values = {name: given.get(name, knob.default(preset)) for name, knob in knobs.items()}
    values["PRESET"] = preset
    values["DEVICE"] = device
    return values


def fail(message: str) -> None:
    """Stop with one line on stderr and the knob-error exit code (no traceback for expected errors)."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(KNOB_ERROR_EXIT)


def apply_knobs(namespace: dict[str, Any], argv: list[str] | None = None) -> None:
    """Handle the knob CLI flags, then replace each Knob in `namespace` by its resolved value.

    Flags (each prints JSON on stdout and exits 0, without importing torch unless noted):
      --knobs           the knob table: type, per-preset defaults, help, choices, min, max
      --check-knobs     stdin: JSON list of env dicts; stdout: list of null | one-line error
      --print-resolved  the values this environment would run with (imports torch for DEVICE=auto)
    """
    argv = sys.argv[1:] if argv is None else argv
    knobs = declared_knobs(namespace)
    if "--knobs" in argv:
        table = {name: knob.describe() for name, knob in knobs.items()}
        print(json.dumps({"knobs": table, "presets": list(PRESETS)}, indent=1))
        raise SystemExit(0)
    if "--check-knobs" in argv:
        try:
            envs = json.load(sys.stdin)
        except json.JSONDecodeError as error:
            fail(f"--check-knobs expects a JSON list of objects on stdin: {error}")
        if not isinstance(envs, list):
            fail("--check-knobs expects a JSON list of objects on stdin, e.g. [{\"DEPTH\": \"4\"}]")
        print(json.dumps(check_many(knobs, envs)))
        raise SystemExit(0)
    unknown_flags = [a for a in argv if a != "--print-resolved"]
    if unknown_flags:
        fail(f"unknown argument(s) {' '.join(unknown_flags)}; knobs are set by environment variables "
             "(e.g. DEPTH=4 python train/train.py); flags: --knobs, --check-knobs, --print-resolved")
    try:
        values = resolve(knobs, os.environ)  # validates every value before resolve_device imports torch
    except KnobError as error:
        fail(str(error))
    problem = combination_error(values)
    if problem:
        fail(problem)
    if "--print-resolved" in argv:
        print(json.dumps(values))
        raise SystemExit(0)
    namespace.update(values)
