"""Backfill: useful work the fleet queues by itself when a cluster would otherwise go idle.

When no pending work can use a cluster's free queue slots, the controller's cycle hook ``backfill``
queues, in this order, the first of these that the free clusters can run:

1. **more seed pairs** for the most promising inconclusive candidate (the largest estimated gain) of a
   validation wave: a continuation wave (`plans.plan_continuation`) whose verdict pools the pairs
   already run, with a cap of twice the original (or the pairs the verdict said 80% power needs);
2. **a re-check** of the current best (the latest adopted experiment, else the latest kept candidate) against
   the original baseline on
   fresh seeds (`plans.plan_recheck`): several keeps each carry some luck;
3. **calibration runs**: the configuration run most on the reference accelerator, run on an
   accelerator whose speed factor rests on no shared configuration (`normalize.needs_calibration`),
   on the tier pinned to it.

Each subject is backfilled once (its key is recorded in the wave's spec). Backfill waves are marked
`backfill` in the ledger: the scheduler gives them only the room no other work can use, takes
their queued jobs back as soon as other work finds no room (they never start then), and does not
count them against a track's fair share. Their GPU time counts in cost like any other.

**Cap.** Backfill's GPU-hours, spent plus expected for its unfinished experiments, stay under
``backfill.max_gpu_hours`` (and the fleet's ``max_gpu_hours``): an option is taken only when its
expected cost fits, and when sequential pairs added later push past the cap, backfill experiments
still pending (not on a cluster) are cancelled, newest first; a cancelled validation adds no pairs.

`free_rooms`, `choose` and `over_cap` are pure; `Backfill.__call__` is the I/O around them.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.config import FleetConfig
from fleet.core.budget import budget_left, budget_reached, expected_gpu_hours
from fleet.core.demand import active_work, expected_seconds, pending_work
from fleet.core.expand import PlannedExperiment
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ExperimentRow, WaveRow, decode_row
from fleet.core.materialize import choices_from, fleet_code_store, prepare_experiments
from fleet.core.schedule import (
    ClusterSlot,
    PendingExperiment,
    assign,
    eligible_clusters,
)
from fleet.errors import FleetError
from fleet.research.normalize_view import normalized_for, research_results
from fleet.research.plans import (
    BASELINE_DESCRIPTION,
    WavePlan,
    current_best,
    original_baseline,
    plan_continuation,
    plan_recheck,
)
from fleet.research.promote import pairs_to_settle, promising, rule_from_spec
from fleet.research.verdict_report import (
    is_validation,
    most_promising_inconclusive,
    promotion_report,
)
from fleet.research.verdicts import Rule
from fleet.types import ClusterState, ExperimentState
from fleet.workspace import Workspace

log = logging.getLogger("fleet.research.backfill")

BACKFILL_PRIORITY = -1000  # the lowest a wave may have; the scheduler places backfill after all else anyway
MAX_CAP_FACTOR = 4  # a continuation's cap is at most this many times the original cap
UNFINISHED = (ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING)


@dataclass(frozen=True)
class Room:
    cluster: str
    accelerator: str
    free: int  # queue slots no pending work will take


@dataclass(frozen=True)
class Option:
    """One piece of backfill work that could be queued now."""

    key: str  # its subject, backfilled once: "pairs:CODE:CONFIG", "recheck:CODE:CONFIG", "calibrate:ACC"
    kind: str  # pairs | recheck | calibrate
    tier: str
    runs: int  # experiments it starts with
    gpu_hours: float  # their expected cost
    why: str


def free_rooms(slots: Sequence[ClusterSlot], pending: Sequence[PendingExperiment], depth: int,
               tiers: Mapping[str, Sequence[str]]) -> list[Room]:
    """The queue slots left on each cluster once every pending experiment (backfill included) is placed."""
    used: dict[str, int] = {}
    for a in assign(slots, pending, depth, tiers):
        used[a.cluster] = used.get(a.cluster, 0) + 1
    rooms = [Room(c.name, c.accelerator, depth - c.depth - used.get(c.name, 0)) for c in slots if c.accepting]
    return [r for r in rooms if r.free > 0]


def choose(slots: Sequence[ClusterSlot], rooms: Sequence[Room], options: Sequence[Option],
           tiers: Mapping[str, Sequence[str]], made: set[str], cap_left: float) -> list[Option]:
    """The options to queue now, in order: each not made before, fitting the cap, with a free cluster
    its tier may use (`slots` are all the fleet's clusters: a tier pinned to hardware the fleet has
    waits for it, as the scheduler does). Stops once the free slots are spoken for."""
    free = {r.cluster: r.free for r in rooms}
    out = []
    for option in options:
        if not any(free.values()):
            break
        if option.key in made or option.gpu_hours > cap_left + 1e-9:
            continue
        eligible = [c.name for c in eligible_clusters(option.tier, slots, tiers) if free.get(c.name, 0) > 0]
        if not eligible:
            continue
        out.append(option)
        made = made | {option.key}
        cap_left -= option.gpu_hours
        need = option.runs
        for name in eligible:
            take = min(free[name], need)
            free[name] -= take
            need -= take
    return out


def over_cap(pending: Sequence[tuple[str, float]], spent: float, committed: float, cap: float) -> list[str]:
    """Pending backfill experiments (id, expected GPU-hours; oldest first) to cancel, newest first,
    so that what was spent plus what is committed (pending ones included) is within ``cap``."""
    excess = spent + committed - cap
    out = []
    for exp_id, hours in reversed(pending):
        if excess <= 1e-9:
            break
        out.append(exp_id)
        excess -= hours
    return out


# ---- the options, read off the ledger --------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    option: Option
    plan: WavePlan
    kind: str  # the wave kind: promote (pairs, recheck) or calibrate
    parent: str | None
    track: str


def _hours(planned: Sequence[PlannedExperiment], default_budget: float | None) -> float:
    return sum(expected_seconds(p.config, default_budget) for p in planned) / 3600


def _first_seed(experiments: Sequence[ExperimentRow], keys: set[str]) -> int:
    return max((e.seed for e in experiments if e.config_key in keys), default=-1) + 1


def _candidates_of(wave: WaveRow, experiments: Sequence[ExperimentRow]) -> set[tuple[str, str]]:
    """(code, config key) of a validation wave's candidates, as its runs recorded them."""
    keys = {c["config_key"] for c in wave.spec.get("candidates", [])}
    return {(e.code, e.config_key) for e in experiments if e.wave_id == wave.id and e.config_key in keys}


