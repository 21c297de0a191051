"""`fleet wave`, `fleet bump`, `fleet cancel`, `fleet release`: submitting work and ordering it (`fleet wait`
is `fleet.cli.wait_cmds`)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path

from rich.text import Text

from fleet.cli import wait_cmds
from fleet.cli.context import CONTROLLER_HOOKS, Context
from fleet.cli.next_cmds import next_hint
from fleet.cli.search_view import check_search, planned_trials, search_dry_run
from fleet.cli.wait_cmds import (  # noqa: F401 - re-exported for the research commands
    UNFINISHED,
    already_queued,
    block_until_done,
    positive_seconds,
    wait_for,
)
from fleet.config import TRACK_PATTERN, VALIDATION_PRIORITY
from fleet.core.daemon import bring_up_local, ensure_controller
from fleet.core.fleet_size import fleet_target
from fleet.core.expand import check_size, count_experiments, expand_wave, interleave_baseline, variant_entries
from fleet.core.knobs import canonicalize
from fleet.core.ledger_rows import NewExperiment
from fleet.core.materialize import CodeStore, choices_from, code_choice, fleet_code_store, prepare_experiments, resolve_variants
from fleet.core.wave import load_wave
from fleet.core.wave_spec import WaveSpec
from fleet.core.workload import workload_for
from fleet.errors import FleetError, InputError
from fleet.plain_text import plain
from fleet.task import load_task
from fleet.types import ClusterState, ExperimentState



def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    wait_cmds.register(sub, common)
    p = sub.add_parser("wave", parents=[common], help="submit a wave file (a grid of experiments, or a search)")
    p.add_argument("file", type=Path, help="the wave YAML file")
    p.add_argument("--wait", action="store_true", help="block until the wave is done, then print the leaderboard")
    p.add_argument("--yes", "-y", action="store_true", help="allow waves of more than 10,000 experiments")
    p.add_argument("--timeout", type=positive_seconds("--timeout"), default=None,
                   help="per-experiment timeout in seconds (default: 2x TIME_BUDGET + 600)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check a submission runs (knobs, values, combinations) and list the experiments "
                        "(a search: its space and first configurations); submit nothing")
    p.add_argument("--priority", type=bounded_int("--priority", -1000, 1000), default=None,
                   help="higher starts first within its track (default: the tier's; validation tiers go first)")
    p.add_argument("--track", default=None,
                   help="the fair-share track to run on, e.g. one per agent (default: $FLEET_TRACK, else none)")
    p.set_defaults(func=cmd_wave)

    p = sub.add_parser("bump", parents=[common], help="move a wave ahead of the other waves of its track")
    p.add_argument("wave", help="wave id")
    p.add_argument("--priority", type=bounded_int("--priority", -1000, 1000), default=None,
                   help="set this priority instead (default: one above every other unfinished wave of its track)")
    p.set_defaults(func=cmd_bump)

    p = sub.add_parser("cancel", parents=[common], help="cancel experiments (queued or running)")
    p.add_argument("experiments", nargs="*", help="experiment ids")
    p.add_argument("--wave", help="cancel every unfinished experiment of this wave")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("release", parents=[common], help="release experiments held by a budget cap")
    p.add_argument("--wave", help="only this wave")
    p.set_defaults(func=cmd_release)


def bounded_int(flag: str, low: int, high: int):
    """An argparse type: an integer in [low, high], or a message naming the flag and the fix."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise InputError(f"{flag} is {text!r}, but must be an integer from {low} to {high} (e.g. {flag} 5)")
        return value
    return parse


def wave_priority(ctx: Context, tier: str, kind: str, given: int | None) -> int:
    """The priority a wave gets: the one given, else its tier's; promote and ablate waves (which
    decide a verdict) at least the validation priority, so they go ahead of screens."""
    if given is not None:
        return given
    tier_priority = ctx.config.tiers[tier].priority if tier in ctx.config.tiers else 0
    return max(tier_priority, VALIDATION_PRIORITY) if kind in ("promote", "ablate") else tier_priority


def wave_track(ctx: Context, given: str | None, parent: str | None) -> str:
    """The track a wave runs on: the one given, else its parent wave's (a promote stays on its screen's
    track), else $FLEET_TRACK, else the default track."""
    if given is not None:
        return given
    if parent is not None:
        parent_wave = ctx.ledger.wave(parent)
        if parent_wave is not None:
            return parent_wave.track
    return checked_track(os.environ.get("FLEET_TRACK", ""), "FLEET_TRACK")


def checked_track(track: str, source: str) -> str:
    if track and not re.fullmatch(TRACK_PATTERN, track):
        raise InputError(f"{source} is {track!r}, but a track is lowercase letters and digits with single '-' or '_' "
                         "between them (e.g. agent-a)")
    return track


