"""The state an agent's loop acts on, gathered from the ledger once (`fleet next`, `fleet journal`, and the
`next:` hints of other commands). The decisions over it are `fleet.observe.next_steps` (pure)."""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from fleet.cli.context import Context
from fleet.cli.results_view import (
    ablation_reports,
    leaderboard_payload,
    validation_reports,
)
from fleet.cli.verdict_inputs import grid_report, seeded_grid
from fleet.core import knob_block
from fleet.core.budget import budget_left
from fleet.core.drain import drain_forecast
from fleet.core.ledger_rows import ExperimentRow, WaveRow
from fleet.core.schedule import ClusterSlot, eligible_clusters
from fleet.core.workload import workload_for
from fleet.errors import InputError
from fleet.observe.cost import cost_summary
from fleet.observe.next_steps import (
    HORIZON_S,
    SCREEN_KINDS,
    Adopted,
    AdoptTarget,
    Budget,
    CandidateView,
    ClusterView,
    ConfigView,
    LoopState,
    WaveView,
)
from fleet.observe.report import AdoptedChange
from fleet.research.backfill import backfill_spend
from fleet.research.plans import BASELINE_DESCRIPTION
from fleet.types import ClusterState, ExperimentState

UNFINISHED = ("planned", "pending", "queued", "running")  # planned: a search's trials not chosen yet, work left


@dataclass
class Gathered:
    """The state, and what it was read from (for the journal's tables)."""

    state: LoopState
    waves: list[WaveRow]
    experiments: list[ExperimentRow]
    reports: dict[str, dict[str, Any]]  # validation reports by wave id
    ablations: dict[str, dict[str, Any]]  # ablation reports by wave id
    board: dict[str, Any]  # the leaderboard payload
    adoption_rows: list = field(default_factory=list)  # the ledger's adoption records (AdoptionRow)


def preset_of(exp: ExperimentRow, result) -> str | None:
    """The preset an env-knob experiment ran with: its PRESET knob, else its summary's `preset:`."""
    chosen = exp.config.get("PRESET")
    if chosen in knob_block.PRESETS:
        return chosen
    reported = result.metrics.get("preset") if result is not None else None
    return reported if reported in knob_block.PRESETS else None


def next_wave_file(ctx: Context, first: bool) -> str:
    """A wave file name that does not exist yet: waves/NNN-next.yaml after the highest NNN there."""
    directory = ctx.workspace.root / "waves"
    numbers = [int(m.group(1)) for p in (directory.glob("*.y*ml") if directory.is_dir() else [])
               if (m := re.match(r"(\d+)-", p.name))]
    n = max(numbers, default=0) + 1
    return f"waves/{n:03d}-{'baseline' if first and n == 1 else 'next'}.yaml"


def _candidates(report: dict[str, Any], code: dict[str, str]) -> tuple[CandidateView, ...]:
    return tuple(CandidateView(c["experiment"], c["label"], c["verdict"], c["gain"], c["n"], c["pairs_for_power"],
                               code.get(c["experiment"] or ""), c["config_key"], dict(c["changes"]),
                               len(c["flagged_seeds"]))
                 for c in report["candidates"])


def _config_view(config: dict[str, Any] | None) -> ConfigView | None:
    if config is None or config["val_bpb"] is None:
        return None
    return ConfigView(config["label"] or "(base)", config["val_bpb"], config["std"], config["n"],
                      config["experiments"][0], config["code"], config["config_key"])


