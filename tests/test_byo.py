"""Bring your own repository: an autoresearch-like checkout (tests/fixtures/byo), driven unchanged.

Its train.py sits at the root with its hyperparameters as plain constants after other code
(`2**19`, a tuple, a string, trailing comments), a fixed prepare.py and a pyproject.toml; it reads no
environment variable and answers no `--knobs`. Its val_bpb is a known function of the constants
(best at MATRIX_LR = 0.04, DEPTH = 6) and its summary echoes the values it ran with, so every test
here checks what really ran, from the run's own output.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from fleet_cli import git, make_byo_project, teardown

from fleet.core.ledger_rows import REPLICATE

GRID = "name: lr\ngrid:\n  MATRIX_LR: [0.03, 0.04, 0.05]\n  DEPTH: [6, 8]\n"


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_byo_project(tmp_path, monkeypatch, capsys)
    yield runner
    teardown(runner)


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def init(fleet) -> dict:
    report = fleet.json("init")
    assert report["written"] == ["fleet.yaml", "experiment.yaml"]
    (fleet.root / "waves").mkdir()
    return report


def test_init_detects_the_layout_and_never_overwrites(fleet):
    report = init(fleet)
    assert (report["workload"], report["script"], report["knobs"], report["install"], report["prepare"]) == (
        ".", "train.py", "constants", "pip", "prepare.py")
    knobs = {k["name"]: k["value"] for k in report["constants"]}
    assert knobs == {"ASPECT_RATIO": "64", "WINDOW_PATTERN": '"SSSL"', "TOTAL_BATCH_SIZE": "2**19",
                     "MATRIX_LR": "0.05", "WEIGHT_DECAY": "0.2", "ADAM_BETAS": "(0.8, 0.95)", "DEPTH": "8"}
    assert {n["name"] for n in report["not_knobs"]} == {"MAX_SEQ_LEN", "TIME_BUDGET"}  # imported from prepare
    seed = report["seed"]
    assert not seed["has_seed"] and "replicates" in seed["advice"] and "unpaired" in seed["advice"]
    assert "-random.seed(42)" in seed["advice"] and "+random.seed(SEED)" in seed["advice"]
    task = (fleet.root / "experiment.yaml").read_text()
    assert "python prepare.py" in task and "python train.py" in task and "uv " not in task
    before = {p: (fleet.root / p).read_text() for p in ("fleet.yaml", "experiment.yaml")}
    (fleet.root / "fleet.yaml").write_text(before["fleet.yaml"] + "# mine\n")
    code, out, err = fleet("init")
    assert code == 0 and "fleet.yaml exists and was kept" in err and "--force" in err
    assert (fleet.root / "fleet.yaml").read_text().endswith("# mine\n")
    assert fleet.json("init", "--force")["written"] == ["fleet.yaml", "experiment.yaml"]
    assert (fleet.root / "fleet.yaml").read_text() == before["fleet.yaml"]


def test_a_grid_of_two_constants_runs_diffs_and_adopts_only_those_constants(fleet):
    init(fleet)
    committed = {p: (fleet.root / p).read_bytes() for p in ("train.py", "prepare.py", "pyproject.toml")}
    fleet.write("waves/lr.yaml", GRID)
    board = fleet.json("wave", "waves/lr.yaml", "--wait")
    rows = board["rows"]
    assert [r["state"] for r in rows] == ["done"] * 6
    assert rows[0]["label"] == "MATRIX_LR=0.04 DEPTH=6"  # the known optimum ranks first
    ledger = fleet.ledger
    for exp in ledger.experiments(wave="lr"):
        ran = ledger.result(exp.id).metrics  # what the run printed it ran with
        assert (ran["matrix_lr"], ran["depth"]) == (float(exp.config["MATRIX_LR"]), float(exp.config["DEPTH"]))
        assert ran["total_batch_size"] == 2**19 and ran["window_pattern"] == "SSSL"  # the rest untouched
        assert exp.seeding == REPLICATE  # no SEED constant: runs are replicates
    assert {r["memory_gb"] for r in rows} == {6.0, 8.0}  # peak_vram_mb feeds memory_gb
    code, tsv, _ = fleet("results", "--format", "tsv")
    lines = {line.split("\t")[0]: line.split("\t") for line in tsv.splitlines()[1:]}
    # status is the verdict on the configuration: none has been validated yet
    assert lines[rows[0]["experiment"]][2:] == ["6.0", "screen", "MATRIX_LR=0.04 DEPTH=6 replicate 0"]

    first, last = ledger.experiment("lr-001"), ledger.experiment("lr-006")
    assert (first.config, last.config) == ({"MATRIX_LR": "0.03", "DEPTH": "6"}, {"MATRIX_LR": "0.05", "DEPTH": "8"})
    diff = fleet.json("diff", "lr-001", "lr-006")["diff"]
    assert "--- a/train.py\n+++ b/train.py\n" in diff
    assert changed_lines(diff) == [
        "-MATRIX_LR = 0.03        # learning rate for matrix parameters (Muon)",
        "+MATRIX_LR = 0.05        # learning rate for matrix parameters (Muon)",
        "-DEPTH = 6               # number of transformer layers",
        "+DEPTH = 8               # number of transformer layers",
    ]

    winner = rows[0]["experiment"]
    dry = fleet.json("adopt", winner, "--dry-run")
    assert dry["dry_run"] and (fleet.root / "train.py").read_bytes() == committed["train.py"]
    adopted = fleet.json("adopt", winner)
    assert adopted["changed"] == ["train.py"] and changed_lines(adopted["diff"]) == changed_lines(dry["diff"])
    assert {d["knob"]: (d["from"], d["to"]) for d in adopted["defaults"]} == {"MATRIX_LR": ("0.05", "0.04"),
                                                                               "DEPTH": ("8", "6")}
    assert changed_lines(git(fleet.root, "diff")) == [
        "-MATRIX_LR = 0.05        # learning rate for matrix parameters (Muon)",
        "+MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)",
        "-DEPTH = 8               # number of transformer layers",
        "+DEPTH = 6               # number of transformer layers",
    ]
    assert git(fleet.root, "status", "--porcelain", "--untracked-files=no") == " M train.py\n"
    assert fleet.json("adopt", winner)["changed"] == []  # adopting it again changes nothing


def variant_branches(fleet) -> None:
    """Three branches, each changing the line that says which code it is (one differently-tuned too)."""
    for name in ("a", "b", "c"):
        git(fleet.root, "checkout", "-q", "-b", f"idea-{name}", "main")
        train = fleet.root / "train.py"
        train.write_text(train.read_text().replace('variant = "baseline"', f'variant = "better-{name}"'))
        git(fleet.root, "commit", "-qam", f"idea {name}")
    git(fleet.root, "checkout", "-q", "main")
    train = (fleet.root / "train.py").read_text()
    patched = train.replace('variant = "baseline"', 'variant = "patched"')
    import difflib

    fleet.write("waves/patched.diff", "".join(difflib.unified_diff(
        train.splitlines(True), patched.splitlines(True), "a/train.py", "b/train.py")))


VARIANTS = """\
name: vars
grid:
  DEPTH: [6, 8]
