"""Every shell command the docs show either runs here or says why it cannot; every link they make resolves.

Fenced ```bash blocks of README.md, docs/**/*.md, instructions.md and skills/**/SKILL.md are split into command
lines (`\\` continuations joined, comment lines skipped). Each line is either

- a `fleet ...` command, run in order against the local backend in one scratch project that uses the
  tiny workload (tests/fixtures/tinywork), and required to exit 0; or
- marked on the line with `# needs: <what>` (one of NEEDS), because it needs an install, a real
  cluster, real training, git or an agent. Every `fleet` invocation inside a marked line is still
  parsed by `fleet`'s own argument parser, so a renamed command or flag fails here.

Placeholders (PLACEHOLDERS) are replaced by real ids of a screen wave, its promote wave and an
ablation that the test runs first. A wave file a command names (`fleet wave waves/lr-wd.yaml`) is
written as a tiny stand-in wave of the same name. Wave and fleet.yaml examples in ```yaml blocks are
validated against the real workload's knobs and the real config model.

README.md is the front page: it leads with the two set-up commands, stays under README_MAX_BYTES and
links every page of docs/ (one click to any reference page). Every relative Markdown link in the docs
(README.md, AGENTS.md, docs/, instructions.md, skills/) names a file that exists and, for a Markdown
file, a heading that exists in it (GitHub's anchors).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fleet.cli.main import build_parser, main
from fleet.config import FleetConfig
from fleet.core.expand import expand_wave
from fleet.core.knobs import check_wave_knobs, load_knob_listing
from fleet.core.wave import TOP_LEVEL_KEYS, load_wave
from fleet.errors import InputError
from fleet.research.search_checks import probe_experiments, resolve_space, warmdown_problems

REPO = Path(__file__).resolve().parent.parent
TINYWORK = Path(__file__).parent / "fixtures" / "tinywork"
REFERENCE = sorted(str(p.relative_to(REPO)) for p in REPO.glob("docs/**/*.md"))
DOCS = ["README.md", *REFERENCE, "instructions.md",
        *sorted(str(p.relative_to(REPO)) for p in REPO.glob("skills/**/SKILL.md"))]
# Where relative links are checked: the docs above, plus every other Markdown file a reader lands on.
LINKED_DOCS = sorted({*DOCS, "AGENTS.md", *(str(p.relative_to(REPO)) for p in REPO.glob("skills/**/*.md"))})
README_MAX_BYTES = 12_000
NEEDS = {
    "install": "installs software or builds the environment (slow, changes the machine)",
    "cluster": "a real SkyPilot API server and a Kubernetes cluster",
    "train": "real training or data preparation with the real workload",
    "git": "a git commit in the user's repository",
    "agent": "a coding agent (claude, codex)",
}
MARKER = re.compile(r"#\s*needs:\s*([a-z-]+)")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|"}
# A stand-in for any wave file the docs name: tiny budgets, knobs the tiny workload knows, a baseline.
STAND_IN_WAVE = """\
env: {TIME_BUDGET: 0.01}
grid:
  MATRIX_LR: [0.02, 0.04]
  WEIGHT_DECAY: [0.0, 0.1]
experiments:
  - {MATRIX_LR: 0.01, description: baseline}
"""


@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str  # the command with continuations joined, comment included
    marker: str | None

    @property
    def command(self) -> str:
        return _strip_comment(self.text).strip()

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def _strip_comment(text: str) -> str:
    """The part of a shell line before an unquoted `#` that starts a word."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


def fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(first line number, body) of each ```language block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start, body = i + 2, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def doc_commands(doc: str) -> list[DocCommand]:
    out = []
    for start, body in fenced_blocks((REPO / doc).read_text(), "bash"):
        pending, first = "", None
        for offset, raw in enumerate(body.splitlines()):
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            first = first if pending else start + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            text = pending + line
            pending = ""
            found = MARKER.search(text[len(_strip_comment(text)):])
            out.append(DocCommand(doc, first, text, found.group(1) if found else None))
    return out


def fleet_invocations(command: str) -> list[tuple[dict[str, str], list[str]]]:
    """Each `fleet ...` (or `.venv/bin/fleet ...`) in a shell line: (env assignments, argv after `fleet`)."""
    out = []
    segment: list[str] = []
    for token in [*shlex.split(command), "&&"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        env = {}
        while segment and ENV_ASSIGNMENT.match(segment[0]):
            key, _, value = segment.pop(0).partition("=")
            env[key] = value
        if segment and (segment[0] == "fleet" or segment[0].endswith("/fleet")):
            out.append((env, segment[1:]))
        segment = []
    return out


def is_plain_fleet(command: str) -> bool:
    """`fleet ARGS` with optional leading VAR=value assignments, and nothing else (no pipes, no &&)."""
    tokens = shlex.split(command)
    if any(t in SEPARATORS for t in tokens):
        return False
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens.pop(0)
    return tokens[:1] == ["fleet"]


def parse_fleet_args(argv: list[str]) -> None:
    try:
        args = build_parser().parse_args(argv)
    except InputError as exc:
        raise AssertionError(str(exc)) from None
    assert getattr(args, "func", None), f"`fleet {' '.join(argv)}` names no command"


# ---- the static checks -------------------------------------------------------------------------


def runs_fleet(doc: str) -> bool:
    """Whether a doc shows a `fleet` command without a `# needs:` marker (so it runs here)."""
    return any(c.marker is None for c in doc_commands(doc))


