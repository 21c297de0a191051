"""Rolling online backups of the ledger, and putting one back.

The controller copies the ledger with SQLite's online backup API (a consistent copy while other
processes keep writing) into `.fleet/backups/ledger-<UTC time>.db` when it starts and then every
`BACKUP_EVERY_S`, keeping the newest `BACKUPS_KEPT`. A copy is written under a temporary name and
renamed into place, so a backup that exists is complete.

`restore` replaces a damaged ledger with a backup: the damaged file (and its `-wal`/`-shm`
companions, which belong to it and would corrupt the restored copy if SQLite replayed them) is
moved aside as `ledger.db.damaged-<time>`, never deleted.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

BACKUP_EVERY_S = 15 * 60
BACKUPS_KEPT = 3
PREFIX, SUFFIX = "ledger-", ".db"
RESTORE_COMMAND = "fleet restore"


def backups_dir(ledger_path: Path) -> Path:
    return ledger_path.parent / "backups"


def backups(ledger_path: Path) -> list[Path]:
    """The ledger's backups, oldest first (their names sort by time)."""
    folder = backups_dir(ledger_path)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))


def newest_backup(ledger_path: Path) -> Path | None:
    found = backups(ledger_path)
    return found[-1] if found else None


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}"


def take_backup(db: sqlite3.Connection, ledger_path: Path, now: float, keep: int = BACKUPS_KEPT) -> Path:
    """Copy the open ledger `db` into a new backup; drop all but the newest `keep`."""
    folder = backups_dir(ledger_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{PREFIX}{_stamp(now)}{SUFFIX}"
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    try:
        copy = sqlite3.connect(tmp)
        try:
            db.backup(copy)
        finally:
            copy.close()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    for old in backups(ledger_path)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def restore(ledger_path: Path, backup: Path, now: float) -> Path:
    """Put `backup` in place of the ledger; returns where the replaced ledger was moved."""
    aside = ledger_path.with_name(f"{ledger_path.name}.damaged-{_stamp(now)}")
    for suffix in ("", "-wal", "-shm"):
        current = ledger_path.with_name(ledger_path.name + suffix)
        if current.exists():
            os.replace(current, aside.with_name(aside.name + suffix))
    tmp = ledger_path.with_name(f".{ledger_path.name}.restoring")
    shutil.copyfile(backup, tmp)
    os.replace(tmp, ledger_path)
    return aside
