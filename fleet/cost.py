"""GPU time and money: pure arithmetic over results, priced per accelerator from config.

GPU-seconds count from a job's start to its end on its cluster (queue time excluded); a CPU slot
of the local backend costs nothing unless a price for `cpu` is configured.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.config import FleetConfig
from fleet.ledger import Ledger


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
    return [Usage(r.accelerator or "unknown", r.gpu_seconds) for r in ledger.results(wave=wave).values()
            if r.gpu_seconds is not None]


def cost_summary(ledger: Ledger, config: FleetConfig, wave: str | None = None) -> dict:
    summary = spend(ledger_usages(ledger, wave), config.prices)
    summary["cap_gpu_hours"] = config.max_gpu_hours
    return summary
