"""The leaderboard as a payload (for --json) and as rich tables (for people), and the verdicts it shows."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet.cli.context import Context
from fleet.observe.efficiency import Efficiency, efficiency, runs_from
from fleet.observe.leaderboard import build_configs, build_rows
from fleet.plain_text import plain
from fleet.research.normalize_view import comparable_values, corrected_for, normalized_for, research_results
from fleet.research.verdict_report import is_validation, promotion_report


def leaderboard_payload(ctx: Context, wave: str | None, sort_by: str = "normalized") -> dict:
    ledger = ctx.ledger
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
                      corrected=corrected)
    configs = build_configs(rows, {e.id: e.code for e in experiments}, sort, metric.higher_is_better)
    best = configs[0] if configs and configs[0].rank == 1 else None
    return {
        "wave": wave,
        "metric": metric.name,
        "direction": metric.direction,
        "sorted_by": sort,
        "reference_accelerator": ctx.config.reference_accelerator,
        "calibration": "; ".join(x for x in (norm.summary, steps.summary) if x),
        "best": None if best is None else best.as_dict(),
        "configs": [c.as_dict() for c in configs],
        "rows": [r.as_dict() for r in rows],
    }


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
    values = comparable_values(ledger, ctx.config.reference_accelerator, metric.higher_is_better)
    runs = runs_from(ledger.experiments(wave=wave), ledger.results(wave=wave), values)
    return efficiency(runs, ctx.config.prices, sign=-1.0 if metric.higher_is_better else 1.0)


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
        cells = [_fmt(row["rank"]), row["experiment"], Text(plain(row["label"] or "(base)"))]
        cells += [str(row["seed"])] if with_seed else []
        cells += [_fmt(row["val_bpb"])] + ([_fmt(row["normalized"])] if with_norm else [])
        cells += [_fmt(int(row["num_steps"]) if row["num_steps"] is not None else None),
                  Text(plain(row["accelerator"] or "-")), Text(plain(status[:60]))]
        table.add_row(*cells)
    console.print(table)
    if payload.get("calibration"):
        console.print(Text(plain(payload["calibration"]), style="dim"))