def pair_options(waves: Sequence[WaveRow], experiments: Sequence[ExperimentRow], reports: Mapping[str, dict],
                 config: FleetConfig) -> list[Planned]:
    """More pairs for inconclusive candidates that promise a gain, the largest estimated gain first."""
    by_id = {w.id: w for w in waves}
    found = []
    for wave_id, report in reports.items():
        wave = by_id[wave_id]
        if report.get("recheck") or not report.get("complete"):
            continue
        cand = most_promising_inconclusive(report)
        if cand is None or not cand["experiment"]:
            continue
        if pairs_to_settle((c["n"], c["pairs_for_power"]) for c in report["candidates"]
                           if promising(c["verdict"], c["gain"])) is None:
            continue  # no affordable number of pairs settles it: its verdict said move on, and so does `fleet next`
        code = next(e.code for e in experiments if e.id == cand["experiment"])
        later = [w for w in waves if is_validation(w) and (w.created_at, w.id) > (wave.created_at, wave.id)]
        if any((code, cand["config_key"]) in _candidates_of(w, experiments) for w in later):
            continue  # continued already (by the agent or by backfill)
        found.append((cand, wave, code))
    out = []
    for cand, wave, code in sorted(found, key=lambda f: (-f[0]["gain"], f[1].id)):
        rule = rule_from_spec(wave.spec)
        cap = min(max(cand["pairs_for_power"] or 0, 2 * rule.max_n), MAX_CAP_FACTOR * rule.max_n)
        new_rule = Rule(rule.alpha, rule.min_effect, cap, rule.first_look, rule.design, rule.mismatch)
        keys = {cand["config_key"], wave.spec["baseline"]["config_key"]}
        plan = plan_continuation(wave, cand["config_key"], new_rule, _first_seed(experiments, keys))
        plan = WavePlan(plan.planned, {**plan.spec, "name": f"backfill-{wave.id}-more"}, plan.snapshot)
        hours = _hours(plan.planned, wave.spec.get("default_budget"))
        why = (f"{cand['label']} of {wave.id} is inconclusive at {cand['n']} pairs with an estimated gain of "
               f"{cand['gain']:.4f}: more pairs, up to {cap}")
        option = Option(f"pairs:{code}:{cand['config_key']}", "pairs", wave.tier, len(plan.planned), hours, why)
        out.append(Planned(option, plan, "promote", wave.id, wave.track))
    return out


