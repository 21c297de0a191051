"""The workload's own knob listing, read by running it (never importing it: it needs torch).

Contract with the workload script (`train/train.py` by default), run with cwd = the snapshot root:

- `python train/train.py --knobs` prints, as JSON on stdout,
  `{"knobs": {NAME: {"type", "default": {preset: value}, "help", "choices", "min", "max"}}}`.
- `python train/train.py --check-knobs` reads a JSON list of env dicts on stdin and prints a JSON list
  of the same length: `null` where the env is valid, else one error line naming the knob and value.

A wave is checked against both before anything is submitted: names here (with a did-you-mean),
values by one batch call to the workload, which owns their rules.
"""
from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fleet.core.expand import RESERVED_KNOBS, PlannedExperiment, config_key, knob_values
from fleet.errors import InputError, format_validation_error

DEFAULT_SCRIPT = "train/train.py"
LISTING_TIMEOUT_S = 120.0  # the workload imports torch before answering; a cold import can be slow
MAX_REPORTED = 10  # value problems listed before "... and N more"


@dataclass(frozen=True)
class KnobInfo:
    name: str
    type: str = "str"
    default: dict[str, Any] = field(default_factory=dict)  # preset -> default value
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class KnobListing:
    knobs: dict[str, KnobInfo]
    script: str = DEFAULT_SCRIPT

    @property
    def names(self) -> list[str]:
        return sorted(self.knobs)


class _KnobEntry(BaseModel):
    # The workload may add fields later; the fleet reads only these.
    model_config = ConfigDict(extra="ignore")
    type: str = "str"
    default: dict[str, Any] | Any = None
    help: str | None = ""
    choices: list[Any] | None = None
    min: float | None = None
    max: float | None = None


class _Listing(BaseModel):
    model_config = ConfigDict(extra="ignore")
    knobs: dict[str, _KnobEntry]


def _run_workload(snapshot_root: Path, script: str, flag: str, stdin: str | None = None) -> str:
    path = snapshot_root / script
    if not path.is_file():
        raise InputError(
            f"workload script {path} not found; the workload must provide `{script}` "
            f"(set `workload:` in fleet.yaml, or check the snapshot)"
        )
    try:
        proc = subprocess.run(
            [sys.executable, script, flag],
            cwd=snapshot_root,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=LISTING_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise InputError(
            f"`python {script} {flag}` did not answer within {LISTING_TIMEOUT_S:.0f}s; "
            f"run it by hand in {snapshot_root} to see why"
        ) from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:]) or "(no error output)"
        raise InputError(
            f"`python {script} {flag}` failed with exit code {proc.returncode}; "
            f"the workload must support {flag} (run it by hand in {snapshot_root}):\n{tail}"
        )
    return proc.stdout


def _json_output(stdout: str, script: str, flag: str) -> Any:
    """The JSON answer; tolerate chatter before it (a library's warning printed to stdout)."""
    text = stdout.strip()
    candidates = [text] + [line.strip() for line in reversed(text.splitlines()) if line.strip()[:1] in "[{"]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    shown = text[:200] + ("..." if len(text) > 200 else "") or "(nothing)"
    raise InputError(f"`python {script} {flag}` did not print valid JSON on stdout; it printed: {shown}")


def parse_knob_listing(data: Any, script: str = DEFAULT_SCRIPT) -> KnobListing:
    """The `--knobs` JSON -> a KnobListing (pure)."""
    try:
        listing = _Listing.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            "the workload's knob listing is not in the expected shape "
            '({"knobs": {NAME: {"type", "default", "help", ...}}}):\n'
            + format_validation_error(f"python {script} --knobs", exc)
        ) from None
    knobs = {}
    for name, entry in listing.knobs.items():
        default = entry.default if isinstance(entry.default, dict) else {"default": entry.default}
        choices = tuple(entry.choices) if entry.choices is not None else None
        knobs[name] = KnobInfo(name, entry.type, default, entry.help or "", choices, entry.min, entry.max)
    return KnobListing(knobs, script)


def load_knob_listing(snapshot_root: Path, script: str = DEFAULT_SCRIPT) -> KnobListing:
    stdout = _run_workload(Path(snapshot_root), script, "--knobs")
    return parse_knob_listing(_json_output(stdout, script, "--knobs"), script)


def unknown_knob_errors(planned: list[PlannedExperiment], listing: KnobListing, source: str) -> list[str]:
    """One message per unknown knob name, at the first place the wave uses it (pure)."""
    valid = [n for n in listing.names if n not in RESERVED_KNOBS]  # SEED is the fleet's to set, not a wave's
    out: dict[str, str] = {}
    for exp in planned:
        for name in knob_values(exp.config):  # a code variant (`code`, `patch`) is no knob
            if name in listing.knobs or name in out:
                continue
            # the knob, not which of its values (`grid.K[2]`, `search.space.K.low`) came first
            where = re.sub(r"(\[\d+\]|\.low|\.high|\.choices\[\d+\])$", "", exp.origins.get(name, name))
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            out[name] = f"{source}: `{where}`: unknown knob; {hint}(valid: {', '.join(valid)})"
    return list(out.values())


def _blamed_knob(error: str, config: dict[str, str]) -> str | None:
    """The knob an error line names (the earliest one mentioned), to point at its field path."""
    found = []
    for name in config:
        match = re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", error)
        if match:
            found.append((match.start(), -len(name), name))
    return min(found)[2] if found else None


