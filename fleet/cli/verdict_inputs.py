"""What verdicts read, for every command that shows one: configuration keys with defaults filled in, the
evidence (results lower-is-better, normalized values), and a seeded grid wave read as a validation."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fleet.cli.context import Context
from fleet.core.expand import config_key
from fleet.core.knobs import KnobListing, canonical_config
from fleet.core.ledger_rows import WaveRow
from fleet.core.materialize import CodeStore
from fleet.core.workload import workload_for
from fleet.research.normalize_view import normalized_for, research_results
from fleet.research.plans import Baseline, grid_verdict_spec, resolve_baseline
from fleet.research.verdict_report import promotion_report
from fleet.research.verdicts import Rule


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


def grid_report(ctx: Context, wave: WaveRow, evidence: Evidence | None = None) -> dict[str, Any]:
    """The verdict report of a seeded grid wave read as a validation (`fleet verdict GRID`); raises
    InputError when it cannot be (no baseline run, one seed)."""
    experiments = ctx.ledger.experiments(wave=wave.id)
    keys = Keys(ctx)
    baseline = resolve_baseline(wave, experiments, key=lambda c: keys.key(c, wave.snapshot))
    baseline = Baseline(baseline.config, baseline.source, baseline.experiment, keys.key(baseline.config, wave.snapshot))
    v = ctx.config.verdicts
    spec = grid_verdict_spec(wave, experiments, baseline, Rule(v.alpha, v.min_effect, 2, 2, "fixed", v.step_mismatch))
    evidence = evidence or Evidence(ctx)
    report = promotion_report(replace(wave, spec={**wave.spec, **spec}), evidence.experiments, evidence.results,
                              evidence.norm.values, evidence.slope)
    return with_metric(report, evidence.metric)


def seeded_grid(ctx: Context, wave: WaveRow) -> bool:
    """Whether a grid wave can be judged on its own seed pairs: a `baseline` experiment, several seeds."""
    if wave.kind != "grid" or wave.backfill:
        return False
    runs = [e for e in ctx.ledger.experiments(wave=wave.id) if e.description.strip().lower() == "baseline"]
    return len({e.seed for e in runs}) >= 2
