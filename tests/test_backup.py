"""Rolling online backups of the ledger, and getting back from a damaged ledger with `fleet restore`."""
from __future__ import annotations

import gc
import json
import sqlite3
from pathlib import Path

import pytest
from fleet_cli import make_project, teardown

from fleet.core.backup import BACKUPS_KEPT, backups
from fleet.core.ledger import Ledger, LedgerDamaged
from fleet.core.ledger_rows import NewExperiment


def _alive(pid: int) -> bool:
    """Running, not a zombie (this test process started it and does not reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys)
    yield runner
    teardown(runner)


def test_backups_roll_and_are_complete_copies(tmp_path):
    now = [1_000_000.0]
    ledger = Ledger(tmp_path / ".fleet" / "ledger.db", clock=lambda: now[0])
    for i in range(BACKUPS_KEPT + 2):
        ledger.add_wave(f"w{i}", "screen", {}, "s", [NewExperiment({}, "k", 0, "", "")])
        ledger.backup()
        now[0] += 60
    kept = backups(ledger.path)
    assert len(kept) == BACKUPS_KEPT
    newest = sqlite3.connect(kept[-1])
    assert [r[0] for r in newest.execute("SELECT id FROM waves ORDER BY id")] == [f"w{i}" for i in range(BACKUPS_KEPT + 2)]
    oldest = sqlite3.connect(kept[0])
    assert oldest.execute("SELECT COUNT(*) FROM waves").fetchone()[0] == 3  # the newest three of five
    assert not list(kept[0].parent.glob(".*.tmp"))


def test_a_damaged_ledger_names_its_backup_and_fleet_restore_puts_it_back(fleet):
    fleet.write("one.yaml", "name: one\nexperiments:\n  - {DEPTH: 1}\n")
    fleet.json("wave", "one.yaml", "--wait")  # the controller backs the ledger up when it starts
    pid = int(fleet.ledger.get_meta("controller_pid"))
    fleet.wait_until(lambda: not _alive(pid))  # its connection to the ledger closed too
    gc.collect()  # this process's own connections to the ledger close too
    newest = backups(fleet.root / ".fleet" / "ledger.db")[-1]
    db = fleet.root / ".fleet" / "ledger.db"
    for companion in (".fleet/ledger.db-wal", ".fleet/ledger.db-shm"):
        (fleet.root / companion).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)

    code, _, err = fleet("status")
    assert code == 1 and "damaged" in err and str(newest) in err and "`fleet restore`" in err
    assert "internal error" not in err
    code, out, _ = fleet("results", "--json")
    assert code == 1 and "fleet restore" in json.loads(out)["error"]
    with pytest.raises(LedgerDamaged):
        Ledger(db)

    restored = fleet.json("restore")
    assert restored["restored"] == str(newest)
    assert Path(restored["damaged_kept_as"]).read_bytes().startswith(b"this is not a database")
    status = fleet.json("status")
    assert [w["id"] for w in status["waves"]] == ["one"]
    assert fleet.json("restore", str(newest))["restored"] == str(newest)  # a backup named explicitly


def test_restore_without_a_backup_says_so(fleet):
    code, _, err = fleet("restore")
    assert code == 2 and "no backup" in err
