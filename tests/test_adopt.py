"""`fleet adopt` as a merge: code changes three-way, knob values as defaults three-way, nothing half-written."""
from __future__ import annotations

import os

import pytest

from fleet.core.adopt import AdoptConflict, conflict_blocks, plan_adoption, write_adoption
from fleet.core.knob_block import knob_declarations, set_default
from fleet.core.snapshot import SnapshotFile, read_tree
from fleet.errors import FleetError


def tree(**files: str) -> dict[str, SnapshotFile]:
    """tree(train_py=...) -> {"train.py": ...}; a double underscore is a directory: lib__new_py -> lib/new.py."""
    def path(name: str) -> str:
        return name.replace("__", "/").removesuffix("_py") + ".py"
    return {path(name): SnapshotFile(path(name), False, body.encode()) for name, body in files.items()}


def text(files, name="train.py") -> str:
    return files[name].content.decode()


BASE = "import x\n\ndef f():\n    return 1\n\n\nLR = 0.04  # lr\nDEPTH = 8  # layers\nWD = 0.1\n"


def test_a_code_change_merges_around_later_edits():
    code = BASE.replace("return 1", "return 2")  # the experiment's change
    work = BASE.replace("import x", "import x, y") + "# next idea\n"  # edits made since
    plan = plan_adoption("e1", tree(train_py=BASE), tree(train_py=code), tree(train_py=work), "train.py",
                         "constants", {})
    merged = text(plan.files)
    assert "import x, y" in merged and "return 2" in merged and merged.endswith("# next idea\n")
    assert plan.changed == ["train.py"] and not plan.conflicts
    assert "-    return 1\n+    return 2\n" in plan.diff


def test_the_same_lines_changed_differently_is_a_conflict_naming_the_line():
    code, work = BASE.replace("return 1", "return 2"), BASE.replace("return 1", "return 3")
    plan = plan_adoption("e1", tree(train_py=BASE), tree(train_py=code), tree(train_py=work), "train.py",
                         "constants", {"LR": "0.05"})
    assert plan.conflicts == ("train.py, line 4: the working tree has `return 3`, the experiment `return 2`",)
    assert plan.files == {}


def test_constant_values_are_written_three_way_even_on_adjacent_lines():
    # A text merge would call LR and DEPTH (adjacent lines) a conflict; values are merged one by one.
    work = BASE.replace("LR = 0.04", "LR = 0.05")  # adopted earlier
    plan = plan_adoption("e2", tree(train_py=BASE), tree(train_py=BASE), tree(train_py=work), "train.py",
                         "constants", {"DEPTH": "6", "WD": "0.1"})
    assert not plan.conflicts
    assert text(plan.files) == work.replace("DEPTH = 8  # layers", "DEPTH = 6  # layers")
    assert [(d.name, d.before, d.after) for d in plan.defaults] == [("DEPTH", "8", "6")]


def test_a_constant_changed_since_to_another_value_is_a_conflict():
    work = BASE.replace("LR = 0.04", "LR = 0.05")
    plan = plan_adoption("e3", tree(train_py=BASE), tree(train_py=BASE), tree(train_py=work), "train.py",
                         "constants", {"LR": "0.03"})
    assert plan.conflicts == ("train.py:7: LR is 0.05 here, changed since the experiment started from 0.04; "
                              "it ran with 0.03",)
    same = plan_adoption("e3", tree(train_py=BASE), tree(train_py=BASE), tree(train_py=work), "train.py",
                         "constants", {"LR": "0.05"})
    assert same.files == {} and not same.conflicts  # the tree already has it


def test_files_added_and_removed_by_the_experiment():
    base = tree(train_py=BASE, old_py="gone\n")
    code = tree(train_py=BASE, lib__new_py="new\n")
    plan = plan_adoption("e4", base, code, dict(base), "train.py", "constants", {})
    assert set(plan.files) == {"old.py", "lib/new.py"} and plan.files["old.py"] is None
    edited = tree(train_py=BASE, old_py="changed here\n")
    plan = plan_adoption("e4", base, code, edited, "train.py", "constants", {})
    assert plan.conflicts == ("old.py: removed by the experiment, changed here since",)


