from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from fleet.core.snapshot import (
    read_tree,
    snapshot_diff,
    snapshot_root,
    take_snapshot,
)
from fleet.errors import FleetError, InputError


def make_workload(root: Path) -> Path:
    work = root / "train"
    (work / "lib").mkdir(parents=True)
    (work / "train.py").write_text("LR = 0.04\nprint('train')\n")
    (work / "lib" / "model.py").write_text("DEPTH = 8\n")
    (work / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(work / "run.sh", 0o755)
    return work


@pytest.fixture
def work(tmp_path) -> Path:
    return make_workload(tmp_path / "project")


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


def test_snapshot_layout_and_read_only_files(work, store):
    sid = take_snapshot(work, store)
    assert len(sid) == 16 and all(c in "0123456789abcdef" for c in sid)
    root = store / sid / "train"
    assert snapshot_root(store, sid) == root
    assert (root / "train.py").read_text() == "LR = 0.04\nprint('train')\n"
    assert (root / "lib" / "model.py").exists()
    for path in [root / "train.py", root / "lib" / "model.py", root / "run.sh"]:
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert (root / "run.sh").stat().st_mode & stat.S_IXUSR
    assert not (root / "train.py").stat().st_mode & stat.S_IXUSR
    assert sorted(p.name for p in store.iterdir()) == [sid]  # no temp dirs left behind


def test_same_content_same_snapshot_no_second_copy(work, store):
    first = take_snapshot(work, store)
    (work / "train.py").touch()  # a new mtime is not a new snapshot
    assert take_snapshot(work, store) == first
    assert [p.name for p in store.iterdir()] == [first]


def test_ignored_files_do_not_change_the_snapshot(work, store):
    first = take_snapshot(work, store)
    (work / "__pycache__").mkdir()
    (work / "__pycache__" / "train.cpython-312.pyc").write_bytes(b"\0junk")
    (work / "lib" / "model.pyc").write_bytes(b"\0junk")
    (work / ".DS_Store").write_bytes(b"junk")
    (work / ".git").mkdir()
    (work / ".git" / "HEAD").write_text("ref")
    assert take_snapshot(work, store) == first
    assert not (store / first / "train" / "__pycache__").exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda w: (w / "train.py").write_text("LR = 0.05\nprint('train')\n"),
        lambda w: (w / "new.py").write_text(""),
        lambda w: (w / "lib" / "model.py").unlink(),
        lambda w: os.chmod(w / "train.py", 0o755),
        lambda w: (w / "lib" / "model.py").rename(w / "model.py"),
    ],
    ids=["content", "added", "removed", "exec-bit", "moved"],
)
def test_any_real_change_is_a_new_snapshot(work, store, change):
    first = take_snapshot(work, store)
    change(work)
    assert take_snapshot(work, store) != first


def test_the_workload_name_is_part_of_the_id(tmp_path, store):
    a = make_workload(tmp_path / "a")
    b = tmp_path / "b" / "work"
    b.parent.mkdir()
    a.rename(b)
    make_workload(tmp_path / "a")
    assert take_snapshot(tmp_path / "a" / "train", store) != take_snapshot(b, store)


def test_snapshot_is_immutable_while_the_tree_changes(work, store):
    sid = take_snapshot(work, store)
    (work / "train.py").write_text("LR = 9\n")
    assert (store / sid / "train" / "train.py").read_text().startswith("LR = 0.04")
    if os.geteuid() != 0:  # root ignores file modes; the mode bits are checked above
        with pytest.raises(PermissionError):
            (store / sid / "train" / "train.py").write_text("tampered")


def test_missing_workload_dir(tmp_path, store):
    with pytest.raises(InputError, match=r"workload directory .* not found; set `workload:`"):
        take_snapshot(tmp_path / "nope", store)


def _snapshot_in_process(work: str, store: str, barrier, results) -> None:
    barrier.wait()  # all four start together, so they really race for the rename
    results.put(take_snapshot(Path(work), Path(store)))


def test_concurrent_snapshotting_yields_one_directory(work, store):
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    barrier, results = context.Barrier(4), context.Queue()
    procs = [context.Process(target=_snapshot_in_process, args=(str(work), str(store), barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    ids = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert len(set(ids)) == 1
    assert [p.name for p in store.iterdir()] == [ids[0]]  # losers discarded their temp copies
    assert set(read_tree(store / ids[0] / "train")) == {"train.py", "lib/model.py", "run.sh"}


def test_losing_the_rename_race_keeps_the_winner(work, store, monkeypatch):
    import shutil

    import fleet.core.snapshot as snapshot

    real_rename = os.rename

    def another_process_wins(src, dst):
        shutil.copytree(src, dst)  # the winner's copy lands first
        (Path(dst) / "winner").write_text("")
        real_rename(src, dst)

    monkeypatch.setattr(snapshot.os, "rename", another_process_wins)
    sid = take_snapshot(work, store)
    assert [p.name for p in store.iterdir()] == [sid]
    assert (store / sid / "winner").exists()


def test_diff_between_snapshots(work, store):
    a = take_snapshot(work, store)
    (work / "train.py").write_text("LR = 0.05\nprint('train')\n")
    (work / "extra.py").write_text("X = 1\n")
    (work / "lib" / "model.py").unlink()
    os.chmod(work / "run.sh", 0o644)
    b = take_snapshot(work, store)
    diff = snapshot_diff(store, a, b)
    assert "--- a/train/train.py\n+++ b/train/train.py\n" in diff
    assert "-LR = 0.04\n+LR = 0.05\n" in diff
    assert "--- /dev/null\n+++ b/train/extra.py\n" in diff and "+X = 1\n" in diff
    assert "--- a/train/lib/model.py\n+++ /dev/null\n" in diff
    assert "diff --git a/train/run.sh b/train/run.sh\nold mode 100755\nnew mode 100644\n" in diff
    assert snapshot_diff(store, a, a) == ""
    assert snapshot_diff(store, b, a).count("+LR = 0.04") == 1


def test_diff_of_binary_and_unterminated_files(work, store):
    a = take_snapshot(work, store)
    (work / "blob.bin").write_bytes(b"\xff\x00\xfe")
    (work / "train.py").write_text("LR = 0.04")
    diff = snapshot_diff(store, a, take_snapshot(work, store))
    assert "Binary files /dev/null and b/train/blob.bin differ" in diff
    assert "+LR = 0.04\n\\ No newline at end of file\n" in diff


def test_diff_of_unknown_snapshot(store, work):
    a = take_snapshot(work, store)
    with pytest.raises(FleetError, match="snapshot 0000000000000000 not found"):
        snapshot_diff(store, a, "0000000000000000")
