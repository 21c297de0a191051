"""What the research commands share: keys with defaults filled in, the evidence verdicts read, and lookups
that turn a bad id into one line of bad input."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from fleet.cli.context import Context
from fleet.cli.wave_cmds import positive_seconds, submit_planned
from fleet.core.expand import config_key, variant_of
from fleet.core.knobs import KnobListing, canonical_config
from fleet.core.ledger_rows import WaveRow
from fleet.core.materialize import CodeStore
from fleet.core.workload import workload_for
from fleet.errors import InputError
from fleet.research.normalize_view import normalized_for, research_results
from fleet.research.plans import Baseline, WavePlan


def add_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"block until it is done, then print {what}")
    p.add_argument("--timeout", type=positive_seconds("--timeout"), default=None,
                   help="with --wait: give up after this many seconds (exit 1)")


class Keys:
    """Configuration keys with defaults filled in, under each code's own knob listing (read once per code)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.codes = CodeStore(workload_for(ctx.workspace.root, ctx.config), ctx.workspace.snapshots)

    def listing(self, code: str) -> KnobListing:
        return self.codes.listing(code)

    def key(self, config: Mapping[str, str], code: str) -> str:
        return config_key(canonical_config(dict(config), self.listing(code)))


class Evidence:
    """What every verdict reads, in the research layer's terms: lower is better (a maximized metric
    negated), and hardware-normalized values."""

    def __init__(self, ctx: Context) -> None:
        higher = ctx.config.metric.higher_is_better
        ledger = ctx.ledger
        self.norm = normalized_for(ledger, ctx.config.reference_accelerator, higher)
        self.experiments = ledger.experiments()
        self.results = research_results(ledger.results(), higher)
        self.slope = self.norm.slope.slope if self.norm.slope is not None else None
        self.metric = ctx.config.metric


def with_metric(report: dict[str, Any], metric) -> dict[str, Any]:
    report["metric_name"] = metric.name
    report["direction"] = metric.direction  # maximize: values are negated (lower is better there)
    return report


def wave_of(ctx: Context, wave_id: str) -> WaveRow:
    wave = ctx.ledger.wave(wave_id)
    if wave is None:
        raise InputError(f"wave {wave_id!r} does not exist; `fleet status` lists waves")
    return wave


def experiment_of(ctx: Context, exp_id: str | None, what: str):
    if exp_id is None:
        return None
    exp = ctx.ledger.experiment(exp_id)
    if exp is None:
        raise InputError(f"{what} {exp_id!r} is not an experiment; `fleet results --json` lists experiment ids")
    return exp


def tier_of(ctx: Context, tier: str) -> str:
    if tier not in ctx.config.tiers:
        raise InputError(f"--tier {tier!r} is not a configured tier; tiers: {', '.join(sorted(ctx.config.tiers))} "
                         "(define tiers under `tiers:` in fleet.yaml)")
    return tier


def warn_other_code(ctx: Context, baseline: Baseline, plan: WavePlan) -> None:
    if baseline.experiment is None:
        return
    exp = ctx.ledger.experiment(baseline.experiment)
    own = plan.spec["baseline"].get("snapshot") or plan.snapshot
    if exp is not None and exp.code != own and variant_of(exp.config) is None:
        ctx.sink.warn(f"the baseline {exp.id} ran code {exp.code}; its configuration now runs on the "
                      f"candidates' code {own}, so the comparison is of knobs only")


def submit(ctx: Context, plan: WavePlan, tier: str, *, kind: str, parent: str, base: dict) -> WaveRow:
    spec = {**plan.spec, "tier": tier}
    wave, _ = submit_planned(ctx, plan.spec["name"], tier, spec, plan.planned, kind=kind, parent=parent,
                             source=f"fleet {kind}", snapshot=plan.snapshot, base=base)
    return wave