def recheck_option(waves: Sequence[WaveRow], experiments: Sequence[ExperimentRow], reports: Mapping[str, dict],
                   config: FleetConfig, adopted: Sequence[str] = ()) -> Planned | None:
    """The current best (``adopted``: the ledger's adopted experiments, oldest first) against the original
    baseline on fresh seeds, once per best."""
    best_id = current_best(waves, {k: r for k, r in reports.items() if not r.get("recheck")}, adopted)
    baseline = original_baseline(waves)
    best = next((e for e in experiments if e.id == best_id), None)
    if best is None or baseline is None:
        return None
    rechecked = [w for w in waves if is_validation(w) and w.spec.get("recheck")]
    if any((best.code, best.config_key) in _candidates_of(w, experiments) for w in rechecked):
        return None
    kept_in = next(w for w in waves if w.id == best.wave_id)
    if any((w.created_at, w.id) > (kept_in.created_at, kept_in.id) for w in rechecked):
        return None  # re-checked since that keep: pooled runs may reorder tied keeps, which is no new best
    v = config.verdicts
    rule = Rule(v.alpha, v.min_effect, v.max_seeds, min(v.first_look, v.max_seeds), "sequential", v.step_mismatch)
    try:
        plan = plan_recheck(best, baseline, rule, _first_seed(experiments, {best.config_key, baseline.config_key or ""}))
    except FleetError:
        return None  # the best is the original baseline itself
    wave = next(w for w in waves if w.id == best.wave_id)
    plan = WavePlan(plan.planned, {**plan.spec, "name": f"backfill-{best.id}-recheck"}, plan.snapshot)
    tier = "validate" if "validate" in config.tiers else wave.tier
    why = f"the current best {best.id} ({best.label or best.id}) has not been re-checked against {baseline.source}"
    option = Option(f"recheck:{best.code}:{best.config_key}", "recheck", tier, len(plan.planned),
                    _hours(plan.planned, wave.spec.get("default_budget")), why)
    return Planned(option, plan, "promote", best.wave_id, wave.track)


def calibration_options(ledger: Ledger, waves: Sequence[WaveRow], experiments: Sequence[ExperimentRow],
                        config: FleetConfig) -> list[Planned]:
    """The reference's most-run configuration on each accelerator whose speed factor is a guess."""
    norm = normalized_for(ledger, config.reference_accelerator, config.metric.higher_is_better)
    if norm.calibration is None or not norm.calibration.needs_calibration:
        return []
    results = ledger.results()
    on_reference: dict[tuple[str, str], list[ExperimentRow]] = {}
    for e in experiments:
        r = results.get(e.id)
        if e.state == ExperimentState.DONE and r is not None and r.accelerator == config.reference_accelerator:
            on_reference.setdefault((e.code, e.config_key), []).append(e)
    if not on_reference:
        return []
    runs = max(on_reference.values(), key=lambda rows: (len(rows), rows[0].id))
    model = runs[0]
    up = {c.accelerator for c in ledger.clusters([ClusterState.UP])}
    by_id = {w.id: w for w in waves}
    out = []
    for acc in norm.calibration.needs_calibration:
        tier = next((name for name, t in sorted(config.tiers.items()) if list(t.accelerators) == [acc]), None)
        if tier is None or acc not in up:
            continue
        first = _first_seed(experiments, {model.config_key})
        seeds = range(first, first + config.verdicts.first_look)
        planned = [PlannedExperiment(dict(model.config), s, BASELINE_DESCRIPTION, model.config_key,
                                     model.label or BASELINE_DESCRIPTION, {}, model.code) for s in seeds]
        spec = {"name": f"backfill-calibrate-{acc}", "calibrate": acc, "reference": config.reference_accelerator,
                "config": dict(model.config), "config_key": model.config_key, "seeds": len(planned)}
        source = by_id.get(model.wave_id)
        hours = _hours(planned, source.spec.get("default_budget") if source else None)
        why = (f"{acc}'s speed factor rests on no configuration shared with {config.reference_accelerator}: "
               f"{model.label or 'the baseline'} ({len(runs)} runs there) on {acc}")
        out.append(Planned(Option(f"calibrate:{acc}", "calibrate", tier, len(planned), hours, why),
                           WavePlan(planned, spec, model.code), "calibrate", model.wave_id,
                           source.track if source else ""))
    return out


