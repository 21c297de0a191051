"""`fleet restore`: put a backup of the ledger back when the ledger is damaged."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from fleet.cli.context import Context
from fleet.core.backup import backups, restore
from fleet.core.daemon import controller_running
from fleet.errors import InputError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("restore", parents=[common],
                       help="replace a damaged ledger with a backup from .fleet/backups/ (default: the newest)")
    p.add_argument("backup", nargs="?", type=Path, help="the backup file (default: the newest)")
    p.set_defaults(func=cmd_restore)


def cmd_restore(ctx: Context, args: argparse.Namespace) -> int:
    # Never opens the ledger: it may be the damaged thing.
    ledger_path = ctx.workspace.ledger_path
    found = backups(ledger_path)
    backup = args.backup or (found[-1] if found else None)
    if backup is None:
        raise InputError(f"there is no backup in {ledger_path.parent / 'backups'}; the controller writes one when "
                         "it starts and every 15 minutes")
    if not backup.is_file():
        raise InputError(f"backup {backup} does not exist; `ls {ledger_path.parent / 'backups'}` lists them")
    if controller_running(ctx.workspace):
        raise InputError("a controller is running on this ledger; restore only a ledger no controller can read "
                         "(wait for it to stop: `fleet status` shows it)")
    aside = restore(ledger_path, backup, time.time())
    ctx.sink.data({"restored": str(backup), "damaged_kept_as": str(aside)},
                  lambda c: c.print(f"restored {backup}"))
    ctx.sink.info(f"the replaced ledger is kept as {aside}")
    ctx.sink.hint("`fleet status` shows what the backup knew; `fleet wait` resumes the work")
    return 0
