"""Code variants of one wave: a git ref's workload (`code:`), or a unified diff applied to the wave's
code (`patch:`), each read into a tree of files that becomes its own snapshot.

Git does the git work: `git ls-tree`/`git cat-file` read a ref's files without touching the working
tree, `git merge-base` finds what a branch's change is relative to (what `fleet adopt` merges), and
`git apply` applies a patch inside a scratch directory, never in the project.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet.core.snapshot import SnapshotFile, read_tree
from fleet.core.workload import Workload, select
from fleet.errors import InputError

GIT_TIMEOUT_S = 60


class VariantError(ValueError):
    """A variant that cannot be built; the message says why (the caller adds where it was named)."""


@dataclass(frozen=True)
class VariantTree:
    value: str  # the variant as a configuration records it: `ref@commit8` or `file@sha8`
    files: dict[str, SnapshotFile]  # its workload, keyed by path relative to the workload directory
    base: dict[str, SnapshotFile] | None  # the code its change is relative to; None: the wave's own code


def _git(cwd: Path, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, timeout=GIT_TIMEOUT_S)
    except FileNotFoundError:
        raise VariantError("needs git, which is not installed") from None
    except subprocess.TimeoutExpired:
        raise VariantError(f"`git {' '.join(args)}` took over {GIT_TIMEOUT_S}s") from None
    if check and proc.returncode != 0:
        raise VariantError(f"`git {' '.join(args)}` failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return proc


def _toplevel(workload: Workload) -> tuple[Path, str]:
    """The repository's root, and the workload's path inside it ("" at the root)."""
    proc = _git(workload.directory, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise VariantError(f"`code:` needs a git repository, and {workload.directory} is not in one "
                           "(use `patch:` with a diff file instead)")
    top = Path(proc.stdout.decode().strip()).resolve()
    rel = workload.directory.resolve().relative_to(top).as_posix()
    return top, "" if rel == "." else rel


def _commit(top: Path, ref: str) -> str:
    if ref.startswith("-"):
        raise VariantError(f"{ref!r} is not a git ref")
    proc = _git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False)
    if proc.returncode != 0:
        raise VariantError(f"no commit, branch or tag {ref!r} in the repository at {top} "
                           "(`git branch -a` and `git tag` list them; commit work in progress first)")
    return proc.stdout.decode().strip()


def _tree_at(top: Path, commit: str, rel: str, workload: Workload) -> dict[str, SnapshotFile]:
    """The workload's files at a commit (regular files; links and submodules are not code to snapshot)."""
    listing = _git(top, "ls-tree", "-r", "-z", "--full-tree", commit, *(["--", rel] if rel else [])).stdout
    entries = []
    for item in listing.split(b"\0"):
        if not item:
            continue
        meta, _, path = item.partition(b"\t")
        mode, kind, sha = meta.decode().split()
        if kind == "blob" and mode in ("100644", "100755"):
            name = path.decode("utf-8", errors="surrogateescape")
            entries.append((name[len(rel) + 1:] if rel else name, mode == "100755", sha))
    contents = _git(top, "cat-file", "--batch", stdin="".join(f"{sha}\n" for _, _, sha in entries).encode()).stdout
    files: dict[str, SnapshotFile] = {}
    pos = 0
    for rel_path, executable, _ in entries:
        header_end = contents.index(b"\n", pos)
        size = int(contents[pos:header_end].split()[2])
        body = contents[header_end + 1: header_end + 1 + size]
        pos = header_end + 1 + size + 1
        files[rel_path] = SnapshotFile(rel_path, executable, body)
    return select(files, workload.patterns)


def ref_variant(workload: Workload, ref: str) -> VariantTree:
    """A git ref's workload, and the code at its merge base with HEAD (what its change is relative to)."""
    top, rel = _toplevel(workload)
    commit = _commit(top, ref)
    files = _tree_at(top, commit, rel, workload)
    if workload.script not in files:
        raise VariantError(f"{ref!r} ({commit[:8]}) has no {workload.prefix + '/' if workload.prefix else ''}"
                           f"{workload.script}")
    fork = _git(top, "merge-base", "HEAD", commit, check=False)
    base = _tree_at(top, fork.stdout.decode().strip(), rel, workload) if fork.returncode == 0 else None
    value = ref if commit.startswith(ref) else f"{ref}@{commit[:8]}"
    return VariantTree(value, files, base)


