"""What a snapshot holds: no dotfiles, nothing ignored, no symlink out of the workload; includes bring files back."""
from __future__ import annotations

from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.core.snapshot import read_tree, snapshot_root, take_snapshot
from fleet.core.workload import workload_for
from fleet.errors import InputError


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    work = root / "train"
    (work / "lib").mkdir(parents=True)
    (work / "train.py").write_text("print('train')\n")
    (work / "lib" / "model.py").write_text("DEPTH = 8\n")
    return root


def snapped(project: Path, store: Path, include=()) -> set[str]:
    sid = take_snapshot(project / "train", store, project_root=project, include=include)
    return set(read_tree(snapshot_root(store, sid)))


@pytest.mark.parametrize("setup, left_out", [
    (lambda p: (p / "train" / ".env").write_text("TOKEN=x\n"), ".env"),
    (lambda p: ((p / "train" / ".cache").mkdir(), (p / "train" / ".cache" / "a.bin").write_text("x")), ".cache/a.bin"),
    (lambda p: ((p / "train" / "data").mkdir(), (p / "train" / "data" / "big.bin").write_text("x"),
                (p / ".gitignore").write_text("train/data/\n")), "data/big.bin"),
    (lambda p: ((p / "train" / "out.log").write_text("x"), (p / "train" / ".skyignore").write_text("*.log\n")),
     "out.log"),
    (lambda p: ((p / "train" / "notes.txt").write_text("x"), (p / ".skyignore").write_text("notes.txt\n")),
     "notes.txt"),
])
def test_dotfiles_and_ignored_files_stay_out(project, tmp_path, setup, left_out):
    setup(project)
    files = snapped(project, tmp_path / "store")
    assert left_out not in files and {"train.py", "lib/model.py"} <= files


def test_an_anchored_root_pattern_does_not_reach_into_the_workload(project, tmp_path):
    (project / "train" / "results.tsv").write_text("x")
    (project / ".gitignore").write_text("/results.tsv\n")  # the project's own results.tsv, not train's
    assert "results.tsv" in snapped(project, tmp_path / "store")


def test_snapshot_include_brings_a_left_out_file_back(project, tmp_path):
    (project / "train" / ".config.json").write_text("{}")
    (project / "train" / ".hidden").mkdir()
    (project / "train" / ".hidden" / "vocab.txt").write_text("a b")
    files = snapped(project, tmp_path / "store", include=[".config.json", ".hidden/vocab.txt"])
    assert {".config.json", ".hidden/vocab.txt"} <= files


def test_a_symlink_inside_the_workload_is_followed(project, tmp_path):
    (project / "train" / "model.py").symlink_to(project / "train" / "lib" / "model.py")
    assert "model.py" in snapped(project, tmp_path / "store")


def test_a_symlink_out_of_the_workload_is_refused_with_the_fix(project, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("outside content")
    (project / "train" / "creds").symlink_to(outside)
    with pytest.raises(InputError) as err:
        take_snapshot(project / "train", tmp_path / "store", project_root=project)
    assert "train/creds is a symlink to" in str(err.value) and str(outside) in str(err.value)
    assert "train/.skyignore" in str(err.value)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
    (project / "train" / ".gitignore").write_text("creds\n")
    assert "creds" not in snapped(project, tmp_path / "store")


def test_a_linked_directory_out_of_the_workload_is_refused_too(project, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shard.bin").write_text("x")
    (project / "train" / "data").symlink_to(tmp_path / "data")
    with pytest.raises(InputError, match="train/data is a symlink"):
        take_snapshot(project / "train", tmp_path / "store", project_root=project)


def test_the_workload_reads_the_same_selection_and_adopt_skips_what_a_snapshot_refuses(project, tmp_path):
    """`fleet wave` and `fleet adopt` read the working tree through the same rules; adopt (not
    strict) skips a link out of the workload instead of refusing, so it never touches it."""
    (project / "train" / ".env").write_text("TOKEN=x\n")
    (project / "train" / "scratch.txt").write_text("mine")
    (project / "train" / ".skyignore").write_text("scratch.txt\n")
    (project / "train" / "cfg.json").write_text("{}")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    (project / "train" / "link").symlink_to(outside)
    workload = workload_for(project, FleetConfig(snapshot_include=["cfg.json"]))
    assert set(workload.read(strict=False)) == {"train.py", "lib/model.py", "cfg.json"}
    with pytest.raises(InputError, match="train/link is a symlink"):
        workload.read()
    narrowed = workload_for(project, FleetConfig(snapshot=["*.py"]))  # `snapshot:` narrows what is left
    assert set(narrowed.read(strict=False)) == {"train.py"}