def prepare_planned(ctx: Context, spec: dict, planned, *, source: str = "wave", snapshot: str | None = None,
                    choices: dict | None = None, wave_spec: WaveSpec | None = None, kind: str = "grid"):
    """Snapshot the workload, check every knob and combination, write each experiment's code.
    Nothing is recorded: `fleet wave --dry-run` stops here.

    Configurations equal once defaults are filled in are one experiment (a grid point that is the
    baseline runs once, as the baseline), and a grid wave's baseline runs are spread through it.
    Returns the snapshot, the spec, the prepared experiments and the planned runs they came from."""
    workload = workload_for(ctx.workspace.root, ctx.config)
    ctx.workspace.ensure()
    load_task(ctx.workspace.root / ctx.config.task)  # a broken task file is bad input, caught before submitting
    snapshot = snapshot or workload.snapshot(ctx.workspace.snapshots)
    codes = fleet_code_store(ctx.workspace, ctx.config, ctx.ledger)
    if choices is None:
        choices = choices_from(ctx.ledger.experiments())
    planned, merged = canonicalize(planned, lambda p: codes.listing(code_choice(p, snapshot, choices).code), source)
    for warning in merged:
        ctx.sink.warn(warning)
    if kind == "grid":
        planned = interleave_baseline(planned)
    prepared = prepare_experiments(planned, codes, snapshot, choices, source, wave_spec)
    metric = ctx.config.metric
    spec = {**spec, "default_budget": prepared.default_budget, "knobs": prepared.knobs,
            "metric": {"name": metric.name, "direction": metric.direction}}
    return snapshot, spec, prepared, planned


def submit_planned(ctx: Context, name: str, tier: str, spec: dict, planned, *, kind: str = "grid",
                   parent: str | None = None, max_gpu_hours: float | None = None, source: str = "wave",
                   snapshot: str | None = None, base: dict | None = None, choices: dict | None = None,
                   wave_spec: WaveSpec | None = None, priority: int | None = None, track: str | None = None,
                   trials: list[NewExperiment] | None = None):
    """Snapshot the workload, check every knob, write each experiment's code, then record the wave:
    all or nothing. `snapshot` is the wave's code (default: the working tree now); `choices` the code of
    each variant its experiments name (default: the variants that already ran); `trials` a search wave's
    planned trials, recorded after its fixed experiments."""
    priority = wave_priority(ctx, tier, kind, priority)
    track = wave_track(ctx, track, parent)
    snapshot, spec, prepared, _ = prepare_planned(ctx, spec, planned, source=source, snapshot=snapshot,
                                                  choices=choices, wave_spec=wave_spec, kind=kind)
    backend = ctx.backend_name()
    if not ctx.ledger.clusters([ClusterState.UP]):
        if backend != "local" and fleet_target(ctx.ledger) is None:
            raise FleetError(f"no {backend} clusters are up: run `fleet up --backend {backend} --clusters N` first")
        if backend == "local":
            bring_up_local(ctx.workspace, ctx.ledger, ctx.config)  # the default backend needs no `fleet up`
    ctx.ledger.set_meta("backend", backend)
    wave, experiments = ctx.ledger.add_wave(name, tier, spec, snapshot, prepared.experiments + (trials or []), kind=kind,
                                            parent=parent, max_gpu_hours=max_gpu_hours, base=base,
                                            priority=priority, track=track)
    ensure_controller(ctx.workspace, ctx.ledger, explicit=True, hooks=CONTROLLER_HOOKS)
    return wave, experiments


