"""`fleet adopt`: keep an experiment's change, merged into the working tree like `git cherry-pick`.

An experiment records three pieces of code: its **base** (what its change is relative to), its
**code** (base plus its code change: a patch, a branch) and the snapshot it ran (code plus the knob
values written into it). Adopting it:

1. merges the code change into the working tree, file by file, three-way (`git merge-file` with the
   base as the common ancestor): lines changed since the experiment was taken stay changed, so
   adopting A and then B, whose code predates A, keeps both;
2. writes its knob values as the new defaults, each three-way too: a constant (or a `Knob(...)`
   default for the preset it ran with) is rewritten only where the working tree still has the value
   the experiment started from; a knob changed since to something else is a conflict.

A conflict changes nothing: every file is merged in memory first, and only a clean result is
written (each file replaced atomically). Nothing is written outside the workload directory, nor
through a symbolic link.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet.core import constants as const_knobs
from fleet.core import knob_block
from fleet.core.snapshot import SnapshotFile, diff_trees, prefixed
from fleet.errors import FleetError

MERGE_TIMEOUT_S = 60


class AdoptConflict(FleetError):
    """The experiment's change and the working tree's changed the same lines (exit 2, nothing written)."""

    exit_code = 2


@dataclass(frozen=True)
class KnobDefault:
    name: str
    before: str  # as written in the working tree
    after: str


@dataclass(frozen=True)
class Adoption:
    files: dict[str, SnapshotFile | None]  # changed paths -> new content (None: removed)
    defaults: tuple[KnobDefault, ...]
    conflicts: tuple[str, ...]
    diff: str  # the working tree before -> after, as a unified diff
    notes: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> list[str]:
        return sorted(self.files)


# ---- merging one file ------------------------------------------------------------------------------------


def _text(content: bytes) -> str | None:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


def merge_text(ours: str, base: str, theirs: str, labels: tuple[str, str, str]) -> tuple[str, list[str]]:
    """Three-way merge of one text file by `git merge-file`; the merged text and its conflicts."""
    with tempfile.TemporaryDirectory(prefix="fleet-adopt-") as scratch:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(scratch) / name
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        try:
            proc = subprocess.run(["git", "merge-file", "-p", "-L", labels[0], "-L", labels[1], "-L", labels[2],
                                   *paths], capture_output=True, timeout=MERGE_TIMEOUT_S)
        except FileNotFoundError:
            raise FleetError("`fleet adopt` merges with `git merge-file`, and git is not installed") from None
    if proc.returncode < 0 or proc.returncode > 127:
        raise FleetError(f"git merge-file failed: {proc.stderr.decode(errors='replace').strip()}")
    merged = proc.stdout.decode("utf-8")
    return merged, conflict_blocks(merged, labels[0]) if proc.returncode else []


def conflict_blocks(merged: str, ours_label: str) -> list[str]:
    """`line N: working tree has ... / the experiment has ...` for each conflict block in a merge."""
    out, line_no, section = [], 0, None
    ours: list[str] = []
    theirs: list[str] = []
    start = 0
    for line in merged.splitlines():
        if line.startswith("<<<<<<< ") and section is None:
            section, ours, theirs, start = "ours", [], [], line_no + 1
        elif line.startswith("=======") and section == "ours":
            section = "theirs"
        elif line.startswith(">>>>>>> ") and section == "theirs":
            shown_ours = " ⏎ ".join(l.strip() for l in ours) or "(nothing)"
            shown_theirs = " ⏎ ".join(l.strip() for l in theirs) or "(nothing)"
            where = f"line {start}" if len(ours) <= 1 else f"lines {start}-{start + len(ours) - 1}"
            out.append(f"{where}: the working tree has `{shown_ours}`, the experiment `{shown_theirs}`")
            section = None
        elif section == "ours":
            ours.append(line)
            line_no += 1
        elif section == "theirs":
            theirs.append(line)
        else:
            line_no += 1
    return out


def _merge_path(rel: str, base: SnapshotFile | None, code: SnapshotFile | None, work: SnapshotFile | None,
                exp: str) -> tuple[SnapshotFile | None, list[str]]:
    """One path's merge: (its content after the merge, conflicts). Only called where base != code."""
    if work == base:
        return code, []
    if work == code:
        return work, []
    if base is None or code is None or work is None:
        what = ("added here and in the experiment, differently" if base is None
                else "removed by the experiment, changed here since" if code is None
                else "changed by the experiment, removed here since")
        return work, [f"{rel}: {what}"]
    texts = [_text(f.content) for f in (work, base, code)]
    if any(t is None for t in texts):
        return work, [f"{rel}: a binary file changed both here and in the experiment"]
    merged, conflicts = merge_text(texts[0], texts[1], texts[2], ("working tree", f"{exp} base", exp))
    executable = code.executable if work.executable == base.executable else work.executable
    return SnapshotFile(rel, executable, merged.encode("utf-8")), [f"{rel}, {c}" for c in conflicts]


# ---- knob values as defaults -----------------------------------------------------------------------------


def _constant_defaults(source: str, before: str, script: str, values: Mapping[str, str]
                       ) -> tuple[str, list[KnobDefault], list[str]]:
    """Write constant knob values where the working tree still has the value the experiment started from."""
    start = const_knobs.scan_constants(before, script)
    now = const_knobs.scan_constants(source, script)
    writes: dict[str, const_knobs.Value] = {}
    defaults, conflicts = [], []
    for name, text in values.items():
        was = start.knobs.get(name)
        if was is None:
            continue  # checked when the wave was submitted; nothing to compare with
        value = const_knobs.parse_config_value(was, text)
        current = now.knobs.get(name)
        if current is None:
            conflicts.append(f"{script}: {name} is no longer a constant here; the experiment ran with "
                             f"{const_knobs.render_value(value)}")
        elif current.value == value:
            continue
        elif current.value == was.value:
            writes[name] = value
            defaults.append(KnobDefault(name, current.text, const_knobs.render_value(value, current.text)))
        else:
            conflicts.append(f"{script}:{current.line}: {name} is {current.text} here, changed since the experiment "
                             f"started from {was.text}; it ran with {const_knobs.render_value(value)}")
    return const_knobs.rewrite(source, now, writes), defaults, conflicts