def gather(ctx: Context, track: str | None = None, now: float | None = None, horizon_s: float = HORIZON_S) -> Gathered:
    ledger, config = ctx.ledger, ctx.config
    now = time.time() if now is None else now
    tiers = {name: tier.accelerators for name, tier in config.tiers.items()}
    own = drain_forecast(ledger, tiers, now, backfill=False)  # backfill yields: it does not keep a cluster busy
    every = drain_forecast(ledger, tiers, now)
    depth = Counter(a.cluster for a in ledger.attempts(active=True))
    up = [ClusterSlot(c.name, c.accelerator, 0) for c in ledger.clusters([ClusterState.UP])]
    clusters = []
    for c in ledger.clusters():
        if c.state == ClusterState.DOWN:
            continue
        eligible = tuple(t for t in tiers if any(s.name == c.name for s in eligible_clusters(t, up, tiers)))
        clusters.append(ClusterView(c.name, c.accelerator, c.state.value, depth[c.name],
                                    own.dry_in.get(c.name) if c.state == ClusterState.UP else None, c.replaces,
                                    eligible))
    all_waves = ledger.waves()
    by_id = {w.id: w for w in all_waves}
    waves = [w for w in all_waves if track is None or w.track == track]
    experiments = ledger.experiments()
    code = {e.id: e.code for e in experiments}
    reports = {r["wave"]: r for r in validation_reports(ctx)}
    for w in all_waves:  # a seeded grid with a baseline is judged on its own seed pairs once it finished
        if w.kind == "grid" and not any(ledger.counts(w.id).get(s, 0) for s in UNFINISHED) and seeded_grid(ctx, w):
            try:
                reports[w.id] = grid_report(ctx, w)
            except InputError:
                pass  # nothing to judge (every configuration is the baseline)
    order = {w.id: i for i, w in enumerate(all_waves)}  # oldest first: a later verdict on a configuration wins
    reports = dict(sorted(reports.items(), key=lambda kv: order.get(kv[0], len(order))))
    reads = ledger.verdicts_read()
    board = leaderboard_payload(ctx, None)
    board_rows = {r["experiment"]: r for r in board["rows"]}
    ablations: dict[str, dict[str, Any]] = {}
    views = []
    for w in waves:
        counts = ledger.counts(w.id)
        unfinished = sum(counts.get(s, 0) for s in UNFINISHED)
        mine = [e for e in experiments if e.wave_id == w.id]
        report = reports.get(w.id)
        complete = unfinished == 0 and (report is None or report["complete"])
        drop: tuple[str, ...] = ()
        if w.kind == "ablate" and complete:
            if not ablations:
                ablations = {r["wave"]: r for r in ablation_reports(ctx)}
            drop = tuple(ablations[w.id]["drop"])
        base_keys = {e.config_key for e in mine if e.description.strip().lower() == BASELINE_DESCRIPTION}
        promotable = w.kind in SCREEN_KINDS and any(e.state == ExperimentState.DONE and e.config_key not in base_keys
                                              for e in mine)
        eta = every.wave_eta.get(w.id) if unfinished else None
        views.append(WaveView(
            w.id, w.kind, w.tier, w.track, w.backfill, w.parent, sum(counts.values()), unfinished,
            counts.get("done", 0), counts.get("crash", 0) + counts.get("timeout", 0), counts.get("cancelled", 0),
            counts.get("held", 0), eta, complete, w.id in reads, bool(w.spec.get("recheck")),
            _candidates(report, code) if report else (), drop, promotable, w.created_at, w.spec.get("experiment"),
            _code_taken_at(w, by_id), _screen_gain(mine, board_rows, base_keys) if promotable else None))
    in_track = {e.id for e in experiments if e.wave_id in {w.id for w in waves}}
    configs = [c for c in board["configs"] if c["rank"] is not None and (track is None or in_track & set(c["experiments"]))]
    best = _config_view(configs[0] if configs else None)
    baseline, code_at = _committed_baseline(waves, experiments, board["configs"], by_id)
    results = ledger.results()
    workload = workload_for(ctx.workspace.root, config)
    script = f"{workload.prefix}/{workload.script}" if workload.prefix else workload.script
    targets = {}
    for r in reports.values():
        for c in r["candidates"]:
            exp = ledger.experiment(c["experiment"]) if c["verdict"] == "keep" and c["experiment"] else None
            if exp is not None:
                wave = next((w for w in all_waves if w.id == exp.wave_id), None)
                knobs = (wave.spec.get("knobs") if wave else None) or "env"
                targets[exp.id] = AdoptTarget(exp.id, script, preset_of(exp, results.get(exp.id)), knobs)
    adoption_rows = ledger.adoptions()
    adopted = tuple(Adopted(a.experiment_id, a.adopted_at, code.get(a.experiment_id),
                            next((e.config_key for e in experiments if e.id == a.experiment_id), None), a.preset,
                            tuple(d["knob"] for d in a.defaults))
                    for a in adoption_rows)
    spend = backfill_spend(ledger)
    budget = Budget(cost_summary(ledger, config)["gpu_hours"], config.max_gpu_hours, budget_left(ledger, config),
                    config.backfill.enabled, spend.spent, config.backfill.max_gpu_hours)
    screen = "screen" if "screen" in config.tiers else next(iter(config.tiers), "screen")
    state = LoopState(
        tuple(clusters), tuple(views), config.queue_depth, best, baseline, code_at, adopted, budget, targets,
        validate_tier="validate" if "validate" in config.tiers else screen, screen_tier=screen,
        controller_error=(ledger.get_meta("controller_error") or None),
        next_wave_file=next_wave_file(ctx, not any(not w.backfill for w in all_waves)), track=track,
        horizon_s=horizon_s)
    return Gathered(state, waves, experiments, reports, ablations, board, adoption_rows)