def test_env_knobs_become_the_knob_block_default_of_the_preset_it_ran_with():
    block = 'from knobs import Knob\nLR = Knob(0.04, 0.04, 0.04, min=0.0)  # lr\nWD = Knob(0.1, min=0.0)\n'
    plan = plan_adoption("e5", tree(train_py=block), tree(train_py=block), tree(train_py=block), "train.py",
                         "env", {"LR": "0.05", "WD": "0.2"}, preset="cpu")
    assert text(plan.files) == ('from knobs import Knob\nLR = Knob(0.04, 0.05, 0.04, min=0.0)  # lr\n'
                                'WD = Knob(0.1, 0.2, 0.1, min=0.0)\n')
    unknown = plan_adoption("e5", tree(train_py=block), tree(train_py=block), tree(train_py=block), "train.py",
                            "env", {"LR": "0.05"})
    assert unknown.files == {} and "pass --preset" in unknown.notes[0]


@pytest.mark.parametrize("source, preset, value, expected", [
    ("X = Knob(8, 4, 2)\n", "gpu", 16, "X = Knob(16, 4, 2)\n"),
    ("X = Knob(8, 4, 2)\n", "tiny", 4, "X = Knob(8, 4)\n"),  # tiny falls back to cpu
    ("X = Knob(8)\n", "gpu", 9, "X = Knob(9, 8)\n"),  # cpu and tiny keep 8
    ("X = Knob(8, 9)\n", "cpu", 8, "X = Knob(8, 8, 9)\n"),  # tiny fell back to cpu's 9: it keeps it
    ("X = Knob(8, 9, 8)\n", "cpu", 8, "X = Knob(8)\n"),
    ('X = Knob("a", choices=("a", "b"))\n', "gpu", "b", 'X = Knob("b", "a", choices=("a", "b"))\n'),
    ("X = Knob(True, False, False)\n", "cpu", True, "X = Knob(True, True, False)\n"),
    # an expression default is a default like any other, and kept as written where it does not change
    ("X = Knob(2**19, 4096, 1024, min=1)\n", "cpu", 1024, "X = Knob(2**19, 1024, min=1)\n"),
    ("X = Knob(2**19, 4096, 1024)\n", "gpu", 2**18, "X = Knob(262144, 4096, 1024)\n"),
])
def test_knob_block_defaults(source, preset, value, expected):
    decl = knob_declarations(source)["X"]
    assert set_default(source, decl, preset, value) == expected


def test_conflict_blocks_count_working_tree_lines():
    merged = "a\nb\n<<<<<<< working tree\nc\nd\n=======\nC\n>>>>>>> e1\ne\n"
    assert conflict_blocks(merged, "working tree") == [
        "lines 3-4: the working tree has `c ⏎ d`, the experiment `C`"]


def test_write_refuses_a_symlinked_directory_and_writes_nothing(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "train.py").write_text(BASE)
    os.symlink(outside, work / "lib")
    code = tree(train_py=BASE.replace("return 1", "return 2"), lib__x_py="x\n")
    plan = plan_adoption("e6", tree(train_py=BASE), code, read_tree(work), "train.py", "constants", {})
    assert set(plan.files) == {"train.py", "lib/x.py"}
    with pytest.raises(FleetError, match="symbolic link"):
        write_adoption(work, plan)
    assert (work / "train.py").read_text() == BASE and not (outside / "x.py").exists()


def test_write_replaces_files_and_refuses_conflicts(tmp_path):
    (tmp_path / "train.py").write_text(BASE)
    plan = plan_adoption("e7", tree(train_py=BASE), tree(train_py=BASE + "# more\n"), read_tree(tmp_path),
                         "train.py", "constants", {})
    write_adoption(tmp_path, plan)
    assert (tmp_path / "train.py").read_text() == BASE + "# more\n"
    assert os.access(tmp_path / "train.py", os.W_OK)
    bad = plan_adoption("e8", tree(train_py=BASE), tree(train_py="x\n"), tree(train_py="y\n"), "train.py",
                        "constants", {})
    with pytest.raises(AdoptConflict) as info:
        write_adoption(tmp_path, bad)
    assert info.value.exit_code == 2 and (tmp_path / "train.py").read_text() == BASE + "# more\n"