experiments:
  - {description: baseline}
  - {code: idea-a}
  - {code: idea-b}
  - {code: idea-c, MATRIX_LR: 0.03}
  - {patch: patched.diff}
"""


def test_code_variants_run_their_own_code_and_adopt_merges_without_undoing(fleet):
    init(fleet)
    fleet.write("waves/lr.yaml", GRID)
    grid_winner = fleet.json("wave", "waves/lr.yaml", "--wait")["rows"][0]["experiment"]
    variant_branches(fleet)
    fleet.write("waves/vars.yaml", VARIANTS)
    board = fleet.json("wave", "waves/vars.yaml", "--wait")
    ledger = fleet.ledger
    ran = {}
    for exp in ledger.experiments(wave="vars"):
        metrics = ledger.result(exp.id).metrics
        ran[exp.id] = metrics["variant"]
        expected = {"code": lambda v: "better-" + v.split("@")[0][-1], "patch": lambda v: "patched"}
        kind = next((k for k in ("code", "patch") if k in exp.config), None)
        assert metrics["variant"] == (expected[kind](exp.config[kind]) if kind else "baseline"), exp
        assert metrics["depth"] == float(exp.config.get("DEPTH", 8))
        assert metrics["matrix_lr"] == float(exp.config.get("MATRIX_LR", 0.05))
    # the grid runs on the wave's code and on each variant: 2 depths x (baseline code + 4 variants); the
    # baseline entry is the grid point DEPTH=8 once defaults are filled in, so it runs once, as the baseline
    assert sorted(ran.values()) == sorted(["baseline"] * 2 + ["better-a", "better-b", "better-c", "patched"] * 2)
    labels = {r["label"] for r in board["rows"]}
    assert any(re.fullmatch(r"code=idea-a@[0-9a-f]{8} DEPTH=6", label) for label in labels), labels
    assert any(re.fullmatch(r"patch=patched\.diff@[0-9a-f]{8} DEPTH=8", label) for label in labels), labels

    by_variant = {ran[e.id] + str(e.config.get("DEPTH")): e.id for e in ledger.experiments(wave="vars")}
    # Adopt A (a branch), then B: the grid's winner, whose code predates A. Both stay.
    fleet.json("adopt", by_variant["better-a8"])
    fleet.json("adopt", grid_winner)
    train = (fleet.root / "train.py").read_text()
    assert 'variant = "better-a"' in train and "MATRIX_LR = 0.04 " in train and "DEPTH = 6 " in train

    # A real conflict: idea-b changed the line idea-a changed. Exit 2, and the tree is untouched.
    code, _, err = fleet("adopt", by_variant["better-b8"])
    assert code == 2 and 'train.py, line 15: the working tree has `variant = "better-a"' in err
    assert (fleet.root / "train.py").read_text() == train
    # A knob conflict: it ran MATRIX_LR=0.03 from 0.05; the tree has 0.04 since.
    loser = next(e.id for e in ledger.experiments(wave="lr") if e.config == {"MATRIX_LR": "0.03", "DEPTH": "6"})
    code, _, err = fleet("adopt", loser)
    assert code == 2 and "MATRIX_LR is 0.04 here, changed since the experiment started from 0.05" in err
    assert (fleet.root / "train.py").read_text() == train


BAD = [  # (what the wave or the script says, words of the one-line error)
    ("grid: {DEPTH: [6, 8]}", 'DEPTH = int(os.environ["D"])',
     "`grid.DEPTH`: DEPTH is computed (DEPTH = int(os.environ[\"D\"])"),
    ("grid: {DEPTH: [6, deep]}", None, "`grid.DEPTH[1]` = 'deep': DEPTH must be a whole number"),
    ("env: {ADAM_BETAS: [0.9]}", None, "`env.ADAM_BETAS` = [0.9]: ADAM_BETAS is a tuple of 2"),
    ("env: {ADAM_BETA: [0.9, 0.99]}", None, "`env.ADAM_BETA`: unknown knob; did you mean ADAM_BETAS?"),
    ("experiments:\n  - {code: no-such-branch}", None,
     "`experiments[0].code` = 'no-such-branch': no commit, branch or tag 'no-such-branch'"),
    ("experiments:\n  - {patch: stale.diff}", None,
     "`experiments[0].patch` = 'stale.diff': hunk 1 (`@@ -14,3 +14,3 @@`) of train.py does not apply"),
]

STALE_PATCH = """\
--- a/train.py
+++ b/train.py
@@ -14,3 +14,3 @@
 