def value_errors(
    configs: list[PlannedExperiment], answers: list[Any], source: str, script: str = DEFAULT_SCRIPT
) -> list[str]:
    """The workload's per-configuration answers -> one message per distinct problem (pure)."""
    if not isinstance(answers, list) or len(answers) != len(configs):
        got = f"{len(answers)} answers" if isinstance(answers, list) else f"a {type(answers).__name__}"
        raise InputError(
            f"`python {script} --check-knobs` returned {got} for {len(configs)} configurations; "
            "it must print a JSON list with one null-or-error per env dict"
        )
    out: dict[str, None] = {}
    for exp, answer in zip(configs, answers):
        if answer is None:
            continue
        error = " ".join(str(answer).split())[:300]
        knob = _blamed_knob(error, exp.config)
        if knob is not None:
            where = exp.origins.get(knob, knob)
            out.setdefault(f"{source}: `{where}` = {exp.config[knob]!r}: {error}", None)
        else:
            out.setdefault(f"{source}: configuration `{exp.label}`: {error}", None)
    return list(out)


def workload_answers(configs: list[dict[str, str]], snapshot_root: Path, script: str = DEFAULT_SCRIPT) -> list[Any]:
    """The workload's `--check-knobs` answer per configuration: None where it accepts it, else its error line."""
    if not configs:
        return []
    stdout = _run_workload(Path(snapshot_root), script, "--check-knobs", json.dumps(configs))
    answers = _json_output(stdout, script, "--check-knobs")
    if not isinstance(answers, list) or len(answers) != len(configs):
        raise InputError(f"`python {script} --check-knobs` did not return one answer per configuration")
    return answers


def check_wave_knobs(
    planned: list[PlannedExperiment],
    listing: KnobListing,
    snapshot_root: Path,
    source: str,
    script: str | None = None,
) -> None:
    """Refuse a wave whose knob names or values the workload would reject (InputError, nothing submitted)."""
    script = script or listing.script
    problems = unknown_knob_errors(planned, listing, source)
    if problems:
        raise InputError("\n".join(problems))
    distinct = list({exp.config_key: exp for exp in planned}.values())
    if not distinct:
        return
    stdin = json.dumps([knob_values(exp.config) for exp in distinct])
    stdout = _run_workload(Path(snapshot_root), script, "--check-knobs", stdin)
    problems = value_errors(distinct, _json_output(stdout, script, "--check-knobs"), source, script)
    if problems:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more")
        raise InputError("\n".join(shown))


# ---- configurations compared after filling in defaults ---------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def normal_value(value: Any, kind: str) -> str | None:
    """A knob value in one spelling per meaning ("0.040" and "0.04" alike); None if it does not parse."""
    text = str(value).strip()
    try:
        if kind == "float":
            return repr(float(text))
        if kind == "int":
            number = float(text)
            return str(int(number)) if number == int(number) else None
        if kind == "bool":
            low = text.lower() if not isinstance(value, bool) else ("1" if value else "0")
            return "1" if low in _TRUE else "0" if low in _FALSE else None
    except (ValueError, OverflowError):
        return None
    return text


def canonical_config(config: dict[str, str], listing: KnobListing) -> dict[str, str]:
    """``config`` with every knob that equals its default left out, values in one spelling (pure).

    Two configurations are the same experiment when they agree after defaults are filled in: a grid
    point ``MATRIX_LR=0.04`` where 0.04 is the default *is* the baseline. A knob counts as default only
    if it equals the default of every preset it may run with (the one ``PRESET`` names, else all), so
    a value that is the default on CPU but not on a GPU stays.
    """
    preset = str(config.get("PRESET", "")).strip()
    out: dict[str, str] = {}
    for name, value in config.items():
        info = listing.knobs.get(name)
        if info is None:
            out[name] = value
            continue
        spelled = normal_value(value, info.type)
        if spelled is None:
            out[name] = value
            continue
        presets = [preset] if preset in info.default else list(info.default)
        defaults = {normal_value(info.default[p], info.type) for p in presets}
        if not (presets and defaults == {spelled}):
            out[name] = spelled
    return out


def canonicalize(planned: list[PlannedExperiment], listing: KnobListing | Callable[[PlannedExperiment], KnobListing],
                 source: str, baseline_description: str = "baseline") -> tuple[list[PlannedExperiment], list[str]]:
    """Give each planned run the key of its canonical configuration and run each configuration once.

    ``listing`` is the code's knob listing, or a function of a planned run to the listing of the
    code it runs (its own snapshot, its variant's, or the wave's). Two planned configurations on the same code that are equal once defaults are
    filled in keep the first one's knobs; if either is the baseline, the merged configuration is the
    baseline (described and labelled so). Returns the runs to submit, in order, and one warning per merge.
    """
    listing_of = listing if callable(listing) else (lambda _snapshot: listing)
    first_of: dict[tuple[str | None, str], PlannedExperiment] = {}
    merged: dict[tuple[str | None, str, int], PlannedExperiment] = {}
    warnings: dict[tuple[str | None, str], str] = {}
    for p in planned:
        key = config_key(canonical_config(p.config, listing_of(p)))
        first = first_of.setdefault((p.snapshot, key), p)
        if config_key(first.config) != config_key(p.config) and (p.snapshot, key) not in warnings:
            is_base = baseline_description in (first.description.strip().lower(), p.description.strip().lower())
            warnings[(p.snapshot, key)] = (f"{source}: `{first.label}` and `{p.label}` are the same configuration "
                                           "once defaults are filled in; it runs once"
                                           + (", as the baseline" if is_base else ""))
        slot = (p.snapshot, key, p.seed)
        kept = merged.get(slot)
        if kept is None:
            merged[slot] = PlannedExperiment(first.config, p.seed, p.description, key, p.label, first.origins,
                                             p.snapshot)
        elif p.description.strip().lower() == baseline_description:
            merged[slot] = PlannedExperiment(kept.config, p.seed, p.description, key, p.description, kept.origins,
                                             kept.snapshot)
    return list(merged.values()), list(warnings.values())
