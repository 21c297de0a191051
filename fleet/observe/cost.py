"""GPU time and money: pure arithmetic over results, priced per accelerator from config.

GPU-seconds count from a job's start to its end on its cluster (queue time excluded); a CPU slot
of the local backend costs nothing unless a price for `cpu` is configured.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.config import FleetConfig
from fleet.core.ledger import Ledger


@dataclass(frozen=True)
class Usage:
    accelerator: str
    gpu_seconds: float


def spend(usages: Iterable[Usage], prices: Mapping[str, float]) -> dict:
    """GPU-hours and dollars in total and per accelerator; unpriced accelerators cost 0, listed."""
    hours: dict[str, float] = defaultdict(float)
    for u in usages:
        hours[u.accelerator] += max(0.0, u.gpu_seconds) / 3600
    dollars = {acc: h * prices.get(acc, 0.0) for acc, h in hours.items()}
    return {
        "gpu_hours": sum(hours.values()),
        "dollars": sum(dollars.values()),
        "by_accelerator": {acc: {"gpu_hours": hours[acc], "dollars": dollars[acc],
                                 "price_per_hour": prices.get(acc)} for acc in sorted(hours)},
        "unpriced": sorted(acc for acc in hours if acc not in prices),
    }


def ledger_usages(ledger: Ledger, wave: str | None = None) -> list[Usage]:
    """GPU time per accelerator (one Usage per wave and accelerator, summed in SQL)."""
    return [Usage(acc, seconds) for _, acc, seconds in ledger.gpu_seconds(wave)]


def cost_summary(ledger: Ledger, config: FleetConfig, wave: str | None = None, now: float | None = None) -> dict:
    """Spend (of a wave, or all), the cap, and for the whole fleet what backfill used and how long GPUs idled."""
    summary = spend(ledger_usages(ledger, wave), config.prices)
    summary["cap_gpu_hours"] = config.max_gpu_hours
    if wave is None:
        summary["backfill"] = backfill_summary(ledger, config, time.time() if now is None else now)
    return summary


def dollars_for(accelerator: str | None, gpu_seconds: float | None, prices: Mapping[str, float]) -> float | None:
    """What one experiment cost; None when its GPU time is unknown or its accelerator unpriced."""
    if gpu_seconds is None or accelerator not in prices:
        return None
    return max(0.0, gpu_seconds) / 3600 * prices[accelerator]


def spend_by_wave(usages: Mapping[str, Iterable[Usage]], prices: Mapping[str, float]) -> dict[str, dict]:
    """`spend` for each wave (or any other grouping) of usages."""
    return {key: spend(group, prices) for key, group in usages.items()}


def ledger_usages_by_wave(ledger: Ledger) -> dict[str, list[Usage]]:
    out: dict[str, list[Usage]] = {w.id: [] for w in ledger.waves()}
    for wave_id, acc, seconds in ledger.gpu_seconds():
        out.setdefault(wave_id, []).append(Usage(acc, seconds))
    return out


def idle_gpu_hours(available: Mapping[str, tuple[float, float]], busy: Iterable[tuple[str, float, float]]) -> float:
    """GPU-hours clusters were up with nothing running: each cluster's (up since, gone at or now) less the
    (cluster, start, end) spans of its jobs within it (a cluster runs one job at a time; overlaps count once)."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for cluster, start, end in busy:
        if cluster in available:
            lo, hi = available[cluster]
            if min(end, hi) > max(start, lo):
                spans[cluster].append((max(start, lo), min(end, hi)))
    idle = 0.0
    for cluster, (lo, hi) in available.items():
        covered, reach = 0.0, lo
        for start, end in sorted(spans[cluster]):
            if end > reach:
                covered += end - max(start, reach)
                reach = end
        idle += max(0.0, hi - lo - covered)
    return idle / 3600


def backfill_summary(ledger: Ledger, config: FleetConfig, now: float) -> dict:
    """Backfill's GPU-hours (spent and still expected), its cap, and the idle GPU-hours of the fleet so far."""
    spent = ledger.select(
        "SELECT COALESCE(SUM(r.gpu_seconds), 0) AS s FROM results r JOIN experiments e ON e.id = r.experiment_id"
        " JOIN waves w ON w.id = e.wave_id WHERE w.backfill = 1")[0]["s"] / 3600
    waves = ledger.select("SELECT COUNT(*) AS n FROM waves WHERE backfill = 1")[0]["n"]
    available = {c.name: (c.created_at, now if c.state.value in ("up", "provisioning") else c.updated_at)
                 for c in ledger.clusters()}
    busy = [(r["cluster"], r["s"], r["e"]) for r in ledger.select(  # every job's span: three columns, not records
        "SELECT cluster, started_at AS s, COALESCE(ended_at, ?) AS e FROM attempts WHERE started_at IS NOT NULL",
        (now,))]
    return {"enabled": config.backfill.enabled, "cap_gpu_hours": config.backfill.max_gpu_hours,
            "gpu_hours": spent, "waves": waves, "idle_gpu_hours": idle_gpu_hours(available, busy)}


def describe_spend(summary: Mapping) -> str:
    """One line for people: total, per accelerator, and the cap when there is one."""
    parts = [f"{summary['gpu_hours']:.2f} GPU-hours, ${summary['dollars']:.2f}"]
    by_acc = summary.get("by_accelerator") or {}
    if len(by_acc) > 1:
        parts.append("(" + ", ".join(f"{acc} {v['gpu_hours']:.2f} h ${v['dollars']:.2f}" for acc, v in by_acc.items()) + ")")
    cap = summary.get("cap_gpu_hours")
    if cap:
        parts.append(f"of a {cap:g} GPU-hour cap ({100 * summary['gpu_hours'] / cap:.0f}% used)")
    if summary.get("unpriced"):
        parts.append(f"— no price for {', '.join(summary['unpriced'])} (set `prices:` in fleet.yaml)")
    fill = summary.get("backfill")
    if fill:
        state = f"of a {fill['cap_gpu_hours']:g} cap" if fill["enabled"] else "(off)"
        parts.append(f"· backfill {fill['gpu_hours']:.2f} GPU-hours {state} · idle {fill['idle_gpu_hours']:.2f} "
                     "GPU-hours")
    return " ".join(parts)