def _block_defaults(source: str, before: str, script: str, values: Mapping[str, str], preset: str
                    ) -> tuple[str, list[KnobDefault], list[str], list[str]]:
    """Write env knob values as the `Knob(...)` defaults of `preset`, three-way like constants."""
    defaults, conflicts, notes = [], [], []
    for name, text in values.items():
        was = knob_block.knob_declarations(before).get(name)
        now = knob_block.knob_declarations(source).get(name)
        if was is None or now is None:
            notes.append(f"{name}={text} is not a `{name} = Knob(...)` default in {script}: set it by hand")
            continue
        try:
            value = knob_block.parse_env_value(was, text)
        except ValueError as exc:
            notes.append(f"{name}: {exc}; set it by hand")
            continue
        current, started = now.default(preset), was.default(preset)
        if current == value and type(current) is type(value):
            continue
        if current == started:
            source = knob_block.set_default(source, now, preset, value)
            after = knob_block.knob_declarations(source)[name]
            defaults.append(KnobDefault(name, source_span(now), source_span(after)))
        else:
            conflicts.append(f"{script}:{now.line}: {name}'s {preset} default is {current!r} here, changed since "
                             f"the experiment started from {started!r}; it ran with {value!r}")
    return source, defaults, conflicts, notes


def source_span(decl: knob_block.KnobDecl) -> str:
    return f"Knob({', '.join(decl.texts)}, ...)"


# ---- the whole adoption ----------------------------------------------------------------------------------


def plan_adoption(
    experiment: str, base: dict[str, SnapshotFile], code: dict[str, SnapshotFile], work: dict[str, SnapshotFile],
    script: str, knob_mode: str, values: Mapping[str, str], preset: str | None = None, prefix: str = "",
) -> Adoption:
    """What adopting the experiment would do to the working tree `work` (pure, but for git merge-file)."""
    files = dict(work)
    conflicts: list[str] = []
    for rel in sorted(set(base) | set(code)):
        if base.get(rel) == code.get(rel):
            continue
        merged, problems = _merge_path(rel, base.get(rel), code.get(rel), work.get(rel), experiment)
        conflicts += problems
        if merged is None:
            files.pop(rel, None)
        else:
            files[rel] = merged
    defaults: list[KnobDefault] = []
    notes: list[str] = []
    if conflicts:  # the script may hold conflict markers: no knob step on top of a failed merge
        return Adoption({}, (), tuple(conflicts), "")
    if values and script in files and script in code:
        source = files[script].content.decode("utf-8")
        before = code[script].content.decode("utf-8")
        if knob_mode == "constants":
            source, defaults, problems = _constant_defaults(source, before, script, values)
        elif preset is None:
            problems = []
            notes.append(f"which preset {experiment} ran with is unknown (its summary has no `preset:` line), so its "
                         f"knobs ({', '.join(f'{k}={v}' for k, v in values.items())}) are not written as "
                         "defaults; pass --preset gpu|cpu|tiny")
        else:
            source, defaults, problems, notes = _block_defaults(source, before, script, values, preset)
        conflicts += problems
        files[script] = SnapshotFile(script, files[script].executable, source.encode("utf-8"))
    changes = {rel: files.get(rel) for rel in sorted(set(files) | set(work)) if files.get(rel) != work.get(rel)}
    diff = diff_trees(prefixed(work, prefix), prefixed(files, prefix))
    return Adoption(changes, tuple(defaults), tuple(conflicts), diff, tuple(notes))


def _inside(directory: Path, target: Path) -> bool:
    real_dir, real_target = os.path.realpath(directory), os.path.realpath(target)
    return real_target == real_dir or real_target.startswith(real_dir.rstrip(os.sep) + os.sep)


def write_adoption(workload_dir: Path, adoption: Adoption) -> None:
    """Write a clean adoption into the workload directory: checked first, then each file replaced."""
    if adoption.conflicts:
        raise AdoptConflict("\n".join(adoption.conflicts))
    for rel in adoption.files:
        target = workload_dir / rel
        if target.is_symlink() or not _inside(workload_dir, target.parent if not target.exists() else target):
            raise FleetError(f"{workload_dir.name}/{rel} is a symbolic link or leads outside the workload "
                             f"directory {workload_dir}; `fleet adopt` writes only inside it (nothing was changed)")
        for parent in list(target.relative_to(workload_dir).parents)[:-1]:  # [-1] is "." (the workload itself)
            if (workload_dir / parent).is_symlink():
                raise FleetError(f"{workload_dir.name}/{parent} is a symbolic link; `fleet adopt` writes only "
                                 f"inside {workload_dir} (nothing was changed)")
            if (workload_dir / parent).exists() and not (workload_dir / parent).is_dir():
                raise AdoptConflict(f"{parent} is a file here, but the experiment has files under it "
                                    "(nothing was changed)")
    for rel, f in adoption.files.items():
        target = workload_dir / rel
        if f is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # Replace, not rewrite in place: an editor or a running job holding the old file is not disturbed.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(f.content)
        os.chmod(tmp, 0o755 if f.executable else 0o644)
        os.replace(tmp, target)


__all__ = ["AdoptConflict", "Adoption", "KnobDefault", "conflict_blocks", "merge_text", "plan_adoption",
           "write_adoption"]