-variant = "something else"  # what code this is; code variants of the tests change this line
+variant = "patched"  # what code this is; code variants of the tests change this line
 
"""


@pytest.mark.parametrize("wave, script_line, words", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_submitted(fleet, wave, script_line, words):
    init(fleet)
    if script_line:
        train = fleet.root / "train.py"
        train.write_text(train.read_text().replace("DEPTH = 8 ", f"{script_line} "))
    fleet.write("waves/stale.diff", STALE_PATCH)
    fleet.write("waves/bad.yaml", f"name: bad\n{wave}\n")
    code, out, err = fleet("wave", "waves/bad.yaml")
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert words in err, err
    assert fleet.ledger.waves() == [] and fleet.ledger.clusters() == []


def test_with_a_seed_constant_each_seed_is_written_and_runs_pair(fleet):
    train = fleet.root / "train.py"
    train.write_text(train.read_text().replace("random.seed(42)", "random.seed(SEED)")
                     .replace("DEPTH = 8 ", "SEED = 42              # random seed\nDEPTH = 8 "))
    report = init(fleet)
    assert report["seed"]["has_seed"] and "SEED" in {k["name"] for k in report["constants"]}
    fleet.write("waves/s.yaml", "name: s\nseeds: 2\ngrid:\n  DEPTH: [6, 8]\n")
    fleet.json("wave", "waves/s.yaml", "--wait")
    exps = fleet.ledger.experiments(wave="s")
    assert [(e.config["DEPTH"], e.seed, e.seeding) for e in exps] == [
        ("6", 0, "seed"), ("6", 1, "seed"), ("8", 0, "seed"), ("8", 1, "seed")]
    assert len({e.snapshot for e in exps}) == 4  # one snapshot per configuration and seed
    assert changed_lines(fleet.json("diff", exps[0].id, exps[1].id)["diff"]) == [
        "-SEED = 0              # random seed", "+SEED = 1              # random seed"]


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
def test_a_uv_checkout_runs_through_uv(fleet):
    subprocess.run(["uv", "lock", "--quiet"], cwd=fleet.root, check=True)
    report = init(fleet)
    assert report["install"] == "uv"
    fleet.write("waves/lr.yaml", "name: lr\ngrid:\n  MATRIX_LR: [0.03, 0.04]\n")
    rows = fleet.json("wave", "waves/lr.yaml", "--wait")["rows"]
    assert [r["label"] for r in rows] == ["MATRIX_LR=0.04", "MATRIX_LR=0.03"]
    assert (fleet.root / ".fleet" / "workdir" / ".venv").is_dir()  # one environment, not one per snapshot