# ---- patches -------------------------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")
_FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$", re.M)


def hunks(patch: str) -> list[tuple[str, int, int, str]]:
    """(file, hunk number in that file, old start line, header) of each hunk in a unified diff."""
    out = []
    path, number = "", 0
    for line in patch.splitlines():
        if line.startswith("--- "):
            path, number = "", 0
            old = line[4:].split("\t")[0]
            path = old[2:] if old.startswith("a/") else old
        elif line.startswith("+++ ") and path in ("", "/dev/null"):
            new = line[4:].split("\t")[0]
            path = new[2:] if new.startswith("b/") else new
        elif line.startswith("@@"):
            match = _HUNK.match(line)
            if match:
                number += 1
                out.append((path, number, int(match.group(1)), line.split("@@")[1].strip().join(("@@ ", " @@"))))
    return out


def _apply_problem(patch: str, stderr: str) -> str:
    failed = _FAILED.search(stderr)
    if failed:
        path, line = failed.group(1), int(failed.group(2))
        for file, number, start, header in hunks(patch):
            if file == path and start == line:
                return (f"hunk {number} (`{header}`) of {path} does not apply: the lines it changes are not "
                        "in the wave's code (was the diff made against other code?)")
        return f"a hunk of {path} at line {line} does not apply to the wave's code"
    missing = re.search(r"^error: (.+): (?:No such file or directory|does not exist in index)$", stderr, re.M)
    if missing:
        return f"it changes {missing.group(1)}, which is not in the wave's code (or not in `snapshot:`)"
    first = next((l for l in stderr.splitlines() if l.startswith("error:")), stderr.strip() or "git apply failed")
    return first.removeprefix("error: ").strip()


def patch_variant(workload: Workload, base: dict[str, SnapshotFile], patch_file: Path) -> VariantTree:
    """The wave's code with a unified diff applied (paths as `git diff` writes them, from the project root)."""
    try:
        patch = patch_file.read_bytes()
    except OSError as exc:
        raise VariantError(f"cannot read {patch_file}: {exc.strerror}") from None
    text = patch.decode("utf-8", errors="replace")
    with tempfile.TemporaryDirectory(prefix="fleet-patch-") as scratch:
        root = Path(scratch) / "tree"
        where = root / workload.prefix if workload.prefix else root
        for f in base.values():
            target = where / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
            os.chmod(target, 0o755 if f.executable else 0o644)
        # Outside any repository: git apply then patches files in the directory, like `patch -p1`.
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(Path(scratch).resolve())}
        proc = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=root, input=patch, env=env,
                              capture_output=True, timeout=GIT_TIMEOUT_S)
        if proc.returncode != 0:
            raise VariantError(_apply_problem(text, proc.stderr.decode(errors="replace")))
        applied = read_tree(root)
    outside = sorted(p for p in applied if workload.prefix and not p.startswith(workload.prefix + "/"))
    if outside:
        raise VariantError(f"it changes {outside[0]}, outside the workload directory {workload.prefix}/")
    cut = len(workload.prefix) + 1 if workload.prefix else 0
    files = {p[cut:]: SnapshotFile(p[cut:], f.executable, f.content) for p, f in applied.items()}
    if files == base:
        raise VariantError("it changes nothing in the wave's code")
    digest = hashlib.sha256(patch).hexdigest()[:8]
    return VariantTree(f"{patch_file.name}@{digest}", select(files, workload.patterns), None)


def find_patch(name: str, wave_dir: Path, project: Path) -> Path:
    """A `patch:` path: relative to the wave file's directory, else to the project root."""
    for candidate in (wave_dir / name, project / name):
        if candidate.is_file():
            return candidate
    raise VariantError(f"no such file (looked in {wave_dir} and {project})")


def resolve(workload: Workload, key: str, value: str, base: dict[str, SnapshotFile], wave_dir: Path) -> VariantTree:
    if key == "code":
        return ref_variant(workload, value)
    return patch_variant(workload, base, find_patch(value, wave_dir, workload.project))


def describe_error(source: str, where: str, value: str, exc: VariantError) -> InputError:
    return InputError(f"{source}: `{where}` = {value!r}: {exc}")


__all__ = ["VariantError", "VariantTree", "describe_error", "find_patch", "hunks", "patch_variant", "ref_variant",
           "resolve"]
