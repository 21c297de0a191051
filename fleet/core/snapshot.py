"""Content-addressed snapshots of the workload directory.

A snapshot is `store/<id>/<workload name>/...`, where id = the first 16 hex digits of a sha256 over
the workload's name and its files' sorted (relative path, executable bit, content). The same code
always gives the same id and is stored once, so the user can keep editing while experiments queue.

Snapshots are written into a temporary directory inside `store` and renamed into place: rename is
atomic, so concurrent `fleet` processes snapshotting the same code end up with one complete copy
(the losers discard theirs), and a reader never sees a half-written snapshot.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.core.snapshot_select import Selection, selected_files, selection
from fleet.errors import FleetError, InputError

ID_LENGTH = 16
IGNORED_NAMES = frozenset({"__pycache__", ".DS_Store"})
IGNORED_SUFFIXES = (".pyc",)


@dataclass(frozen=True)
class SnapshotFile:
    path: str  # relative, with "/" separators
    executable: bool
    content: bytes


def _ignored(name: str, is_dir: bool) -> bool:
    return name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def read_tree(root: Path, select: Selection | None = None) -> dict[str, SnapshotFile]:
    """The files of a directory that belong in a snapshot, keyed by relative path.

    Content is read once and kept, so the id and the copy describe the same bytes even if the user
    saves a file mid-snapshot. With `select` (a workload directory), its rules decide which files
    (`fleet.core.snapshot_select`); without, every file but caches is read (a snapshot's own tree).
    """
    if select is not None:
        return {rel: SnapshotFile(rel, bool(full.stat().st_mode & stat.S_IXUSR), full.read_bytes())
                for rel, full in selected_files(select)}
    files: dict[str, SnapshotFile] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if not _ignored(d, True) and not os.path.islink(os.path.join(dirpath, d))
        )
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if _ignored(name, False) or not full.is_file():
                continue
            rel = full.relative_to(root).as_posix()
            executable = bool(full.stat().st_mode & stat.S_IXUSR)
            files[rel] = SnapshotFile(rel, executable, full.read_bytes())
    return files


def snapshot_id(name: str, files: dict[str, SnapshotFile]) -> str:
    digest = hashlib.sha256(f"skyfleet-snapshot-v1\0{name}\0".encode())
    for rel in sorted(files):
        f = files[rel]
        # Length-prefixed fields: no two different trees can serialize to the same byte stream.
        head = f"{len(rel.encode())}:{rel}\0{'x' if f.executable else '-'}\0{len(f.content)}\0"
        digest.update(head.encode())
        digest.update(f.content)
    return digest.hexdigest()[:ID_LENGTH]


def _write_files(root: Path, files: dict[str, SnapshotFile], read_only: bool) -> None:
    for f in files.values():
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
        mode = 0o755 if f.executable else 0o644
        os.chmod(target, mode & ~0o222 if read_only else mode)


def take_snapshot(workload_dir: Path, store: Path, *, project_root: Path | None = None,
                  include: Sequence[str] = ()) -> str:
    """Snapshot `workload_dir` into `store`; returns its id (existing snapshots are reused).

    Dotfiles, ignored files and symlinks leaving the workload stay out (`snapshot_select`).
    """
    workload_dir = Path(workload_dir)
    if not workload_dir.is_dir():
        raise InputError(
            f"workload directory {workload_dir} not found; set `workload:` in fleet.yaml to the directory "
            "your experiments run (e.g. `workload: train`)"
        )
    return store_tree(workload_dir.name, read_tree(workload_dir, selection(workload_dir, project_root, include)),
                      store)


def store_tree(name: str, files: dict[str, SnapshotFile], store: Path) -> str:
    """Store a tree (files keyed by path relative to the workload) as snapshot `store/<id>/<name>/`."""
    sid = snapshot_id(name, files)
    target = Path(store) / sid
    if target.is_dir():
        return sid
    Path(store).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sid}-", dir=store))
    try:
        _write_files(tmp / name, files, read_only=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sid


def snapshot_root(store: Path, sid: str) -> Path:
    """The workload directory inside a snapshot (`store/<id>/<workload name>`)."""
    base = Path(store) / sid
    if not base.is_dir():
        raise FleetError(f"snapshot {sid} not found in {store}; it may have been deleted (run `fleet status`)")
    inner = [p for p in base.iterdir() if p.is_dir()]
    if len(inner) != 1:
        raise FleetError(f"snapshot {sid} in {store} is damaged: expected one workload directory, found {len(inner)}")
    return inner[0]


def _text_lines(content: bytes) -> list[str] | None:
    try:
        return content.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _mode(f: SnapshotFile) -> str:
    return "100755" if f.executable else "100644"


def _file_diff(rel: str, old: SnapshotFile | None, new: SnapshotFile | None) -> list[str]:
    out = [f"diff --git a/{rel} b/{rel}\n"]
    if old is None:
        out.append(f"new file mode {_mode(new)}\n")
    elif new is None:
        out.append(f"deleted file mode {_mode(old)}\n")
    elif old.executable != new.executable:
        out += [f"old mode {_mode(old)}\n", f"new mode {_mode(new)}\n"]
    a_content = old.content if old else b""
    b_content = new.content if new else b""
    if a_content == b_content:
        return out
    a_name, b_name = f"a/{rel}" if old else "/dev/null", f"b/{rel}" if new else "/dev/null"
    a_lines, b_lines = _text_lines(a_content), _text_lines(b_content)
    if a_lines is None or b_lines is None:
        return out + [f"Binary files {a_name} and {b_name} differ\n"]
    body = difflib.unified_diff(a_lines, b_lines, fromfile=a_name, tofile=b_name)
    for line in body:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return out


def diff_trees(a: dict[str, SnapshotFile], b: dict[str, SnapshotFile]) -> str:
    """A git-style unified diff from tree a to tree b (pure); "" when they are the same."""
    out: list[str] = []
    for rel in sorted(set(a) | set(b)):
        old, new = a.get(rel), b.get(rel)
        if old != new:
            out += _file_diff(rel, old, new)
    return "".join(out)


def prefixed(files: dict[str, SnapshotFile], prefix: str) -> dict[str, SnapshotFile]:
    """A tree keyed by paths under `prefix` (`train/train.py`); the same tree for an empty prefix."""
    if not prefix:
        return dict(files)
    return {f"{prefix}/{rel}": SnapshotFile(f"{prefix}/{rel}", f.executable, f.content) for rel, f in files.items()}


def snapshot_diff(store: Path, a: str, b: str, prefix: str | None = None) -> str:
    """How snapshot b differs from snapshot a, as a unified diff with `a/...` and `b/...` paths.

    Paths start with `prefix` (default: the workload's name; "" for a workload at the project root,
    so the diff reads like `git diff` there).
    """
    if a == b:
        return ""
    root_a, root_b = snapshot_root(store, a), snapshot_root(store, b)
    return diff_trees(prefixed(read_tree(root_a), root_a.name if prefix is None else prefix),
                      prefixed(read_tree(root_b), root_b.name if prefix is None else prefix))
