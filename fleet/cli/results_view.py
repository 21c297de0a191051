"""The leaderboard as a payload (for --json) and as rich tables (for people), and the verdicts it shows."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet.cli.context import Context
from fleet.core.ledger_rows import ExperimentRow, ResultRow
from fleet.observe.efficiency import Efficiency, efficiency, runs_from_rows
from fleet.observe.leaderboard import ConfigRow, Row, build_configs, build_rows
from fleet.plain_text import plain
from fleet.research.normalize_view import comparable_values, corrected_for, normalized_for, research_results
from fleet.research.ablation_plans import ablation_report
from fleet.research.verdict_report import is_validation, promotion_report
from fleet.types import ExperimentState


def leaderboard_payload(ctx: Context, wave: str | None, sort_by: str = "normalized", limit: int | None = None) -> dict:
    """The leaderboard: its best configuration, configurations by their mean, runs best first; with
    `limit`, only the first `limit` configurations and runs.

    With one kind of hardware there is nothing to normalize across, so SQL picks the rows shown and
    only those are read (`_top_payload`). Mixed hardware needs every run to calibrate: the whole
    leaderboard is built, then cut to `limit`.
    """
    ledger = ctx.ledger
    if limit is not None:
        accelerators = ledger.done_accelerators()
        if len(accelerators) <= 1:
            return _top_payload(ctx, wave, sort_by, limit, on_reference=accelerators == {ctx.config.reference_accelerator})
    experiments = ledger.experiments(wave=wave)
    results = ledger.results(wave=wave)
    metric = ctx.config.metric
    norm = normalized_for(ledger, ctx.config.reference_accelerator, metric.higher_is_better)
    steps = corrected_for(ledger, metric.higher_is_better, norm.slope.slope if norm.slope is not None else None)
    sign = -1.0 if metric.higher_is_better else 1.0  # research values come lower-is-better: back to the metric's
    normalized = {k: None if v is None else sign * v for k, v in norm.values.items()}
    corrected = {k: sign * v for k, v in steps.values.items()}
    sort = sort_by if any(v is not None for v in normalized.values()) else "raw"
    rows = build_rows(experiments, results, normalized, sort_by=sort, higher_is_better=metric.higher_is_better,
                      corrected=corrected, backfill_waves=set(ledger.backfill_waves()))
    configs = build_configs(rows, {e.id: e.code for e in experiments}, sort, metric.higher_is_better)
    return _payload(ctx, wave, sort, "; ".join(x for x in (norm.summary, steps.summary) if x),
                    configs[:limit] if limit is not None else configs, rows[:limit] if limit is not None else rows)


def _payload(ctx: Context, wave: str | None, sort: str, calibration: str, configs: list[ConfigRow],
             rows: list[Row]) -> dict:
    metric = ctx.config.metric
    best = configs[0] if configs and configs[0].rank == 1 else None
    return {
        "wave": wave,
        "metric": metric.name,
        "direction": metric.direction,
        "sorted_by": sort,
        "reference_accelerator": ctx.config.reference_accelerator,
        "calibration": calibration,
        "best": None if best is None else best.as_dict(),
        "configs": [c.as_dict() for c in configs],
        "rows": [r.as_dict() for r in rows],
    }


def _top_payload(ctx: Context, wave: str | None, sort_by: str, limit: int, on_reference: bool) -> dict:
    """The first `limit` configurations and runs when every finished run shares one accelerator: the
    same as the whole leaderboard's, read through SQL (the best runs, the best configurations' runs,
    and only the runs that step-noise correction can change). Normalized values are the raw ones on
    the reference accelerator and absent on any other, as `normalized_for` gives them."""
    ledger = ctx.ledger
    higher = ctx.config.metric.higher_is_better
    sign = -1.0 if higher else 1.0
    steps = corrected_for(ledger, higher, None, replicated_only=True)  # one kind of hardware: no fleet slope
    sort = sort_by if on_reference else "raw"

    def rows_of(experiments: list[ExperimentRow], results: dict[str, ResultRow]) -> list[Row]:
        finished = [e.id for e in experiments if e.state == ExperimentState.DONE and e.id in results]
        normalized = {i: results[i].val_bpb for i in finished} if on_reference else {}
        corrected = {i: sign * steps.values.get(i, sign * results[i].val_bpb) for i in finished
                     if results[i].val_bpb is not None and math.isfinite(results[i].val_bpb)}
        return build_rows(experiments, results, normalized, sort_by=sort, higher_is_better=higher, corrected=corrected)

    ranked = ledger.ranked(limit, wave, higher)
    rest = ledger.unranked(limit - len(ranked), wave) if len(ranked) < limit else []
    results = {e.id: r for e, r in ranked} | ledger.results_by_id([e.id for e in rest])
    rows = rows_of([e for e, _ in ranked] + rest, results)
    # A few configurations beyond `limit`, so a tie at the edge is settled by build_configs' own order.
    means = ledger.config_means(limit + 5, wave, higher_is_better=higher)
    runs = ledger.config_runs([(m.code, m.config_key) for m in means], wave)
    config_rows = rows_of(runs, ledger.results_by_id([e.id for e in runs]))
    configs = build_configs(config_rows, {e.id: e.code for e in runs}, sort, higher)[:limit]
    return _payload(ctx, wave, sort, steps.summary, configs, rows)


def validation_reports(ctx: Context) -> list[dict[str, Any]]:
    """The verdict report of every promote and recheck wave, oldest first (as `fleet verdict` gives them)."""
    ledger = ctx.ledger
    waves = [w for w in ledger.waves() if is_validation(w)]
    if not waves:
        return []
    higher = ctx.config.metric.higher_is_better
    experiments, results = ledger.experiments(), research_results(ledger.results(), higher)
    norm = normalized_for(ledger, ctx.config.reference_accelerator, higher)
    slope = norm.slope.slope if norm.slope is not None else None
    return [promotion_report(w, experiments, results, norm.values, slope) for w in waves]


def ablation_reports(ctx: Context) -> list[dict[str, Any]]:
    """The report of every ablation wave, oldest first (as `fleet ablation` gives them)."""
    ledger = ctx.ledger
    waves = [w for w in ledger.waves() if w.kind == "ablate"]
    if not waves:
        return []
    higher = ctx.config.metric.higher_is_better
    experiments, results = ledger.experiments(), research_results(ledger.results(), higher)
    norm = normalized_for(ledger, ctx.config.reference_accelerator, higher)
    return [ablation_report(w, experiments, results, norm.values) for w in waves]


def configuration_verdicts(ctx: Context, reports: list[dict[str, Any]]) -> tuple[dict, set]:
    """(code, configuration key) -> its latest verdict, and the (code, key) of every baseline judged against."""
    ledger = ctx.ledger
    code = {e.id: e.code for e in ledger.experiments()}
    verdicts: dict[tuple[str, str], str] = {}
    baselines: set[tuple[str, str]] = set()
    for report in reports:  # oldest first: a later verdict replaces an earlier one
        for c in report["candidates"]:
            if c["experiment"] in code:
                verdicts[(code[c["experiment"]], c["config_key"])] = c["verdict"]
        base = report["baseline"]
        for e in base["experiments"][:1]:
            baselines.add((code.get(e, base["snapshot"]), base["config_key"]))
    return verdicts, baselines


def efficiency_for(ctx: Context, wave: str | None = None) -> Efficiency:
    """The frontier, cost of improvement and waste of the ledger (or one wave), from its results."""
    ledger = ctx.ledger
    metric = ctx.config.metric
    rows = ledger.finished_runs(wave)
    if len(ledger.done_accelerators()) > 1:  # a mixed fleet: values normalized across hardware (every run read)
        values = comparable_values(ledger, ctx.config.reference_accelerator, metric.higher_is_better)
    else:  # one kind of hardware: the raw values, lower is better (as `research_results`), from the same rows
        sign = -1.0 if metric.higher_is_better else 1.0
        values = {r["experiment"]: None if r["val_bpb"] is None else sign * r["val_bpb"] for r in rows}
    return efficiency(runs_from_rows(rows, values), ctx.config.prices, sign=-1.0 if metric.higher_is_better else 1.0)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_leaderboard(console: Console, payload: dict, limit: int | None = None) -> None:
    by = (f"val_bpb normalized to {payload['reference_accelerator']}" if payload["sorted_by"] == "normalized"
          else "raw val_bpb")
    configs = [c for c in payload.get("configs", []) if c["rank"] is not None][: limit or 10]
    if configs:
        table = Table(title=f"leaderboard — configurations by their mean over runs, by {by}", title_justify="left")
        for col, justify in (("#", "right"), ("configuration", "left"), ("n", "right"), ("val_bpb", "right"),
                             ("normalized", "right"), ("step-corrected", "right"), ("accel", "left")):
            table.add_column(col, justify=justify, no_wrap=col != "configuration")
        for c in configs:
            mean = _fmt(c["val_bpb"]) + (f" ± {c['std']:.4f}" if c["std"] is not None else "")
            table.add_row(str(c["rank"]), Text(plain(c["label"] or "(base)")), str(c["n"]), mean,
                          _fmt(c["normalized"]), _fmt(c["corrected"]), Text(plain(", ".join(c["accelerators"]))))
        console.print(table)
    rows = payload["rows"]
    title = f"runs{' of ' + payload['wave'] if payload['wave'] else ''} — sorted by {by}"
    shown = rows[:limit] if limit else rows
    with_norm = any(r["normalized"] is not None for r in shown)
    with_seed = any(r["seed"] for r in shown)
    table = Table(title=title, title_justify="left")
    columns = [("#", "right"), ("experiment", "left"), ("config", "left")]
    columns += [("seed", "right")] if with_seed else []
    columns += [("val_bpb", "right")] + ([("normalized", "right")] if with_norm else [])
    columns += [("steps", "right"), ("accel", "left"), ("status", "left")]
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col in ("#", "experiment", "val_bpb", "normalized"))
    for row in shown:
        status = row["state"] if not row["reason"] or row["state"] == "done" else f"{row['state']}: {row['reason']}"
        status = f"backfill · {status}" if row.get("backfill") else status
        cells = [_fmt(row["rank"]), row["experiment"], Text(plain(row["label"] or "(base)"))]
        cells += [str(row["seed"])] if with_seed else []
        cells += [_fmt(row["val_bpb"])] + ([_fmt(row["normalized"])] if with_norm else [])
        cells += [_fmt(int(row["num_steps"]) if row["num_steps"] is not None else None),
                  Text(plain(row["accelerator"] or "-")), Text(plain(status[:60]))]
        table.add_row(*cells)
    console.print(table)
    if payload.get("calibration"):
        console.print(Text(plain(payload["calibration"]), style="dim"))
