"""Which files of the workload directory a snapshot holds, and so which ones `fleet adopt` may touch.

A snapshot is copied to every cluster, so it holds the code and nothing that merely sits beside it:

- dotfiles and dot-directories (`train/.env`, `train/.cache/`) are left out;
- so is whatever `.gitignore` or `.skyignore` excludes, in the project directory or the workload
  directory (gitignore patterns, read with `pathspec`), plus caches (`__pycache__`, `*.pyc`);
- `snapshot_include` in fleet.yaml (gitignore patterns, relative to the workload directory) brings
  such a file back in, e.g. `snapshot_include: [.config.json]`;
- a symlink is followed only while it stays inside the workload directory. One that leaves it
  (`train/creds -> ~/.aws/credentials`) is refused with an error that says how to fix it, unless it
  is left out anyway; secrets and data outside the workload never travel with the code.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from fleet.errors import InputError

IGNORE_FILES = (".gitignore", ".skyignore")
ALWAYS_LEFT_OUT = frozenset({"__pycache__", ".DS_Store", ".git"})
LEFT_OUT_SUFFIXES = (".pyc",)


def _spec(lines: Iterable[str]) -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines(list(lines))


def _ignore_spec(directory: Path) -> pathspec.PathSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        try:
            lines += (directory / name).read_text(errors="replace").splitlines()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
    return _spec(lines) if any(line.strip() and not line.startswith("#") for line in lines) else None


@dataclass(frozen=True)
class Selection:
    """The rules for one workload directory (see the module docstring)."""

    workload: Path
    ignores: tuple[tuple[str, pathspec.PathSpec], ...] = ()  # (prefix of workload paths, spec) per ignore file
    include: pathspec.PathSpec | None = None
    include_patterns: tuple[str, ...] = ()
    strict: bool = True  # refuse symlinks that leave the workload (a snapshot) or just skip them (adopt)
    _root: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_root", self.workload.resolve())

    def left_out(self, rel: str, is_dir: bool) -> bool:
        """Whether `rel` (a path relative to the workload, "/" separators) stays out of a snapshot."""
        if self.include is not None and not is_dir and self.include.match_file(rel):
            return False
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts):
            return True
        key = rel + "/" if is_dir else rel
        return any(spec.match_file(prefix + key) for prefix, spec in self.ignores)

    def may_include_below(self, rel_dir: str) -> bool:
        """Whether an include pattern could name something inside a directory that is left out."""
        return any(p.startswith(("*", "/*")) or p.lstrip("/").startswith(rel_dir + "/") for p in self.include_patterns)

    def outside(self, path: Path) -> Path | None:
        """Where a symlink points if that is outside the workload directory, else None."""
        target = path.resolve()
        return None if target == self._root or self._root in target.parents else target


def selection(workload: Path, project_root: Path | None = None, include: Sequence[str] = (),
              strict: bool = True) -> Selection:
    """The rules for `workload`: its own ignore files, the project's (when it lies inside the project)."""
    workload = Path(workload)
    ignores: list[tuple[str, pathspec.PathSpec]] = []
    if project_root is not None:
        try:
            prefix = workload.resolve().relative_to(Path(project_root).resolve()).as_posix()
        except ValueError:
            prefix = None
        spec = _ignore_spec(Path(project_root)) if prefix not in (None, ".") else None
        if spec is not None:
            ignores.append((prefix + "/", spec))
    spec = _ignore_spec(workload)
    if spec is not None:
        ignores.append(("", spec))
    patterns = tuple(p for p in include if p.strip())
    return Selection(workload, tuple(ignores), _spec(patterns) if patterns else None, patterns, strict)


def selected_files(selection: Selection) -> Iterator[tuple[str, Path]]:
    """(relative path, path to read) of every file the snapshot holds, sorted within each directory."""
    root = selection.workload
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        kept_dirs = []
        for d in sorted(dirnames):
            rel, full = rel_dir + d, here / d
            if d in ALWAYS_LEFT_OUT:
                continue
            left_out = selection.left_out(rel, True)
            if full.is_symlink():
                if not left_out:
                    _check_link(selection, rel, full)
                continue  # a linked directory inside the workload is in the snapshot by its real path
            if not left_out or selection.may_include_below(rel):
                kept_dirs.append(d)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            rel, full = rel_dir + name, here / name
            if name in ALWAYS_LEFT_OUT or name.endswith(LEFT_OUT_SUFFIXES) or selection.left_out(rel, False):
                continue
            if full.is_symlink() and not _check_link(selection, rel, full):
                continue
            if full.is_file():
                yield rel, full


def _check_link(selection: Selection, rel: str, link: Path) -> bool:
    """True if the link may be followed; refuses (strict) or skips one that leaves the workload."""
    target = selection.outside(link)
    if target is None:
        return True
    if not selection.strict:
        return False
    name = selection.workload.name
    raise InputError(
        f"{name}/{rel} is a symlink to {target}, outside the workload directory {name}/; a snapshot never "
        f"copies files from outside it (they would be synced to every cluster). Copy what the code needs "
        f"into {name}/, or leave the link out with a line `{rel}` in {name}/.skyignore (or .gitignore)")