def validation_reports(ledger: Ledger, config: FleetConfig) -> dict[str, dict[str, Any]]:
    """Every validation wave's verdict report, by wave id."""
    waves = [w for w in ledger.waves() if is_validation(w)]
    if not waves:
        return {}
    higher = config.metric.higher_is_better
    experiments, results = ledger.experiments(), research_results(ledger.results(), higher)
    norm = normalized_for(ledger, config.reference_accelerator, higher)
    slope = norm.slope.slope if norm.slope is not None else None
    return {w.id: promotion_report(w, experiments, results, norm.values, slope) for w in waves}


# ---- the hook --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spend:
    spent: float  # GPU-hours of finished backfill runs
    committed: float  # expected GPU-hours of unfinished ones
    pending: list[tuple[str, float]]  # pending (not yet on a cluster) backfill runs, oldest first


def backfill_spend(ledger: Ledger) -> Spend:
    """What backfill has used and holds, from the ledger."""
    spent = ledger.select(
        "SELECT COALESCE(SUM(r.gpu_seconds), 0) AS s FROM results r JOIN experiments e ON e.id = r.experiment_id"
        " JOIN waves w ON w.id = e.wave_id WHERE w.backfill = 1")[0]["s"] / 3600
    marks = ",".join("?" * len(UNFINISHED))
    rows = ledger.select(
        f"SELECT e.* FROM experiments e JOIN waves w ON w.id = e.wave_id"
        f" WHERE w.backfill = 1 AND e.state IN ({marks}) ORDER BY e.created_at, e.id", [s.value for s in UNFINISHED])
    committed, pending = 0.0, []
    for exp in (decode_row(ExperimentRow, r) for r in rows):
        hours = expected_gpu_hours(exp)
        committed += hours
        if exp.state == ExperimentState.PENDING:
            pending.append((exp.id, hours))
    return Spend(spent, committed, pending)


def planned_trials(ledger: Ledger, limit: int) -> list[PendingExperiment]:
    """A search wave's planned trials as work for the free places: the search makes them when the
    scheduler gives it a slot, so a place a search will take is not idle."""
    rows = ledger.select(
        "SELECT e.id AS id, e.tier AS tier, w.priority AS priority, w.track AS track FROM experiments e"
        " JOIN waves w ON w.id = e.wave_id WHERE e.state = ? ORDER BY e.seq LIMIT ?",
        (ExperimentState.PLANNED.value, limit))
    return [PendingExperiment(r["id"], r["tier"], 0.0, r["priority"], r["track"]) for r in rows]


