"""From planned experiments to the code each one runs: variants built, knobs checked, snapshots written.

A wave starts from one snapshot of the working tree (the wave's code). Then, per experiment:

- its **code**: the wave's code, or its variant's (`code:` a git ref, `patch:` a diff), each a snapshot;
- its **snapshot**, what it runs: for env knobs the code itself (values travel as environment
  variables); for constant knobs the code with each value — and the SEED, when there is a SEED
  constant — written into the script, one content-addressed snapshot per distinct configuration;
- its **base**: the code its change is relative to, which `fleet adopt` merges from (the wave's
  code; for a git ref, the code at its merge base with HEAD);
- its **seeding**: `seed` when the workload has a SEED knob (runs pair by seed), else `replicate`.

Every problem of every experiment is found before anything is written to the ledger, and reported
one line each: nothing is submitted unless all of it is right.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fleet.backends.local import default_slots
from fleet.config import FleetConfig
from fleet.core import constants as const_knobs
from fleet.core.daemon import backend_name
from fleet.core.expand import PlannedExperiment, knob_values, variant_of
from fleet.core.knobs import KnobInfo, KnobListing, check_wave_knobs, load_knob_listing
from fleet.core.ledger_rows import REPLICATE, SEEDED, ExperimentRow, NewExperiment
from fleet.core.snapshot import SnapshotFile, read_tree, snapshot_root, store_tree
from fleet.core.variants import VariantError, resolve
from fleet.core.wave_spec import WaveSpec
from fleet.core.ledger import Ledger
from fleet.core.workload import Workload, workload_for
from fleet.errors import FleetError, InputError
from fleet.types import ClusterState
from fleet.workspace import Workspace

MAX_REPORTED = 10


@dataclass(frozen=True)
class CodeChoice:
    code: str  # snapshot id of the variant's code
    base: str  # snapshot id of the code its change is relative to


@dataclass(frozen=True)
class Prepared:
    experiments: list[NewExperiment]
    knobs: str  # env | constants: how the wave's own code takes its knobs
    default_budget: float | None  # the workload's TIME_BUDGET default, for timeouts and cost


class CodeStore:
    """Trees, knob scans and knob listings of code snapshots, each read once."""

    def __init__(self, workload: Workload, store: Path, assume: Mapping[str, str] | None = None) -> None:
        self.workload = workload
        self.store = Path(store)
        # knob values the runs will resolve to that a check cannot see from here (DEVICE=cpu on a fleet of
        # CPU slots): added where a configuration does not set them, for checking only, never written
        self.assume = dict(assume or {})
        self.files = cache(self._files)
        self.scan = cache(self._scan)
        self.listing = cache(self._listing)

    def _files(self, sid: str) -> dict[str, SnapshotFile]:
        return read_tree(snapshot_root(self.store, sid))

    def mode(self, sid: str) -> str:
        return self.workload.knob_mode(self.files(sid))

    def _scan(self, sid: str) -> const_knobs.ConstantScan:
        script = self.files(sid).get(self.workload.script)
        if script is None:
            raise InputError(f"code {sid} has no {self.workload.script}; set `script:` in fleet.yaml")
        try:
            return const_knobs.scan_constants(script.content.decode("utf-8"), self.workload.script)
        except (UnicodeDecodeError, const_knobs.ScriptError) as exc:
            raise InputError(f"{self.workload.script} in code {sid}: {exc}") from None

    def _listing(self, sid: str) -> KnobListing:
        if self.mode(sid) == "env":
            return load_knob_listing(snapshot_root(self.store, sid).parent, self.workload.script_path)
        scan = self.scan(sid)
        return KnobListing({name: KnobInfo(name, c.kind, {"default": c.value}, c.comment)
                            for name, c in scan.knobs.items()}, self.workload.script)

    def store_files(self, files: dict[str, SnapshotFile]) -> str:
        return store_tree(self.workload.name, files, self.store)


# ---- variants ---------------------------------------------------------------------------------------------


def resolve_variants(spec: WaveSpec, codes: CodeStore, wave_snapshot: str,
                     wave_dir: Path) -> tuple[WaveSpec, dict[str, CodeChoice]]:
    """Build each `code:`/`patch:` variant of the wave into a snapshot; the spec names them by what they
    resolved to (`my-branch@1a2b3c4d`), so that the same name on other code is another configuration."""
    choices: dict[str, CodeChoice] = {}
    entries = []
    problems = []
    wave_files = codes.files(wave_snapshot)
    for index, entry in enumerate(spec.experiments):
        variant = entry.variant
        if variant is None:
            entries.append(entry)
            continue
        key, value = variant
        try:
            tree = resolve(codes.workload, key, value, wave_files, wave_dir)
        except VariantError as exc:
            problems.append(f"{spec.source}: `experiments[{index}].{key}` = {value!r}: {exc}")
            entries.append(entry)
            continue
        code = codes.store_files(tree.files)
        base = codes.store_files(tree.base) if tree.base is not None else wave_snapshot
        choices[tree.value] = CodeChoice(code, base)
        entries.append(dataclasses.replace(entry, **{key: tree.value}))
    if problems:
        raise InputError("\n".join(problems))
    return dataclasses.replace(spec, experiments=entries), choices


def choices_from(experiments: Iterable[ExperimentRow]) -> dict[str, CodeChoice]:
    """The code of each variant that already ran (for promotion and ablation waves)."""
    out: dict[str, CodeChoice] = {}
    for exp in experiments:
        variant = variant_of(exp.config)
        if variant is not None:
            out.setdefault(variant[1], CodeChoice(exp.code, exp.base_snapshot or exp.code))
    return out


# ---- checking and writing knob values ---------------------------------------------------------------------


_ORIGIN = re.compile(r"^(?:env\.(?P<env>\w+)|grid\.(?P<grid>\w+)\[(?P<i>\d+)\]|experiments\[(?P<e>\d+)\]\.(?P<k>\w+))$")


def typed_value(spec: WaveSpec | None, origin: str) -> Any:
    """The value as the wave file gave it (a list stays a list), from its field path; None if unknown."""
    match = _ORIGIN.match(origin or "")
    if spec is None or match is None:
        return None
    if match["env"]:
        return spec.env.get(match["env"])
    if match["grid"]:
        return spec.grid[match["grid"]][int(match["i"])]
    return spec.experiments[int(match["e"])].overrides.get(match["k"])


def constant_problems(planned: list[PlannedExperiment], scan: const_knobs.ConstantScan, source: str,
                      spec: WaveSpec | None) -> list[str]:
    """One line per knob name or value the script's constants cannot take (pure)."""
    out: dict[str, None] = {}
    names = sorted(scan.knobs)
    for exp in planned:
        for name, text in knob_values(exp.config).items():
            origin = exp.origins.get(name, name)
            where = re.sub(r"(\[\d+\]|\.low|\.high|\.choices\[\d+\])$", "", origin)
            if name in scan.rejected:
                why = scan.rejected[name].why
                out.setdefault(f"{source}: `{where}`: {why}, so it is not a knob a wave can set (a knob is an "
                               f"ALL_CAPS constant assigned once at module level, e.g. `{name} = 8`)", None)
                continue
            if name not in scan.knobs:
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}? " if close else ""
                out.setdefault(f"{source}: `{where}`: unknown knob; {hint}(constants of {scan.script}: "
                               f"{', '.join(names) or 'none'})", None)
                continue
            const = scan.knobs[name]
            given = typed_value(spec, origin)
            if given is not None:
                problem = const_knobs.value_problem(const, given)
                if problem:
                    out.setdefault(f"{source}: `{origin}` = {given!r}: {problem}", None)
                continue
            try:
                const_knobs.parse_config_value(const, text)
            except ValueError as exc:
                out.setdefault(f"{source}: `{origin}` = {text!r}: {exc}", None)
    seed = scan.knobs.get("SEED")
    if seed is not None and seed.kind != "int":
        out.setdefault(f"{scan.script}:{seed.line}: SEED is a {seed.kind}, but the fleet writes each run's seed "
                       "(0..seeds-1) into it; make it an int (`SEED = 42`)", None)
    return list(out)