RUNNABLE_DOCS = [doc for doc in DOCS if runs_fleet(doc)]


def test_every_doc_has_commands():
    assert {"README.md", "instructions.md", "skills/fleet/SKILL.md", "skills/skypilot/SKILL.md"} <= set(DOCS)
    for doc in DOCS:
        # A reference page may be prose alone (docs/concepts.md); the front page and the agent docs may not.
        if doc not in REFERENCE:
            assert doc_commands(doc), f"{doc} has no ```bash commands"
    # The reference pages are checked too, and their fleet commands run against the local backend.
    assert {"docs/cli.md", "docs/wave-files.md", "docs/workload.md", "docs/kubernetes.md"} <= set(REFERENCE)
    assert {"README.md", "docs/cli.md", "docs/local-backend.md", "docs/observe.md", "docs/statistics.md"} <= set(RUNNABLE_DOCS)


def test_readme_leads_with_the_two_setup_commands():
    first = doc_commands("README.md")[:2]
    assert [c.command for c in first] == [
        "bash scripts/install.sh && .venv/bin/fleet wave examples/quickstart.yaml --wait",
        "bash scripts/install.sh && .venv/bin/python -m pytest -q -n 2",
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q -n 2" in ci  # CI runs the README's test command


@pytest.mark.parametrize("doc", DOCS)
def test_commands_are_fleet_or_marked(doc):
    problems = []
    for cmd in doc_commands(doc):
        if cmd.marker is not None and cmd.marker not in NEEDS:
            problems.append(f"{cmd}: unknown marker `needs: {cmd.marker}`; known: {', '.join(NEEDS)}")
        invocations = fleet_invocations(cmd.command)
        if cmd.marker is None and not is_plain_fleet(cmd.command):
            problems.append(f"{cmd}: not a plain `fleet` command; add `# needs: <{'|'.join(NEEDS)}>` to the line")
        for _, argv in invocations:
            try:
                parse_fleet_args(argv)
            except AssertionError as exc:
                problems.append(f"{cmd}: {exc}")
    assert not problems, "\n".join(problems)


def test_the_parser_check_catches_a_renamed_flag():
    with pytest.raises(AssertionError, match="unrecognized arguments"):
        parse_fleet_args(["promote", "w", "--top-k", "3"])
    with pytest.raises(AssertionError, match="invalid choice"):
        parse_fleet_args(["promot", "w"])
    assert fleet_invocations("bash x.sh && FLEET_DEBUG=1 .venv/bin/fleet status --json | head") == [
        ({"FLEET_DEBUG": "1"}, ["status", "--json"])]


@pytest.mark.parametrize("doc", [d for d in DOCS if d.endswith("SKILL.md")])
def test_skill_front_matter(doc):
    text = (REPO / doc).read_text()
    assert text.startswith("---\n"), f"{doc} must start with YAML front matter"
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert isinstance(meta, dict) and {"name", "description"} <= set(meta), f"{doc}: front matter needs name, description"
    assert meta["name"] == Path(doc).parent.name and 20 < len(meta["description"]) <= 1024
    assert len(text.splitlines()) < 500, f"{doc} is over 500 lines"


@pytest.fixture(scope="module")
def knob_listing():
    return load_knob_listing(REPO)


def yaml_examples():
    for doc in DOCS:
        for start, body in fenced_blocks((REPO / doc).read_text(), "yaml"):
            yield pytest.param(doc, body, id=f"{doc}:{start}")


@pytest.mark.parametrize(("doc", "body"), list(yaml_examples()))
def test_yaml_examples_are_valid(doc, body, knob_listing, tmp_path):
    data = yaml.safe_load(body)
    assert isinstance(data, dict), f"{doc}: a ```yaml block is not a mapping"
    fleet_fields = set(FleetConfig.model_fields)
    if "queue_depth" in data or "tiers" in data or (set(data) <= fleet_fields and not set(data) <= set(TOP_LEVEL_KEYS)):
        # a fleet.yaml example (whole, or the fields one section is about)
        FleetConfig.model_validate(data)
        return
    assert set(data) <= set(TOP_LEVEL_KEYS), f"{doc}: neither a wave file nor fleet.yaml: {sorted(data)}"
    path = tmp_path / "wave.yaml"
    path.write_text(body)
    config = FleetConfig()
    spec = load_wave(path, config.tiers.keys())
    planned = expand_wave(spec, config.tiers[spec.tier].seeds)
    check_wave_knobs(planned, knob_listing, REPO, f"{doc} example")
    spec, problems = resolve_space(spec, knob_listing)  # a search space and early stopping, as `fleet wave` checks
    problems += warmdown_problems(spec.early_stop, spec, knob_listing, "early_stop")
    assert not problems, problems
    if spec.search is not None:
        check_wave_knobs(probe_experiments(spec), knob_listing, REPO, f"{doc} example")


def test_moved_examples_are_validated():
    """The wave-file and fleet.yaml references live in docs/; their examples are among those validated."""
    examples = [(p.values[0], yaml.safe_load(p.values[1])) for p in yaml_examples()]
    assert any(doc == "docs/wave-files.md" and "grid" in data for doc, data in examples)
    assert any(doc == "docs/configuration.md" and "queue_depth" in data for doc, data in examples)


def test_workload_knob_table_matches_the_workload(knob_listing):
    text = (REPO / "docs" / "workload.md").read_text()
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| (\w+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", text, re.M)
    table = {name: (kind, gpu.strip(), cpu.strip(), tiny.strip()) for name, kind, gpu, cpu, tiny in rows}
    data = json.loads(subprocess.run([sys.executable, "train/train.py", "--knobs"], cwd=REPO, capture_output=True,
                                     text=True, check=True).stdout)

    def shown(v):
        return ("1" if v else "0") if isinstance(v, bool) else str(v)

    expected = {n: (k["type"], *(shown(k["default"][p]) for p in ("gpu", "cpu", "tiny")))
                for n, k in data["knobs"].items()}
    assert table == expected, "docs/workload.md's knob table differs from `python train/train.py --knobs`"


def test_examples_are_valid_waves(knob_listing):
    config = FleetConfig()
    for path in sorted((REPO / "examples").glob("*.yaml")):
        spec = load_wave(path, config.tiers.keys())
        check_wave_knobs(expand_wave(spec, config.tiers[spec.tier].seeds), knob_listing, REPO, str(path))


# ---- the front page and its links -------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")  # [text](target) and ![alt](target); no titles in our docs
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def outside_fences(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# Journal` inside an example is no heading, a link there no link)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is None:
            out.append(line)
    return out


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lowercase, punctuation dropped (not - or _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a Markdown text; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in outside_fences(text):
        if found := HEADING.match(line):
            slug = github_anchor(found.group(2))
            out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return out


def relative_links(text: str) -> list[str]:
    """Link targets that point into the repository (not http(s), mailto or other schemes); code spans hold none."""
    lines = [re.sub(r"`[^`]*`", "", line) for line in outside_fences(text)]
    targets = [m.group(1) for line in lines for m in LINK.finditer(line)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(path: Path, text: str) -> list[str]:
    """Each relative link in `text` (the file at `path`) whose file or #anchor does not exist."""
    problems = []
    for target in relative_links(text):
        file_part, _, anchor = target.partition("#")
        if not file_part:  # a heading of this very page
            if anchor not in anchors(text):
                problems.append(f"{path.name}: link to {target}: no heading #{anchor} in {path.name}")
            continue
        dest = (path.parent / file_part).resolve()
        if not dest.exists():
            problems.append(f"{path.name}: link to {target}: no file {file_part}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{path.name}: link to {target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_relative_links_resolve(doc):
    text = (REPO / doc).read_text()
    assert not broken_links(REPO / doc, text), "\n".join(broken_links(REPO / doc, text))


def test_the_link_check_catches_a_missing_file_or_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text("# The `fleet` command\n\n## Exit codes\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "README.md"
    good = "[cli](docs/cli.md), [codes](docs/cli.md#exit-codes), [top](docs/cli.md#the-fleet-command), [x](#a-b)"
    assert broken_links(page, "# A: b\n" + good + " `[code](nowhere.md)` [web](https://example.com/x.md)") == []
    bad = broken_links(page, "[a](docs/missing.md) [b](docs/cli.md#exit-code) [c](docs/cli.md#not-a-heading) [d](#nope)")
    assert [p.split(": ", 2)[-1] for p in bad] == [
        "no file docs/missing.md", "no heading #exit-code in cli.md", "no heading #not-a-heading in cli.md",
        "no heading #nope in README.md"]


def test_repeated_headings_get_numbered_anchors():
    assert anchors("## Cost\n\n## Cost\n\n### Cost\n") == {"cost", "cost-1", "cost-2"}
    assert github_anchor("Output: `--json`, `-q`, hints") == "output---json--q-hints"
    assert github_anchor("`bench/control_plane.py`") == "benchcontrol_planepy"


def test_readme_is_a_front_page():
    size = len((REPO / "README.md").read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; keep it a front page (< {README_MAX_BYTES}) and move reference to docs/"
    linked = {(REPO / target.partition("#")[0]).resolve() for target in relative_links((REPO / "README.md").read_text())}
    unlinked = [doc for doc in REFERENCE if (REPO / doc).resolve() not in linked]
    assert not unlinked, f"README.md must link every reference page (one click away): {unlinked}"


# ---- running the commands ----------------------------------------------------------------------


class Project:
    """A scratch copy of the tiny workload, driven in-process through `fleet.cli.main.main`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids: dict[str, str] = {}

    def fleet(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return code, out.getvalue(), err.getvalue()

    def json(self, *argv: str):
        code, out, err = self.fleet([*argv, "--json"])
        assert code == 0, err
        return json.loads(out)

    def substitute(self, command: str) -> str:
        for placeholder in sorted(self.ids, key=len, reverse=True):
            command = re.sub(rf"\b{placeholder}\b", self.ids[placeholder], command)
        return command

    def stand_in_waves(self, argv: list[str]) -> None:
        if argv[:1] == ["wave"]:
            for arg in argv[1:]:
                if arg.endswith((".yaml", ".yml")):
                    path = self.root / arg
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(STAND_IN_WAVE)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs") / "project"
    shutil.copytree(TINYWORK, root)
    cwd, saved = os.getcwd(), {k: os.environ.get(k) for k in ("FLEET_ROOT", "FLEET_LOCAL_ACCELERATORS", "FLEET_BACKEND")}
    os.chdir(root)
    os.environ.update(FLEET_ROOT=str(root), FLEET_LOCAL_ACCELERATORS="H100,H100,H200,H200,H200,H200")
    os.environ.pop("FLEET_BACKEND", None)
    p = Project(root)
    try:
        # The state the placeholders refer to: a finished screen wave, its promotion and an ablation.
        (root / "base.yaml").write_text(STAND_IN_WAVE)
        board = p.json("wave", "base.yaml", "--wait")
        best = next(r for r in board["rows"] if r["rank"] == 1)
        p.json("promote", "base", "--top", "2", "--seeds", "2", "--wait")
        p.json("ablate", best["experiment"], "--seeds", "2", "--wait")
        # The README's tour promotes the quick start's wave by name.
        (root / "quickstart.yaml").write_text(STAND_IN_WAVE)
        p.json("wave", "quickstart.yaml", "--wait")
        p.ids = {"WAVE": "base", "EXP": best["experiment"], "EXP_A": "base-001", "EXP_B": "base-002",
                 "CLUSTER": "local-01"}
        yield p
    finally:
        p.fleet(["down", "--all", "-y"])
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("doc", RUNNABLE_DOCS)
def test_documented_fleet_commands_run(doc, project):
    ran, failures = 0, []
    for cmd in doc_commands(doc):
        if cmd.marker is not None:
            continue
        for env, argv in fleet_invocations(project.substitute(cmd.command)):
            project.stand_in_waves(argv)
            if argv[:1] == ["down"]:  # the docs tear down a fleet that is up; here it may be down already
                project.fleet(["up", "-q"])
            code, out, err = project.fleet(argv, env)
            ran += 1
            if code != 0:
                failures.append(f"{cmd}\n  -> `fleet {shlex.join(argv)}` exited {code}: {err.strip()[-500:]}")
            elif "--json" in argv:
                try:
                    json.loads(out)
                except ValueError:
                    failures.append(f"{cmd}\n  -> --json output is not one JSON document: {out[:200]!r}")
    assert not failures, "\n".join(failures)
    assert ran, f"{doc}: no `fleet` command ran"