class Backfill:
    """The controller's cycle hook (`fleet.core.hooks`): queue backfill where a cluster would go idle."""

    every_cycle = True  # room also appears when clusters come up, not only when something finished

    def __init__(self) -> None:
        self._nothing_at: tuple | None = None  # the ledger's state when there was nothing worth queuing

    def __call__(self, workspace: Workspace, ledger: Ledger, config: FleetConfig, finished) -> int:
        if not config.backfill.enabled:
            return 0
        spend = backfill_spend(ledger)
        cap = config.backfill.max_gpu_hours
        for exp_id in over_cap(spend.pending, spend.spent, spend.committed, cap):
            if ledger.set_state(exp_id, ExperimentState.CANCELLED,
                                f"backfill cap reached ({cap:g} GPU-hours, `backfill.max_gpu_hours` in fleet.yaml)",
                                only_from=(ExperimentState.PENDING,)):
                log.info("backfill: cancelled %s (over the backfill cap)", exp_id)
        slots, rooms, tiers = self._rooms(ledger, config)
        if not rooms:
            return 0
        state = self._state(ledger)
        if state == self._nothing_at:
            return 0  # nothing changed since nothing was worth queuing: the evaluation is not repeated
        cap_left = cap - spend.spent - spend.committed
        if config.max_gpu_hours is not None:  # the fleet's own cap binds backfill too
            if budget_reached(ledger, config):
                return 0
            cap_left = min(cap_left, budget_left(ledger, config) or 0.0)
        added = 0
        for planned in self._chosen(workspace, ledger, config, slots, rooms, tiers, cap_left):
            added += self._queue(workspace, ledger, config, planned)
        if not added:
            self._nothing_at = state
        return added

    @staticmethod
    def _rooms(ledger: Ledger, config: FleetConfig):
        clusters = ledger.clusters([ClusterState.UP])
        if not clusters:
            return [], [], {}
        depth = {c.name: 0 for c in clusters}
        for row in active_work(ledger):
            if row.attempt.cluster in depth:
                depth[row.attempt.cluster] += 1
        slots = [ClusterSlot(c.name, c.accelerator, depth[c.name]) for c in clusters]
        if all(d >= config.queue_depth for d in depth.values()):
            return slots, [], {}
        tiers = {name: tier.accelerators for name, tier in config.tiers.items()}
        # the head of each track is as much as the free places could take (not a 10,000-run wave whole)
        room = sum(config.queue_depth - d for d in depth.values() if d < config.queue_depth)
        pending = [PendingExperiment(r.experiment.id, r.experiment.tier, 0.0, r.priority, r.track, r.backfill)
                   for r in pending_work(ledger, per_track=room)]
        pending += planned_trials(ledger, room)
        return slots, free_rooms(slots, pending, config.queue_depth, tiers), tiers

    @staticmethod
    def _state(ledger: Ledger) -> tuple:
        row = ledger.select("SELECT (SELECT COUNT(*) FROM results) AS r, (SELECT COUNT(*) FROM waves) AS w,"
                            " (SELECT COUNT(*) FROM clusters WHERE state = 'up') AS c,"
                            " (SELECT COUNT(*) FROM experiments WHERE state = 'cancelled') AS x")[0]
        return tuple(row)

    @staticmethod
    def _chosen(workspace: Workspace, ledger: Ledger, config: FleetConfig, slots, rooms, tiers,
                cap_left: float) -> list[Planned]:
        waves = ledger.waves()
        experiments = ledger.experiments()
        reports = validation_reports(ledger, config)
        candidates = pair_options(waves, experiments, reports, config)
        recheck = recheck_option(waves, experiments, reports, config, [a.experiment_id for a in ledger.adoptions()])
        candidates += [recheck] if recheck is not None else []
        candidates += calibration_options(ledger, waves, experiments, config)
        made = {w.spec.get("backfill", {}).get("key") for w in waves if w.backfill}
        chosen = choose(slots, rooms, [c.option for c in candidates], tiers, made, cap_left)
        keys = {o.key for o in chosen}
        return [c for c in candidates if c.option.key in keys]

    @staticmethod
    def _queue(workspace: Workspace, ledger: Ledger, config: FleetConfig, planned: Planned) -> int:
        codes = fleet_code_store(workspace, config, ledger)
        try:
            prepared = prepare_experiments(planned.plan.planned, codes, planned.plan.snapshot,
                                           choices_from(ledger.experiments()), f"backfill {planned.option.kind}")
        except FleetError as exc:  # the code it needs is gone, or its knobs no longer pass: skip it
            log.warning("backfill: could not prepare %s: %s", planned.option.key, exc)
            return 0
        spec = {**planned.plan.spec, "tier": planned.option.tier, "default_budget": prepared.default_budget,
                "knobs": prepared.knobs, "metric": {"name": config.metric.name, "direction": config.metric.direction},
                "backfill": {"key": planned.option.key, "kind": planned.option.kind, "why": planned.option.why}}
        wave, experiments = ledger.add_wave(spec["name"], planned.option.tier, spec, planned.plan.snapshot,
                                            prepared.experiments, kind=planned.kind, parent=planned.parent,
                                            priority=BACKFILL_PRIORITY, track=planned.track, backfill=True)
        log.info("backfill: queued %s (%d experiments): %s", wave.id, len(experiments), planned.option.why)
        return len(experiments)


backfill = Backfill()  # what `fleet.cli.context.CONTROLLER_HOOKS` names

__all__ = ["BACKFILL_PRIORITY", "Backfill", "Option", "Room", "backfill", "backfill_spend", "choose", "free_rooms",
           "over_cap", "pair_options", "planned_trials", "recheck_option", "validation_reports"]