def _written(files: dict[str, SnapshotFile], script: str, scan: const_knobs.ConstantScan,
             values: Mapping[str, Any]) -> dict[str, SnapshotFile]:
    old = files[script]
    source = const_knobs.rewrite(old.content.decode("utf-8"), scan, dict(values))
    return {**files, script: SnapshotFile(script, old.executable, source.encode("utf-8"))}


def code_choice(exp: PlannedExperiment, wave_snapshot: str, choices: Mapping[str, CodeChoice]) -> CodeChoice:
    """The code a planned experiment runs: its own snapshot (a baseline from another commit), its
    variant's, or the wave's."""
    if exp.snapshot is not None:
        return CodeChoice(exp.snapshot, exp.snapshot)
    variant = variant_of(exp.config)
    if variant is None:
        return CodeChoice(wave_snapshot, wave_snapshot)
    if variant[1] in choices:
        return choices[variant[1]]
    raise FleetError(f"the code of variant {variant[0]}={variant[1]} is not known here; "
                     "submit it with `fleet wave` first")


def knob_problems(planned: list[PlannedExperiment], codes: CodeStore, code: str, source: str,
                  spec: WaveSpec | None = None) -> list[str]:
    """One line per knob name or value of `planned` that the code `code` would refuse (nothing is written)."""
    if codes.mode(code) == "env":
        listing = codes.listing(code)
        assumed = {k: v for k, v in codes.assume.items() if k in listing.knobs}
        knobs_only = [dataclasses.replace(e, config=_assuming(knob_values(e.config), assumed)) for e in planned]
        try:
            check_wave_knobs(knobs_only, codes.listing(code), snapshot_root(codes.store, code).parent, source,
                             codes.workload.script_path)
        except InputError as exc:
            return str(exc).splitlines()
        return []
    return constant_problems(planned, codes.scan(code), source, spec)


