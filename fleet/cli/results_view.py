"""The leaderboard as a payload (for --json) and as a rich table (for people)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet.cli.context import Context
from fleet.observe.leaderboard import build_rows
from fleet.plain_text import plain
from fleet.research.normalize_view import normalized_for


def leaderboard_payload(ctx: Context, wave: str | None, sort_by: str = "normalized") -> dict:
    ledger = ctx.ledger
    experiments = ledger.experiments(wave=wave)
    results = ledger.results(wave=wave)
    metric = ctx.config.metric
    norm = normalized_for(ledger, ctx.config.reference_accelerator, metric.higher_is_better)
    sign = -1.0 if metric.higher_is_better else 1.0  # normalized values come lower-is-better: back to the metric's
    normalized = {k: None if v is None else sign * v for k, v in norm.values.items()}
    sort = sort_by if any(v is not None for v in normalized.values()) else "raw"
    rows = build_rows(experiments, results, normalized, sort_by=sort, higher_is_better=metric.higher_is_better)
    return {
        "wave": wave,
        "metric": metric.name,
        "direction": metric.direction,
        "sorted_by": sort,
        "reference_accelerator": ctx.config.reference_accelerator,
        "calibration": norm.summary,
        "rows": [r.as_dict() for r in rows],
    }


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_leaderboard(console: Console, payload: dict, limit: int | None = None) -> None:
    rows = payload["rows"]
    title = f"leaderboard{' of ' + payload['wave'] if payload['wave'] else ''} — sorted by " + (
        f"val_bpb normalized to {payload['reference_accelerator']}" if payload["sorted_by"] == "normalized"
        else "raw val_bpb")
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