def _screen_gain(mine: list[ExperimentRow], rows: dict[str, dict[str, Any]], base_keys: set[str]) -> float | None:
    """A screen's promise: its baseline's mean − its best other configuration's mean (lower is better); None
    without a finished baseline. The column is `fleet promote`'s (`plans.rank_screen`): normalized when any run
    has a normalized value (runs without one left out), else raw, so that a screen `fleet next` offers to promote
    is one whose best `fleet promote` finds better than its baseline."""
    values: dict[str, list[float]] = {}
    runs = [rows[e.id] for e in mine if e.id in rows and rows[e.id]["val_bpb"] is not None]
    column = "normalized" if any(r["normalized"] is not None for r in runs) else "val_bpb"
    for r in runs:
        if r[column] is not None:
            values.setdefault(r["config_key"], []).append(r[column])
    base = [v for k in base_keys for v in values.get(k, [])]
    others = [sum(v) / len(v) for k, v in values.items() if k not in base_keys]
    if not base or not others:
        return None
    return sum(base) / len(base) - min(others)


def _code_taken_at(wave: WaveRow, by_id: dict[str, WaveRow]) -> float:
    """When the code a wave's candidates start from was taken: its first ancestor that is not a promote wave
    (a screen snapshots the working tree; its promotions and their continuations reuse that code)."""
    seen = set()
    while wave.kind == "promote" and wave.parent in by_id and wave.parent not in seen:
        seen.add(wave.id)
        wave = by_id[wave.parent]
    return wave.created_at


def _committed_baseline(waves: list[WaveRow], experiments: list[ExperimentRow], configs: list[dict[str, Any]],
                        by_id: dict[str, WaveRow]) -> tuple[ConfigView | None, float | None]:
    """The `baseline` configuration on the latest code a screen took (the code the agent's next ideas are
    compared with), and when that code was taken. By code, not by finish time: a baseline queued before an
    adoption finishes after it on the old code."""
    screens = {w.id: _code_taken_at(w, by_id) for w in waves if w.kind in SCREEN_KINDS and not w.backfill}
    runs = [e for e in experiments if e.wave_id in screens and e.state == ExperimentState.DONE
            and e.description.strip().lower() == BASELINE_DESCRIPTION]
    if not runs:
        return None, None
    latest = max(runs, key=lambda e: (screens[e.wave_id], e.finished_at or 0.0, e.id))
    match = next((c for c in configs if c["code"] == latest.code and c["config_key"] == latest.config_key), None)
    view = _config_view(match)
    if view is not None:  # name the screen's own run (its runs elsewhere are pooled into the mean)
        view = replace(view, experiment=latest.id)
    return view, screens[latest.wave_id]


def adopted_changes(rows: list, reports: dict[str, dict[str, Any]], experiments: list[ExperimentRow]) -> list[AdoptedChange]:
    """The ledger's adoption records, each with the keep verdict behind it (the journal's and the report's table)."""
    verdict_of: dict[str, str] = {}
    for report in reports.values():
        for c in report["candidates"]:
            if c["verdict"] == "keep" and c["experiment"]:
                delta = f"Δ {c['delta']:+.4f}, " if c["delta"] is not None else ""
                verdict_of[c["experiment"]] = f"keep in {report['wave']} ({delta}{c['n']} pairs)"
    labels = {e.id: e.label or e.description or e.id for e in experiments}
    out = []
    for a in rows:
        written = ", ".join(f"{d['knob']} {d['from']} -> {d['to']}" for d in a.defaults)
        where = f" (preset {a.preset})" if a.preset and written else ""
        out.append(AdoptedChange(time.strftime("%Y-%m-%d %H:%M", time.localtime(a.adopted_at)), a.experiment_id,
                                 labels.get(a.experiment_id, a.experiment_id),
                                 verdict_of.get(a.experiment_id, "no keep verdict on record"),
                                 (written + where) if written else "code only"))
    return out
