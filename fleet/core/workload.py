"""The workload as fleet.yaml describes it: which directory, which script, which files, which knobs.

Two kinds of workload script are driven unchanged:

- **env** knobs (this project's `train/`): the script answers `--knobs` and `--check-knobs` and reads
  each knob from the environment variable of the same name (`fleet.core.knobs`).
- **constants** (an autoresearch checkout): the script's module-level ALL_CAPS constants are the
  knobs (`fleet.core.constants`); a wave's values are written into each experiment's snapshot.

`knobs: auto` picks env when the script's text mentions `--knobs` (a script that does not answer
the flag must never be run to ask: it would start training), else constants.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from fleet.config import FleetConfig
from fleet.core.snapshot import SnapshotFile, read_tree, store_tree
from fleet.core.snapshot_select import selection
from fleet.errors import InputError


@dataclass(frozen=True)
class Workload:
    project: Path  # the project root (holds fleet.yaml, experiment.yaml, .fleet/)
    directory: Path  # the workload directory (== project for `workload: .`)
    script: str  # the training script, relative to the workload directory
    patterns: tuple[str, ...] | None  # what a snapshot holds; None: everything
    knobs_setting: str  # auto | env | constants, as configured
    include: tuple[str, ...] = ()  # dotfiles or ignored files to snapshot anyway (`snapshot_include`)

    @property
    def name(self) -> str:
        """The directory's name inside a snapshot (`store/<id>/<name>/...`)."""
        return self.directory.resolve().name

    @property
    def prefix(self) -> str:
        """The workload's path from the project root, for diffs and patches ("" at the root)."""
        try:
            rel = self.directory.resolve().relative_to(self.project.resolve()).as_posix()
        except ValueError:
            return self.name
        return "" if rel == "." else rel

    @property
    def script_path(self) -> str:
        """The script's path inside a snapshot (`train/train.py`)."""
        return f"{self.name}/{self.script}"

    def knob_mode(self, files: dict[str, SnapshotFile]) -> str:
        """env or constants for this code (see the module docstring)."""
        if self.knobs_setting != "auto":
            return self.knobs_setting
        script = files.get(self.script)
        return "env" if script is not None and b"--knobs" in script.content else "constants"

    def read(self, strict: bool = True) -> dict[str, SnapshotFile]:
        """The working tree's files that belong in a snapshot: no dotfiles, nothing .gitignore or
        .skyignore excludes, no symlink out of the workload (`fleet.core.snapshot_select`; refused
        when `strict`, else skipped), then only what `snapshot:` names, if it names anything."""
        if not self.directory.is_dir():
            raise InputError(f"workload directory {self.directory} does not exist; set `workload:` in fleet.yaml "
                             "to the directory your experiments run (e.g. `workload: .` or `workload: train`)")
        rules = selection(self.directory, self.project, self.include, strict=strict)
        return select(read_tree(self.directory, rules), self.patterns)

    def snapshot(self, store: Path) -> str:
        """Snapshot the working tree (see `fleet.core.snapshot`); returns its id."""
        files = self.read()
        if self.script not in files:
            raise InputError(f"the training script {self.directory / self.script} is not in the workload"
                             + (f" (or not matched by `snapshot:` in fleet.yaml: {list(self.patterns)})"
                                if self.patterns else "")
                             + "; set `script:` in fleet.yaml, or run `fleet init`")
        return store_tree(self.name, files, store)


def workload_for(project: Path, config: FleetConfig) -> Workload:
    patterns = tuple(config.snapshot) if config.snapshot else None
    return Workload(project, (project / config.workload), config.script, patterns, config.knobs,
                    tuple(config.snapshot_include))


def matches(path: str, pattern: str) -> bool:
    """Does a relative path match a snapshot pattern? `*` stays within one directory, `**` spans any
    number of them, and a pattern that names a directory takes everything below it."""
    pattern = pattern.strip("/")
    parts, pats = path.split("/"), pattern.split("/")
    return _match(parts, pats) or _match(parts[: len(pats)], pats) and len(parts) > len(pats)


def _match(parts: list[str], pats: list[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and _match(parts[1:], pats[1:])


def select(files: dict[str, SnapshotFile], patterns: tuple[str, ...] | list[str] | None) -> dict[str, SnapshotFile]:
    """The files a snapshot holds: all of them, or those matching any pattern."""
    if not patterns:
        return dict(files)
    return {rel: f for rel, f in files.items() if any(matches(rel, p) for p in patterns)}


__all__ = ["Workload", "matches", "select", "workload_for"]
