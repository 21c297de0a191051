"""`fleet init`'s decisions: what a repository looks like, and the fleet.yaml and task it needs.

Detection reads a handful of files (the script, whether `prepare.py`, `pyproject.toml`, `uv.lock`,
`requirements.txt` exist); rendering is pure text. The task installs the project its own way: with a
`uv.lock`, `uv sync` and `uv run`; otherwise pip and `python`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from fleet.core import constants as const_knobs
from fleet.errors import InputError

SCRIPT_PLACES = ("train.py", "train/train.py")


@dataclass(frozen=True)
class Layout:
    project: str  # the project's directory name, for the task's name
    workload: str  # "." or a subdirectory
    script: str  # relative to the workload
    prepare: str | None  # the fixed data step beside the script, relative to the workload
    uv: bool  # a uv.lock: install with `uv sync`, run with `uv run`
    requirements: str | None  # a requirements file, relative to the workload
    pyproject: bool  # a pyproject.toml in the workload (its dependencies, for pip)
    knobs: str  # env | constants
    snapshot: tuple[str, ...] | None  # fleet.yaml `snapshot:`; None: the whole workload directory
    constants: tuple[const_knobs.Constant, ...] = ()
    not_knobs: tuple[const_knobs.NotAKnob, ...] = ()
    seed_diff: str | None = None  # the change that adds a SEED constant, when the script has none
    notes: tuple[str, ...] = field(default=())


def _is_file(root: Path, rel: str) -> bool:
    return (root / rel).is_file()


def detect(root: Path, script: str | None = None) -> Layout:
    """The layout of the repository at `root` (reads it; runs nothing)."""
    if script is None:
        script = next((p for p in SCRIPT_PLACES if _is_file(root, p)), None)
        if script is None:
            raise InputError(f"no train.py at the root of {root} or in {root / 'train'}; `fleet init` needs the "
                             "training script (or name it: `fleet init --script path/to/train.py`)")
    elif not _is_file(root, script):
        raise InputError(f"--script {script}: no such file in {root}")
    script_dir = str(Path(script).parent.as_posix())
    name = Path(script).name
    uv_at_root = _is_file(root, "uv.lock")
    notes: list[str] = []
    if script_dir != "." and uv_at_root and not _is_file(root, f"{script_dir}/uv.lock"):
        # uv needs its pyproject.toml and uv.lock in the snapshot: snapshot the root, holding both.
        workload, rel_script = ".", script
        patterns: tuple[str, ...] | None = (f"{script_dir}/**", "pyproject.toml", "uv.lock")
    elif script_dir == ".":
        workload, rel_script = ".", name
        present = [p for p in ("pyproject.toml", "uv.lock", "requirements.txt") if _is_file(root, p)]
        patterns = ("*.py", *present)
        notes.append("snapshots hold the root's *.py files" + (f" and {', '.join(present)}" if present else "")
                     + "; add paths under `snapshot:` in fleet.yaml if the script reads other files")
    else:
        workload, rel_script, patterns = script_dir, name, None
    where = root / workload
    base = Path(rel_script).parent.as_posix()
    beside = "" if base == "." else base + "/"
    prepare = f"{beside}prepare.py" if _is_file(where, f"{beside}prepare.py") else None
    requirements = next((r for r in (f"{beside}requirements.txt", "requirements.txt") if _is_file(where, r)), None)
    source = (root / script).read_text(encoding="utf-8", errors="replace")
    knobs = "env" if "--knobs" in source else "constants"
    constants: tuple[const_knobs.Constant, ...] = ()
    rejected: tuple[const_knobs.NotAKnob, ...] = ()
    seed_diff = None
    if knobs == "constants":
        try:
            scan = const_knobs.scan_constants(source, rel_script)
        except const_knobs.ScriptError as exc:
            raise InputError(str(exc)) from None
        constants = tuple(sorted(scan.knobs.values(), key=lambda c: c.line))
        rejected = tuple(sorted(scan.rejected.values(), key=lambda c: c.line))
        changed = const_knobs.seed_change(source, scan)
        if changed is not None:
            seed_diff = "".join(difflib.unified_diff(source.splitlines(True), changed.splitlines(True),
                                                     f"a/{script}", f"b/{script}", n=1))
        elif "SEED" not in scan.knobs:
            seed_diff = ""  # no seed call found to rewrite: the note says what to do by hand
    return Layout(root.resolve().name, workload, rel_script, prepare, _is_file(where, "uv.lock"), requirements,
                  _is_file(where, "pyproject.toml"), knobs, patterns, constants, rejected, seed_diff, tuple(notes))


def _yaml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' if any(c in i for c in "*[]{},:#") else i for i in items) + "]"


def render_fleet_yaml(layout: Layout, metric: str = "val_bpb", direction: str = "minimize") -> str:
    knob_note = {"env": "environment variables the script lists with --knobs",
                 "constants": "the script's ALL_CAPS constants, written into each experiment's snapshot"}
    lines = [
        "# skyfleet settings, written by `fleet init` (every field has a default; edit freely)",
        "task: experiment.yaml          # the SkyPilot task that runs one experiment",
        f"workload: {layout.workload}" + " " * max(1, 21 - len(layout.workload))
        + "# the directory each experiment's code snapshot is taken of",
        f"script: {layout.script}" + " " * max(1, 23 - len(layout.script)) + "# the training script, in the workload",
        f"knobs: {layout.knobs}" + " " * max(1, 24 - len(layout.knobs)) + f"# {knob_note[layout.knobs]}",
    ]
    if layout.snapshot:
        lines.append(f"snapshot: {_yaml_list(layout.snapshot)}  # what a snapshot holds (paths or globs)")
    lines.append(f"metric: {{name: {metric}, direction: {direction}}}  # the summary line experiments are judged by")
    return "\n".join(lines) + "\n"


def render_task(layout: Layout) -> str:
    """The SkyPilot task (`experiment.yaml`) that runs one experiment of this project."""
    enter = 'cd "snapshots/$FLEET_SNAPSHOT"/*/'
    home = "" if layout.workload == "." else f"; else cd {layout.workload}"
    to_code = f'if [ -n "${{FLEET_SNAPSHOT:-}}" ] && [ -d "snapshots/$FLEET_SNAPSHOT" ]; then {enter}{home}; fi'
    if layout.uv:
        runner = "uv run --frozen"
        # Every snapshot shares one environment (uv would otherwise build a .venv in each).
        shared = ['export UV_PROJECT_ENVIRONMENT="${UV_PROJECT_ENVIRONMENT:-$PWD/.venv}"']
        setup = ["set -euo pipefail", *shared, to_code,
                 "command -v uv >/dev/null || python -m pip install --quiet uv "
                 "|| python -m pip install --quiet --break-system-packages uv",
                 "uv sync --frozen"]
    else:
        runner, shared = "python", []
        setup = ["set -euo pipefail", to_code]
        reqs = layout.requirements
        deps = []
        if reqs is None and layout.pyproject:
            reqs = '"${TMPDIR:-/tmp}/fleet-requirements.txt"'
            deps = ["  python -c 'import tomllib; print(\"\\n\".join(tomllib.load(open(\"pyproject.toml\", \"rb\"))"
                    f"[\"project\"].get(\"dependencies\", [])))' > {reqs}"]
        if reqs:
            setup += [
                "# The fleet's local backend runs in the environment it is installed in: no install there.",
                'if [ "${FLEET_BACKEND:-}" != "local" ]; then',
                *deps,
                f"  python -m pip install --quiet -r {reqs} || python -m pip install --quiet "
                f"--break-system-packages -r {reqs}",
                "fi",
            ]
    if layout.prepare:
        setup.append(f"{runner} {layout.prepare}")
    run = ["set -uo pipefail", *shared,
           "# Each experiment runs its own immutable code snapshot; a missing one is a crash, not a run.",
           'if [ -n "${FLEET_SNAPSHOT:-}" ]; then',
           f'  {enter} || {{ echo "snapshot $FLEET_SNAPSHOT is missing from $(pwd)" >&2; exit 1; }}',
           "fi", f"{runner} {layout.script}"]
    head = [
        f"# One experiment of {layout.project}: `{runner} {layout.script}` in the experiment's code snapshot.",
        "# Written by `fleet init`; edit freely. By hand: sky launch -c gpu-01 experiment.yaml",
        f"name: {_task_name(layout.project)}",
        "",
        "resources:",
        "  infra: k8s",
        "  accelerators: {H100: 1, H200: 1}",
        "  image_id: docker:nvcr.io/nvidia/pytorch:25.04-py3",
        "",
        "workdir: .",
        "",
        "envs:",
        "  EXPERIMENT_ID: manual",
        "",
        "# Once per cluster (on the local backend, once per code snapshot): dependencies, then the data.",
        "setup: |",
        *(f"  {line}" for line in setup),
        "",
        "run: |",
        *(f"  {line}" for line in run),
    ]
    return "\n".join(head) + "\n"


def _task_name(project: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in project.lower()).strip("-") or "project"
    return f"{cleaned}-experiment"


def example_wave(layout: Layout) -> str:
    """A first wave over two of the script's knobs (a grid around their current values)."""
    numbers = [c for c in layout.constants if c.kind in ("float", "int") and c.value not in (0, 0.0)]
    numbers.sort(key=lambda c: "LR" not in c.name)  # a learning rate first: the usual first sweep
    floats = [c for c in numbers if c.kind == "float"][:1] + [c for c in numbers if c.kind == "int"][:1]
    chosen = floats or numbers[:2]
    lines = ["name: first", "grid:"]
    for c in chosen:
        if c.kind == "float":
            values = [round(c.value * f, 6) for f in (0.75, 1.0, 1.25)]
        else:
            values = sorted({max(1, int(c.value) // 2), int(c.value), int(c.value) * 2})
        lines.append(f"  {c.name}: [{', '.join(repr(v) for v in values)}]")
    if not chosen:
        return "name: first\nexperiments:\n  - {description: baseline}\n"
    return "\n".join(lines) + "\n"


__all__ = ["Layout", "detect", "example_wave", "render_fleet_yaml", "render_task"]
