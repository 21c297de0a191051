"""What an agent did with the fleet's findings, kept in the ledger: verdicts read, changes adopted.

`fleet next` and `fleet journal` read these so that an agent (or a fresh one after a context reset)
does not have to keep this bookkeeping in its own notes: a finished validation whose verdict nobody
read, or a `keep` nobody adopted, is the next thing to do. Mixed into `Ledger` (its `tx` and
`_query` are used); each write is one short transaction, idempotent.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager

from fleet.core.ledger_rows import AdoptionRow, decode_row


class AgentRecords:
    clock: Callable[[], float]
    tx: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _query: Callable[..., list[sqlite3.Row]]

    def mark_read(self, wave_id: str) -> bool:
        """Record that a finished wave's verdict was shown (`fleet verdict`, `fleet ablation`); the first
        read counts. Returns True the first time."""
        with self.tx("mark_read", point=False) as db:
            return db.execute("INSERT OR IGNORE INTO verdict_reads (wave_id, read_at) VALUES (?, ?)",
                              (wave_id, self.clock())).rowcount > 0

    def verdicts_read(self) -> dict[str, float]:
        """Wave id -> when its verdict was first read."""
        return {r["wave_id"]: r["read_at"] for r in self._query("SELECT * FROM verdict_reads")}

    def record_adoption(self, experiment_id: str, preset: str | None, defaults: Iterable[dict],
                        files: Iterable[str]) -> AdoptionRow:
        """Record a `fleet adopt` that changed the working tree."""
        with self.tx("record_adoption", point=False) as db:
            cursor = db.execute(
                "INSERT INTO adoptions (experiment_id, adopted_at, preset, defaults, files) VALUES (?, ?, ?, ?, ?)",
                (experiment_id, self.clock(), preset, json.dumps(list(defaults)), json.dumps(list(files))))
            row_id = cursor.lastrowid
        return decode_row(AdoptionRow, self._query("SELECT * FROM adoptions WHERE id = ?", (row_id,))[0])

    def adoptions(self) -> list[AdoptionRow]:
        """Every recorded adoption, oldest first."""
        return [decode_row(AdoptionRow, r) for r in self._query("SELECT * FROM adoptions ORDER BY adopted_at, id")]

    def backfill_waves(self) -> Iterator[str]:
        """Ids of the waves the fleet queued itself (backfill)."""
        return (r["id"] for r in self._query("SELECT id FROM waves WHERE backfill = 1 ORDER BY created_at, id"))