def prepare_experiments(planned: list[PlannedExperiment], codes: CodeStore, wave_snapshot: str,
                        choices: Mapping[str, CodeChoice], source: str,
                        spec: WaveSpec | None = None) -> Prepared:
    """Check every experiment's knobs against its code, then give each the snapshot it runs."""
    code_of = [code_choice(exp, wave_snapshot, choices) for exp in planned]
    problems: list[str] = []
    by_code: dict[str, list[PlannedExperiment]] = {}
    for exp, choice in zip(planned, code_of):
        by_code.setdefault(choice.code, []).append(exp)
    for code, group in by_code.items():
        problems += knob_problems(group, codes, code, source, spec)
    if problems:
        unique = list(dict.fromkeys(_with_lines(problems, source, spec)))
        shown = unique[:MAX_REPORTED] + ([f"... and {len(unique) - MAX_REPORTED} more"]
                                         if len(unique) > MAX_REPORTED else [])
        raise InputError("\n".join(shown))
    written: dict[tuple, str] = {}
    news = []
    for exp, choice in zip(planned, code_of):
        mode = codes.mode(choice.code)
        seeded = "SEED" in codes.listing(choice.code).knobs
        snapshot = choice.code
        if mode == "constants":
            scan = codes.scan(choice.code)
            values = {name: const_knobs.parse_config_value(scan.knobs[name], text)
                      for name, text in knob_values(exp.config).items()}
            if seeded:
                values["SEED"] = exp.seed
            key = (choice.code, tuple(sorted((k, repr(v)) for k, v in values.items())))
            if key not in written:
                written[key] = codes.store_files(_written(codes.files(choice.code), codes.workload.script, scan,
                                                          values))
            snapshot = written[key]
        news.append(NewExperiment(exp.config, exp.config_key, exp.seed, exp.description, exp.label, snapshot,
                                  choice.code, choice.base, SEEDED if seeded else REPLICATE))
    return Prepared(news, codes.mode(wave_snapshot), _default_budget(codes.listing(wave_snapshot)))


def assumed_knobs(ledger: Ledger, config: FleetConfig) -> dict[str, str]:
    """Knob values every run of this fleet resolves to, which a check made here cannot see: DEVICE=cpu on a
    fleet of CPU slots only, whose runs take the cpu preset's defaults (not also the gpu preset's, which no
    slot of it runs)."""
    clusters = ledger.clusters([ClusterState.UP])
    if clusters:
        accelerators = {c.accelerator for c in clusters}
    elif backend_name(ledger) == "local":
        accelerators = set(default_slots(config))  # the slots the first wave brings up
    else:
        return {}
    return {"DEVICE": "cpu"} if accelerators == {"cpu"} else {}


def fleet_code_store(workspace: Workspace, config: FleetConfig, ledger: Ledger) -> CodeStore:
    """The code store every wave of this fleet is checked and written with: the project's workload, the
    workspace's snapshots, and the knob values its hardware implies (`assumed_knobs`)."""
    return CodeStore(workload_for(workspace.root, config), workspace.snapshots, assume=assumed_knobs(ledger, config))


def _assuming(config: dict[str, str], assumed: Mapping[str, str]) -> dict[str, str]:
    if not assumed or "PRESET" in config or any(k in config for k in assumed):
        return config  # the configuration says itself which preset or device it runs with
    return {**config, **assumed}


def _with_lines(problems: list[str], source: str, spec: WaveSpec | None) -> list[str]:
    """`w.yaml: `grid.K`: …` -> `w.yaml:4: `grid.K`: …`: the line of the field, where the wave file has it."""
    if spec is None or not spec.lines:
        return problems
    out = []
    for problem in problems:
        match = re.match(rf"{re.escape(source)}: `([^`]+)`", problem)
        line = spec.lines.get(match.group(1)) if match else None
        out.append(problem.replace(f"{source}: ", f"{source}:{line}: ", 1) if line else problem)
    return out


def _default_budget(listing: KnobListing) -> float | None:
    """The workload's longest default TIME_BUDGET over its presets (for timeouts and cost)."""
    knob = listing.knobs.get("TIME_BUDGET")
    if not knob or not knob.default:
        return None
    values = [v for v in knob.default.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(max(values)) if values else None


__all__ = ["CodeChoice", "CodeStore", "Prepared", "choices_from", "code_choice", "constant_problems", "knob_problems", "prepare_experiments",
           "resolve_variants", "typed_value"]
