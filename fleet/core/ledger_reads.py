"""The ledger's selective reads: SQL picks the few rows a view or a cycle needs.

A ledger of 10,000 experiments must not be decoded whole to show a top-20 table or one "best"
line, nor to keep a dozen queues full. These reads filter, group, order and limit in SQLite
(with the indexes in `ledger_rows.SCHEMA`), so their cost follows what they return. `Ledger`
inherits them; everything here is read-only.
"""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.core.ledger_rows import ExperimentRow, ResultRow, decode_row
from fleet.types import ExperimentState

# A finite val_bpb: SQLite keeps infinities as REAL (a NaN arrives as NULL), and neither ranks.
FINITE = "r.val_bpb IS NOT NULL AND r.val_bpb BETWEEN -1e308 AND 1e308"
LEDGER_ORDER = "w.created_at, w.rowid, e.seq"  # the order `Ledger.experiments` lists experiments in


@dataclass(frozen=True)
class ConfigMean:
    """One configuration (knobs and code) and its mean over its finished runs."""

    config_key: str
    code: str  # the code snapshot, before knob values were written into it
    mean: float
    n: int


class LedgerReads:
    """Read-only queries that let SQLite do the selecting (mixed into `Ledger`)."""

    _query: Callable[..., list[sqlite3.Row]]  # provided by Ledger

    _memo: dict | None = None  # whole reads decoded inside a `reading()` block, by their query

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Inside this block the whole reads (`experiments()`, `results()`) are decoded once per query:
        for a read-only command that builds several views of one ledger (`fleet next` reads every
        experiment five times over). Any write forgets them (`Ledger.tx`)."""
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    def forget_reads(self) -> None:
        if self._memo is not None:
            self._memo.clear()

    def _decoded(self, key: tuple, read: Callable[[], Any]) -> Any:
        if self._memo is None:
            return read()
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]  # callers copy the container; the records are frozen

    def experiments(
        self, wave: str | None = None, states: Iterable[ExperimentState] | None = None, track: str | None = None,
    ) -> list[ExperimentRow]:
        sql, args = "SELECT e.* FROM experiments e JOIN waves w ON w.id = e.wave_id WHERE 1=1", []
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        if track is not None:
            sql += " AND w.track = ?"
            args.append(track)
        if states is not None:
            states = [s.value for s in states]
            sql += f" AND e.state IN ({','.join('?' * len(states))})"
            args += states
        sql += " ORDER BY w.created_at, w.rowid, e.seq"
        return list(self._decoded(("experiments", sql, tuple(args)),
                                  lambda: [decode_row(ExperimentRow, r) for r in self._query(sql, args)]))

    def results(self, wave: str | None = None) -> dict[str, ResultRow]:
        sql, args = "SELECT r.* FROM results r JOIN experiments e ON e.id = r.experiment_id", []
        if wave is not None:
            sql += " WHERE e.wave_id = ?"
            args.append(wave)
        return dict(self._decoded(("results", sql, tuple(args)),
                                  lambda: {r["experiment_id"]: decode_row(ResultRow, r) for r in self._query(sql, args)}))

    def experiments_by_id(self, ids: Sequence[str]) -> dict[str, ExperimentRow]:
        out: dict[str, ExperimentRow] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = self._query(f"SELECT * FROM experiments WHERE id IN ({_marks(chunk)})", chunk)
            out.update((r["id"], decode_row(ExperimentRow, r)) for r in rows)
        return out

    def results_by_id(self, ids: Sequence[str]) -> dict[str, ResultRow]:
        out: dict[str, ResultRow] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = self._query(f"SELECT * FROM results WHERE experiment_id IN ({_marks(chunk)})", chunk)
            out.update((r["experiment_id"], decode_row(ResultRow, r)) for r in rows)
        return out

    def counts_by_wave(self) -> dict[str, dict[str, int]]:
        """Experiments per state, for every wave, in one grouped read."""
        out: dict[str, dict[str, int]] = {}
        for r in self._query("SELECT wave_id, state, COUNT(*) AS n FROM experiments GROUP BY wave_id, state"):
            out.setdefault(r["wave_id"], {})[r["state"]] = r["n"]
        return out

    def finished_runs(self, wave: str | None = None) -> list[sqlite3.Row]:
        """Finished experiments with a result (cancelled ones never record one), as GPU-time accounting
        reads them (`fleet.observe.efficiency`): the few columns it needs in one join, no JSON decoded.
        Columns: experiment, finished_at, state, seeding, code, config_key, seed, label, gpu_seconds,
        accelerator, val_bpb."""
        finished = [s.value for s in ExperimentState if s.finished and s != ExperimentState.CANCELLED]
        sql = ("SELECT e.id AS experiment, COALESCE(e.finished_at, r.recorded_at) AS finished_at, e.state AS state,"
               " e.seeding AS seeding, COALESCE(e.code_snapshot, e.snapshot) AS code, e.config_key AS config_key,"
               " e.seed AS seed, COALESCE(NULLIF(e.label, ''), e.description) AS label,"
               " r.gpu_seconds AS gpu_seconds, r.accelerator AS accelerator, r.val_bpb AS val_bpb"
               f" FROM experiments e JOIN results r ON r.experiment_id = e.id WHERE e.state IN ({_marks(finished)})")
        args: list = list(finished)
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        return self._query(sql, args)

    def done_accelerators(self) -> set[str]:
        """Accelerators that finished experiments ran on ("unknown" where none was recorded).

        The few accelerators come off the index, then each is checked for one finished run: no
        pass over every result."""
        out = set()
        for r in self._query("SELECT DISTINCT accelerator AS a FROM results"):
            if self._query("SELECT 1 FROM results r JOIN experiments e ON e.id = r.experiment_id"
                           " WHERE r.accelerator IS ? AND e.state = ? LIMIT 1", [r["a"], ExperimentState.DONE.value]):
                out.add(r["a"] if r["a"] is not None else "unknown")
        return out

    def ranked(self, limit: int, wave: str | None = None,
               higher_is_better: bool = False) -> list[tuple[ExperimentRow, ResultRow]]:
        """The `limit` experiments with the best finite metric value (`val_bpb` holds the configured
        metric's; lowest unless `higher_is_better`), best first; ties by id."""
        sql = f"SELECT r.experiment_id FROM results r JOIN experiments e ON e.id = r.experiment_id WHERE {FINITE}"
        args: list = []
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        order = "DESC" if higher_is_better else "ASC"
        ids = [r[0] for r in self._query(sql + f" ORDER BY r.val_bpb {order}, r.experiment_id LIMIT ?", [*args, limit])]
        experiments, results = self.experiments_by_id(ids), self.results_by_id(ids)
        return [(experiments[i], results[i]) for i in ids]

    def unranked(self, limit: int, wave: str | None = None) -> list[ExperimentRow]:
        """The first `limit` experiments without a finite val_bpb, in ledger order."""
        sql = (f"SELECT e.* FROM experiments e JOIN waves w ON w.id = e.wave_id "
               f"LEFT JOIN results r ON r.experiment_id = e.id WHERE NOT ({FINITE} AND r.val_bpb IS NOT NULL)")
        args: list = []
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        rows = self._query(sql + f" ORDER BY {LEDGER_ORDER} LIMIT ?", [*args, limit])
        return [decode_row(ExperimentRow, r) for r in rows]

    def config_means(self, limit: int, wave: str | None = None, higher_is_better: bool = False) -> list[ConfigMean]:
        """Configurations ranked by their mean metric value over finished runs (seeds), best first.

        A configuration is its knobs and its code (the snapshot before knob values were written
        into it); only runs that finished `done` with a finite value count. Best is lowest unless
        `higher_is_better`; ties: more runs first, then by key.
        """
        order = "DESC" if higher_is_better else "ASC"
        sql = ("SELECT e.config_key AS k, COALESCE(e.code_snapshot, e.snapshot) AS code, AVG(r.val_bpb) AS mean,"
               " COUNT(*) AS n FROM results r JOIN experiments e ON e.id = r.experiment_id"
               f" WHERE e.state = ? AND {FINITE}")
        args: list = [ExperimentState.DONE.value]
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        sql += f" GROUP BY k, code ORDER BY mean {order}, n DESC, k, code LIMIT ?"
        return [ConfigMean(r["k"], r["code"], r["mean"], r["n"]) for r in self._query(sql, [*args, limit])]

    def config_runs(self, configs: Sequence[tuple[str, str]], wave: str | None = None) -> list[ExperimentRow]:
        """The finished runs (done, finite value) of these (code, config key) configurations, in ledger order."""
        if not configs:
            return []
        values = ", ".join("(?, ?)" for _ in configs)
        sql = (f"SELECT e.* FROM experiments e JOIN waves w ON w.id = e.wave_id JOIN results r ON r.experiment_id = e.id"
               f" WHERE e.state = ? AND {FINITE} AND (COALESCE(e.code_snapshot, e.snapshot), e.config_key) IN"
               f" (VALUES {values})")
        args: list = [ExperimentState.DONE.value, *(x for pair in configs for x in pair)]
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        return [decode_row(ExperimentRow, r) for r in self._query(sql + f" ORDER BY {LEDGER_ORDER}", args)]

    def replicated_runs(self) -> list[tuple[str, str, float, float]]:
        """(experiment, group, value, steps) of the finished runs whose group — code, configuration,
        accelerator and TIME_BUDGET, as `fleet.research.step_noise` groups them — has two or more runs
        with a known step count, in ledger order. A run alone in its group is never corrected for step
        noise, so the correction needs only these. Configurations run once are skipped by an indexed
        grouping before any run is looked at."""
        rows = self._query(
            "WITH twice AS (SELECT config_key AS k, COALESCE(code_snapshot, snapshot) AS code FROM experiments"
            "  WHERE state = ? GROUP BY k, code HAVING COUNT(*) >= 2)"
            " SELECT e.id AS id, twice.code || '/' || e.config_key || '/' || COALESCE(r.accelerator, 'unknown') || '/'"
            "  || COALESCE(json_extract(e.config, '$.TIME_BUDGET'), '') AS grp, r.val_bpb AS v, r.num_steps AS steps"
            " FROM twice JOIN experiments e ON e.config_key = twice.k AND COALESCE(e.code_snapshot, e.snapshot) = twice.code"
            " JOIN results r ON r.experiment_id = e.id JOIN waves w ON w.id = e.wave_id"
            f" WHERE e.state = ? AND {FINITE} AND r.num_steps > 0 AND r.num_steps <= 1e308"
            " ORDER BY w.created_at, w.rowid, e.seq", [ExperimentState.DONE.value] * 2)
        size: dict[str, int] = {}
        for r in rows:
            size[r["grp"]] = size.get(r["grp"], 0) + 1
        return [(r["id"], r["grp"], r["v"], r["steps"]) for r in rows if size[r["grp"]] >= 2]

    def gpu_seconds(self, wave: str | None = None) -> list[tuple[str, str, float]]:
        """(wave, accelerator, GPU-seconds) summed over results, per wave and accelerator (a negative
        duration, from a clock that jumped, counts as none)."""
        sql = ("SELECT e.wave_id, COALESCE(r.accelerator, 'unknown') AS acc, SUM(MAX(0.0, r.gpu_seconds)) AS s"
               " FROM results r"
               " JOIN experiments e ON e.id = r.experiment_id WHERE r.gpu_seconds IS NOT NULL")
        args: list = []
        if wave is not None:
            sql += " AND e.wave_id = ?"
            args.append(wave)
        return [(r["wave_id"], r["acc"], r["s"]) for r in self._query(sql + " GROUP BY e.wave_id, acc", args)]

    def recently_finished(self, states: Sequence[ExperimentState], limit: int) -> list[ExperimentRow]:
        """The last `limit` experiments to finish in one of `states`, most recent first."""
        values = [s.value for s in states]
        rows = self._query(f"SELECT * FROM experiments WHERE state IN ({_marks(values)})"
                           " ORDER BY finished_at DESC, id DESC LIMIT ?", [*values, limit])
        return [decode_row(ExperimentRow, r) for r in rows]

    def busy_seconds(self, spans: Sequence[tuple[float, float]], now: float) -> list[float]:
        """For each (start, end) span: seconds that attempts held a GPU in it (a running one until `now`),
        summed in one pass over the attempts that overlap the earliest span's start or run still."""
        if not spans:
            return []
        sums = ", ".join("SUM(MAX(0.0, MIN(e, ?) - MAX(s, ?)))" for _ in spans)
        args: list = [x for lo, hi in spans for x in (hi, lo)]
        earliest = min(lo for lo, _ in spans)
        row = self._query(
            f"SELECT {sums} FROM (SELECT started_at AS s, ended_at AS e FROM attempts WHERE ended_at > ?"
            f" AND started_at IS NOT NULL UNION ALL SELECT started_at, ? FROM attempts WHERE ended_at IS NULL"
            f" AND started_at IS NOT NULL)", [*args, earliest, now])[0]
        return [float(v or 0.0) for v in row]


def _marks(values: Sequence) -> str:
    return ",".join("?" * len(values))


def _chunks(values: list, size: int = 500) -> list[list]:
    """SQLite limits the parameters of one statement: ask for many ids in chunks."""
    return [values[i:i + size] for i in range(0, len(values), size)]