def cmd_wave(ctx: Context, args: argparse.Namespace) -> int:
    tiers = ctx.config.tiers
    spec = load_wave(args.file, tiers.keys())
    if args.priority is not None or args.track is not None:
        spec = dataclasses.replace(spec, priority=spec.priority if args.priority is None else args.priority,
                                   track=spec.track if args.track is None else checked_track(args.track, "--track"))
    check_size(count_experiments(spec, tiers[spec.tier].seeds), yes=args.yes)  # before building a huge grid
    planned = expand_wave(spec, tiers[spec.tier].seeds)
    for warning in spec.warnings:
        ctx.sink.warn(warning)
    ctx.workspace.ensure()
    workload = workload_for(ctx.workspace.root, ctx.config)
    snapshot = workload.snapshot(ctx.workspace.snapshots)
    if spec.search is not None or spec.early_stop is not None or tiers[spec.tier].early_stop is not None:
        # The space and the checkpoints are checked against the workload's knobs and its warmdown.
        spec = check_search(ctx, spec, fleet_code_store(ctx.workspace, ctx.config, ctx.ledger), snapshot)
    choices: dict = {}
    if variant_entries(spec):  # each variant becomes its own code; the experiments name what it resolved to
        spec, choices = resolve_variants(spec, CodeStore(workload, ctx.workspace.snapshots), snapshot,
                                         args.file.resolve().parent)
        planned = expand_wave(spec, tiers[spec.tier].seeds)
    raw = spec.to_json()
    if args.timeout is not None:
        raw["timeout_s"] = args.timeout
    if args.dry_run:  # every check a submission makes (knob names, values, combinations), nothing recorded
        *_, planned = prepare_planned(ctx, raw, planned, source=str(args.file), snapshot=snapshot, choices=choices,
                                      wave_spec=spec)
        priority = wave_priority(ctx, spec.tier, "search" if spec.search else "grid", spec.priority)
        track = wave_track(ctx, spec.track, None)
        payload = {"wave": spec.name, "tier": spec.tier, "priority": priority, "track": track,
                   "experiments": [p.__dict__ for p in planned]}
        if spec.search is not None or spec.early_stop is not None:
            return search_dry_run(ctx, spec, planned, payload)
        ctx.sink.data(payload, lambda c: [c.print(Text(plain(f"{p.label}  SEED={p.seed}"))) for p in planned])
        ctx.sink.hint(f"{len(planned)} experiments pass every check; `fleet wave {args.file}` submits them")
        return 0
    wave, experiments = submit_planned(ctx, spec.name, spec.tier, raw, planned, source=str(args.file),
                                       max_gpu_hours=spec.max_gpu_hours, base=dict(spec.env), snapshot=snapshot,
                                       choices=choices, wave_spec=spec, priority=spec.priority, track=spec.track,
                                       kind="search" if spec.search else "grid",
                                       trials=planned_trials(spec, tiers[spec.tier].seeds))
    payload = {"wave": wave.id, "experiments": len(experiments), "tier": wave.tier, "snapshot": wave.snapshot,
               "backend": ctx.backend_name(), "priority": wave.priority, "track": wave.track}
    on_track = f", track {wave.track}" if wave.track else ""
    planned = sum(1 for e in experiments if e.trial is not None)
    what = f"{len(experiments) - planned} experiments queued" + (
        f", {planned} more as the search chooses {spec.search.trials} configurations" if spec.search else "")
    ctx.sink.info(f"wave {wave.id}: {what} (tier {wave.tier}, priority {wave.priority}{on_track}, code {wave.snapshot})")
    if args.wait:
        with already_queued(wave.id, len(experiments)):
            return wait_for(ctx, wave.id, None)
    ctx.sink.data(payload, lambda c: c.print(wave.id))
    ctx.sink.hint(f"`fleet wait {wave.id}` blocks until it is done; `fleet status` shows progress")
    return 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    if not args.experiments and not args.wave:
        raise InputError("name experiments to cancel, or --wave WAVE (e.g. `fleet cancel lr-wd-003`)")
    targets = list(args.experiments)
    if args.wave:
        if ledger.wave(args.wave) is None:
            raise InputError(f"--wave {args.wave!r} does not exist; `fleet status` lists waves")
        targets += [e.id for e in ledger.experiments(wave=args.wave, states=[*UNFINISHED, ExperimentState.HELD])]
    unknown = [t for t in targets if ledger.experiment(t) is None]
    if unknown:
        raise InputError(f"unknown experiment {unknown[0]!r}; `fleet results --json` lists experiment ids")
    cancelled = [t for t in targets if ledger.set_state(
        t, ExperimentState.CANCELLED, "cancelled by user", only_from=[*UNFINISHED, ExperimentState.HELD])]
    ensure_controller(ctx.workspace, ledger, explicit=True, hooks=CONTROLLER_HOOKS)  # it cancels the jobs that already reached a cluster
    ctx.sink.data({"cancelled": cancelled}, lambda c: c.print(f"cancelled {len(cancelled)} experiments"))
    if ledger.has_unfinished_work():
        ctx.sink.hint("the rest of the queue goes on; `fleet status` shows it")
    else:
        ctx.sink.hint(next_hint(ctx) or "nothing is queued now; `fleet down --all -y` tears the clusters down")
    return 0


def cmd_release(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    held = ledger.experiments(wave=args.wave, states=[ExperimentState.HELD])
    for exp in held:
        ledger.release(exp.id)
    ensure_controller(ctx.workspace, ledger, explicit=True, hooks=CONTROLLER_HOOKS)
    ctx.sink.data({"released": [e.id for e in held]}, lambda c: c.print(f"released {len(held)} experiments"))
    if held:
        ctx.sink.hint("released experiments run past the budget cap; `fleet wait` blocks until they finish")
    return 0


def cmd_bump(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    wave = ledger.wave(args.wave)
    if wave is None:
        raise InputError(f"wave {args.wave!r} does not exist; `fleet status` lists waves")
    if args.priority is not None:
        priority = args.priority
    else:
        others = [w.priority for w in ledger.waves(track=wave.track) if w.id != wave.id
                  and any(ledger.counts(w.id).get(s.value, 0) for s in UNFINISHED)]
        priority = max([wave.priority, *(p + 1 for p in others)])
        if priority > 1000:
            raise InputError(f"wave {wave.id} would need priority {priority}, above the maximum 1000; "
                             "lower the others with `fleet bump WAVE --priority N`")
    ledger.set_wave_priority(wave.id, priority)
    ensure_controller(ctx.workspace, ledger, explicit=True, hooks=CONTROLLER_HOOKS)  # the next cycle starts its work first
    ctx.sink.data({"wave": wave.id, "track": wave.track, "priority": priority, "was": wave.priority},
                  lambda c: c.print(Text(plain(f"{wave.id}: priority {wave.priority} -> {priority}"))))
    ctx.sink.hint(f"its queued experiments start next on the clusters its tier uses; `fleet wait {wave.id}` waits")
    return 0
