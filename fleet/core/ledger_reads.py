"""The ledger's selective reads: SQL picks the few rows a view or a cycle needs.

A ledger of 10,000 experiments must not be decoded whole to show a top-20 table or one "best"
line, nor to keep a dozen queues full. These reads filter, group, order and limit in SQLite
(with the indexes in `ledger_rows.SCHEMA`), so their cost follows what they return. `Ledger`
inherits them; everything here is read-only.
"""
from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.core.ledger_rows import ExperimentRow, ResultRow, decode_row
from fleet.types import ExperimentState

# A finite val_bpb: SQLite keeps infinities as REAL (a NaN arrives as NULL), and neither ranks.
FINITE = "r.val_bpb IS NOT NULL AND r.val_bpb BETWEEN -1e308 AND 1e308"
LEDGER_ORDER = "w.created_at, w.rowid, e.seq"  # the order `Ledger.experiments` lists experiments in


@dataclass(frozen=True)
class ConfigMean:
    """One configuration (knobs and code snapshot) summarized over its finished runs."""

    config_key: str
    code: str  # the code snapshot, before knob values were written into it
    label: str
    mean: float
    n: int
    sd: float | None  # None with one run
    best: float
    best_experiment: str  # the run with the best value (ties: lowest id)


class LedgerReads:
    """Read-only queries that let SQLite do the selecting (mixed into `Ledger`)."""

    def _query(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:  # provided by Ledger
        raise NotImplementedError

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

    def done_accelerators(self) -> set[str]:
        """Accelerators that finished experiments ran on ("unknown" where none was recorded)."""
        rows = self._query("SELECT DISTINCT COALESCE(r.accelerator, 'unknown') AS a FROM results r "
                           "JOIN experiments e ON e.id = r.experiment_id WHERE e.state = ?",
                           [ExperimentState.DONE.value])
        return {r["a"] for r in rows}

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

    def config_means(self, limit: int, wave: str | None = None, min_runs: int = 1,
                     higher_is_better: bool = False) -> list[ConfigMean]:
        """Configurations ranked by their mean metric value over finished runs (seeds), best first.

        A configuration is its knobs and its code (the snapshot before knob values were written
        into it); only runs that finished `done` with a finite value count, and only configurations
        with at least `min_runs` of them are listed. Best is lowest unless `higher_is_better`.
        """
        order = "DESC" if higher_is_better else "ASC"
        where, args = f"e.state = ? AND {FINITE}", [ExperimentState.DONE.value]
        if wave is not None:
            where += " AND e.wave_id = ?"
            args.append(wave)
        sql = (
            "WITH runs AS (SELECT e.config_key, COALESCE(e.code_snapshot, e.snapshot) AS code, e.label, e.id,"
            "  r.val_bpb, AVG(r.val_bpb) OVER (PARTITION BY e.config_key, COALESCE(e.code_snapshot, e.snapshot)) AS m,"
            "  ROW_NUMBER() OVER (PARTITION BY e.config_key, COALESCE(e.code_snapshot, e.snapshot)"
            f"   ORDER BY r.val_bpb {order}, e.id) AS k"
            f"  FROM results r JOIN experiments e ON e.id = r.experiment_id WHERE {where})"
            " SELECT config_key, code, MIN(label) AS label, AVG(val_bpb) AS mean, COUNT(*) AS n,"
            "  SUM((val_bpb - m) * (val_bpb - m)) AS ss, MAX(CASE WHEN k = 1 THEN val_bpb END) AS best,"
            "  MAX(CASE WHEN k = 1 THEN id END) AS best_experiment"
            " FROM runs GROUP BY config_key, code HAVING COUNT(*) >= ?"
            f" ORDER BY mean {order}, n DESC, config_key, code LIMIT ?")
        out = []
        for r in self._query(sql, [*args, min_runs, limit]):
            n, mean = r["n"], r["mean"]
            sd = math.sqrt(r["ss"] / (n - 1)) if n > 1 else None  # deviations from the mean: no cancellation
            out.append(ConfigMean(r["config_key"], r["code"], r["label"], mean, n, sd, r["best"],
                                  r["best_experiment"]))
        return out

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
        noise, so the correction needs only these."""
        group = ("COALESCE(e.code_snapshot, e.snapshot) || '/' || e.config_key || '/' || COALESCE(r.accelerator, 'unknown')"
                 " || '/' || COALESCE(json_extract(e.config, '$.TIME_BUDGET'), '')")
        rows = self._query(
            f"WITH runs AS (SELECT e.id AS id, {group} AS grp, r.val_bpb AS v, r.num_steps AS steps,"
            f"  w.created_at AS c, w.rowid AS wr, e.seq AS seq"
            f"  FROM results r JOIN experiments e ON e.id = r.experiment_id JOIN waves w ON w.id = e.wave_id"
            f"  WHERE e.state = ? AND {FINITE} AND r.num_steps > 0 AND r.num_steps <= 1e308)"
            " SELECT id, grp, v, steps FROM runs WHERE grp IN (SELECT grp FROM runs GROUP BY grp HAVING COUNT(*) >= 2)"
            " ORDER BY c, wr, seq", [ExperimentState.DONE.value])
        return [(r["id"], r["grp"], r["v"], r["steps"]) for r in rows]

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
        """For each (start, end) span: seconds that attempts held a GPU in it (a running one until `now`)."""
        if not spans:
            return []
        values = ", ".join("(?, ?, ?)" for _ in spans)
        args: list = [x for i, (lo, hi) in enumerate(spans) for x in (i, lo, hi)]
        earliest = min(lo for lo, _ in spans)
        rows = self._query(
            f"WITH spans(i, lo, hi) AS (VALUES {values}),"
            " busy(s, e) AS (SELECT started_at, COALESCE(ended_at, ?) FROM attempts"
            "  WHERE started_at IS NOT NULL AND (ended_at IS NULL OR ended_at > ?))"
            " SELECT spans.i AS i, SUM(MIN(busy.e, spans.hi) - MAX(busy.s, spans.lo)) AS t"
            " FROM spans JOIN busy ON busy.s < spans.hi AND busy.e > spans.lo GROUP BY spans.i",
            [*args, now, earliest])
        out = [0.0] * len(spans)
        for r in rows:
            out[r["i"]] = r["t"] or 0.0
        return out


def _marks(values: Sequence) -> str:
    return ",".join("?" * len(values))


def _chunks(values: list, size: int = 500) -> list[list]:
    """SQLite limits the parameters of one statement: ask for many ids in chunks."""
    return [values[i:i + size] for i in range(0, len(values), size)]
