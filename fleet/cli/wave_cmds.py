"""`fleet wave`, `fleet wait`, `fleet cancel`, `fleet release`: submitting work and waiting for it."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from fleet.cli.context import Context
from fleet.cli.results_view import leaderboard_payload, render_leaderboard
from fleet.config import TRACK_PATTERN, VALIDATION_PRIORITY
from fleet.core.daemon import bring_up_local, controller_running, ensure_controller
from fleet.core.drain import drain_estimate
from fleet.core.fleet_size import fleet_target
from fleet.core.expand import check_size, count_experiments, expand_wave, variant_entries
from fleet.core.materialize import CodeStore, choices_from, prepare_experiments, resolve_variants
from fleet.core.wave import load_wave
from fleet.core.wave_spec import WaveSpec
from fleet.core.workload import workload_for
from fleet.errors import FleetError, InputError
from fleet.plain_text import plain
from fleet.task import load_task
from fleet.types import ClusterState, ExperimentState

UNFINISHED = (ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("wave", parents=[common], help="submit a wave file (a grid of experiments)")
    p.add_argument("file", type=Path, help="the wave YAML file")
    p.add_argument("--wait", action="store_true", help="block until the wave is done, then print the leaderboard")
    p.add_argument("--yes", "-y", action="store_true", help="allow waves of more than 10,000 experiments")
    p.add_argument("--timeout", type=positive_seconds("--timeout"), default=None,
                   help="per-experiment timeout in seconds (default: 2x TIME_BUDGET + 600)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check a submission runs (knobs, values, combinations) and list the experiments; "
                        "submit nothing")
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

    p = sub.add_parser("wait", parents=[common], help="block until a wave (default: all work) is done")
    p.add_argument("wave", nargs="?", help="wave id (default: every unfinished wave)")
    p.add_argument("--timeout", type=positive_seconds("--timeout"), default=None,
                   help="give up after this many seconds (exit 1)")
    p.add_argument("--until-idle", type=positive_minutes("--until-idle"), nargs="?", const=5.0, default=None,
                   metavar="MINUTES",
                   help="return as soon as some cluster would run out of work within MINUTES (default 5), "
                        "so the next wave is queued before the queues drain")
    p.set_defaults(func=cmd_wait)

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


def positive_minutes(flag: str):
    """An argparse type: a positive number of minutes, or a message naming the flag and the fix."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise InputError(f"{flag} is {text!r}, but must be a positive number of minutes (e.g. {flag} 5)")
        return value
    return parse


def positive_seconds(flag: str):
    """An argparse type: a positive number of seconds, or a message naming the flag and the fix."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise InputError(f"{flag} is {text!r}, but must be a positive number of seconds (e.g. {flag} 1200)")
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
                    choices: dict | None = None, wave_spec: WaveSpec | None = None):
    """Snapshot the workload, check every knob and combination, write each experiment's code.
    Nothing is recorded: `fleet wave --dry-run` stops here."""
    workload = workload_for(ctx.workspace.root, ctx.config)
    ctx.workspace.ensure()
    load_task(ctx.workspace.root / ctx.config.task)  # a broken task file is bad input, caught before submitting
    snapshot = snapshot or workload.snapshot(ctx.workspace.snapshots)
    codes = CodeStore(workload, ctx.workspace.snapshots)
    if choices is None:
        choices = choices_from(ctx.ledger.experiments())
    prepared = prepare_experiments(planned, codes, snapshot, choices, source, wave_spec)
    metric = ctx.config.metric
    spec = {**spec, "default_budget": prepared.default_budget, "knobs": prepared.knobs,
            "metric": {"name": metric.name, "direction": metric.direction}}
    return snapshot, spec, prepared


def submit_planned(ctx: Context, name: str, tier: str, spec: dict, planned, *, kind: str = "grid",
                   parent: str | None = None, max_gpu_hours: float | None = None, source: str = "wave",
                   snapshot: str | None = None, base: dict | None = None, choices: dict | None = None,
                   wave_spec: WaveSpec | None = None, priority: int | None = None, track: str | None = None):
    """Snapshot the workload, check every knob, write each experiment's code, then record the wave:
    all or nothing. `snapshot` is the wave's code (default: the working tree now); `choices` the code of
    each variant its experiments name (default: the variants that already ran)."""
    priority = wave_priority(ctx, tier, kind, priority)
    track = wave_track(ctx, track, parent)
    snapshot, spec, prepared = prepare_planned(ctx, spec, planned, source=source, snapshot=snapshot, choices=choices,
                                               wave_spec=wave_spec)
    backend = ctx.backend_name()
    if not ctx.ledger.clusters([ClusterState.UP]):
        if backend != "local" and fleet_target(ctx.ledger) is None:
            raise FleetError(f"no {backend} clusters are up: run `fleet up --backend {backend} --clusters N` first")
        if backend == "local":
            bring_up_local(ctx.workspace, ctx.ledger, ctx.config)  # the default backend needs no `fleet up`
    ctx.ledger.set_meta("backend", backend)
    wave, experiments = ctx.ledger.add_wave(name, tier, spec, snapshot, prepared.experiments, kind=kind,
                                            parent=parent, max_gpu_hours=max_gpu_hours, base=base,
                                            priority=priority, track=track)
    ensure_controller(ctx.workspace, ctx.ledger, explicit=True)
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
    choices: dict = {}
    if variant_entries(spec):  # each variant becomes its own code; the experiments name what it resolved to
        spec, choices = resolve_variants(spec, CodeStore(workload, ctx.workspace.snapshots), snapshot,
                                         args.file.resolve().parent)
        planned = expand_wave(spec, tiers[spec.tier].seeds)
    raw = spec.to_json()
    if args.timeout is not None:
        raw["timeout_s"] = args.timeout
    if args.dry_run:  # every check a submission makes (knob names, values, combinations), nothing recorded
        prepare_planned(ctx, raw, planned, source=str(args.file), snapshot=snapshot, choices=choices, wave_spec=spec)
        priority = wave_priority(ctx, spec.tier, "grid", spec.priority)
        track = wave_track(ctx, spec.track, None)
        ctx.sink.data({"wave": spec.name, "tier": spec.tier, "priority": priority, "track": track,
                       "experiments": [p.__dict__ for p in planned]},
                      lambda c: [c.print(Text(plain(f"{p.label}  SEED={p.seed}"))) for p in planned])
        ctx.sink.hint(f"{len(planned)} experiments pass every check; `fleet wave {args.file}` submits them")
        return 0
    wave, experiments = submit_planned(ctx, spec.name, spec.tier, raw, planned, source=str(args.file),
                                       max_gpu_hours=spec.max_gpu_hours, base=dict(spec.env), snapshot=snapshot,
                                       choices=choices, wave_spec=spec, priority=spec.priority, track=spec.track)
    payload = {"wave": wave.id, "experiments": len(experiments), "tier": wave.tier, "snapshot": wave.snapshot,
               "backend": ctx.backend_name(), "priority": wave.priority, "track": wave.track}
    on_track = f", track {wave.track}" if wave.track else ""
    ctx.sink.info(f"wave {wave.id}: {len(experiments)} experiments queued (tier {wave.tier}, priority {wave.priority}"
                  f"{on_track}, code {wave.snapshot})")
    if args.wait:
        with already_queued(wave.id, len(experiments)):
            return wait_for(ctx, wave.id, None)
    ctx.sink.data(payload, lambda c: c.print(wave.id))
    ctx.sink.hint(f"`fleet wait {wave.id}` blocks until it is done; `fleet status` shows progress")
    return 0


@contextlib.contextmanager
def already_queued(wave: str, experiments: int) -> Iterator[None]:
    """After a wave is in the ledger, a failure while waiting for it must not invite a resubmission
    (which would run the wave twice): say it is queued and how to wait for it again."""
    try:
        yield
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it was, the wave is queued and keeps running
        raise FleetError(f"wave {wave} is queued ({experiments} experiments) and keeps running, but waiting for it "
                         f"failed: {exc}. Do not submit it again: `fleet wait {wave}` waits for it") from exc


def block_until_done(ctx: Context, wave: str | None, timeout: float | None = None) -> None:
    """Block until the wave, or all work, is finished, showing progress on stderr: a progress bar on a
    terminal, and one line per finished experiment (also where stderr is a pipe or a log file).

    Keeps a controller alive meanwhile: if it was killed, this starts a new one, which resumes.
    """
    ledger = ctx.ledger
    if wave is not None and ledger.wave(wave) is None:
        raise InputError(f"wave {wave!r} does not exist; `fleet status` lists waves")
    deadline = None if timeout is None else time.monotonic() + timeout
    spawned_at: float | None = None
    seen_until = time.time()  # experiments that finished before the wait began are not announced
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=ctx.sink.err, disable=ctx.sink.mode != "human", transient=True) as progress:
        bar = progress.add_task(plain(wave or "all waves"), total=sum(ledger.counts(wave).values()))
        while True:
            counts = ledger.counts(wave)
            unfinished = sum(counts.get(s.value, 0) for s in UNFINISHED)
            finished = sum(counts.values()) - unfinished - counts.get("held", 0)
            if ctx.sink.mode == "human":
                for exp in ledger.finished_since(seen_until, wave):
                    progress.console.print(finished_line(ctx, exp, finished, sum(counts.values())))
                    seen_until = max(seen_until, exp.finished_at or seen_until)
            progress.update(bar, completed=finished, total=sum(counts.values()),
                            description=plain(f"{wave or 'all waves'}: {counts.get('running', 0)} running"))
            if unfinished == 0:
                return
            if not controller_running(ctx.workspace):
                if not ledger.clusters([ClusterState.UP]) and fleet_target(ledger) is None:
                    raise FleetError(f"no clusters are up, so {unfinished} experiments wait in the ledger; "
                                     "`fleet up` brings clusters up and they run")
                full = ctx.workspace.disk_problem()  # the controller may not have been able to say so
                if full is not None:
                    raise full
                # An error recorded by a controller this wait started is final; an older one may
                # be fixed by now (the user edited the task and waits again), so try once more.
                problem = ledger.get_meta("controller_error")
                problem_at = float(ledger.get_meta("controller_error_at") or 0)
                if problem and spawned_at is not None and problem_at >= spawned_at:
                    raise FleetError(f"the controller stopped: {problem}")
                if spawned_at is None or time.time() - spawned_at > 10:
                    spawned_at = time.time()
                    ensure_controller(ctx.workspace, ledger, explicit=True)
            if deadline is not None and time.monotonic() > deadline:
                raise FleetError(f"gave up waiting after {timeout:g}s; {unfinished} experiments unfinished "
                                 "(they keep running: `fleet wait` again later)")
            time.sleep(0.5)


def finished_line(ctx: Context, exp, finished: int, total: int) -> Text:
    """`lr-wd-003  done  val_bpb=1.2345  MATRIX_LR=0.04  [12/40]`: user text as plain text."""
    result = ctx.ledger.result(exp.id)
    metric = ctx.config.metric.name
    score = f"{metric}={result.val_bpb:.4f}" if result is not None and result.val_bpb is not None else (
        (result.reason if result is not None else exp.reason) or "")
    state = exp.state.value
    line = Text(plain(f"{exp.id}  "))
    line.append(state, style={"done": "green", "crash": "red", "timeout": "red"}.get(state, "dim"))
    line.append(plain(f"  {score}  {exp.label or 'base'}"[:200]))
    line.append(f"  [{finished}/{total}]", style="dim")
    return line


def wait_for(ctx: Context, wave: str | None, timeout: float | None) -> int:
    """`fleet wait`: block, then print the leaderboard."""
    block_until_done(ctx, wave, timeout)
    payload = leaderboard_payload(ctx, wave)
    ctx.sink.data(payload, lambda c: render_leaderboard(c, payload))
    held = ctx.ledger.counts(wave).get("held", 0)
    if held:
        ctx.sink.hint(f"{held} experiments are held by the budget cap: `fleet release` runs them")
    else:
        ctx.sink.hint("`fleet promote WAVE` validates the best configurations; `fleet adopt EXP` keeps a winner's code")
    return 0


def cmd_wait(ctx: Context, args: argparse.Namespace) -> int:
    if args.until_idle is not None:
        if args.wave is not None:
            raise InputError("--until-idle watches the whole fleet, not one wave; drop the wave id "
                             f"(e.g. `fleet wait --until-idle {args.until_idle:g}`)")
        return wait_until_idle(ctx, args.until_idle, args.timeout)
    return wait_for(ctx, args.wave, args.timeout)


def wait_until_idle(ctx: Context, minutes: float, timeout: float | None) -> int:
    """`fleet wait --until-idle`: block until some cluster would run dry within `minutes`."""
    ledger = ctx.ledger
    tiers = {name: tier.accelerators for name, tier in ctx.config.tiers.items()}
    deadline = None if timeout is None else time.monotonic() + timeout
    spawned_at: float | None = None
    while True:
        if not ledger.clusters([ClusterState.UP]):
            raise FleetError("no clusters are up; `fleet up` brings them up (the local backend starts its slots "
                             "with the first wave)")
        estimate = drain_estimate(ledger, tiers, time.time())
        soon = sorted((seconds, name) for name, seconds in estimate.items() if seconds <= minutes * 60)
        if soon:
            counts = ledger.counts()
            payload = {"until_idle_minutes": minutes, "idle_soon": [{"cluster": n, "dry_in_s": round(s, 1)}
                                                                   for s, n in soon],
                       "dry_in_s": {n: round(s, 1) for n, s in sorted(estimate.items())},
                       "pending": counts.get("pending", 0), "running": counts.get("running", 0)}
            ctx.sink.data(payload, lambda c: [c.print(Text(plain(f"{n}  runs dry in {s / 60:.1f} min")))
                                              for s, n in soon])
            ctx.sink.hint(f"{len(soon)} clusters run out of work within {minutes:g} min: submit the next wave "
                          "(`fleet wave FILE`) or promote (`fleet promote WAVE`)")
            return 0
        if ledger.has_unfinished_work() and not controller_running(ctx.workspace):
            if spawned_at is None or time.time() - spawned_at > 10:
                spawned_at = time.time()
                ensure_controller(ctx.workspace, ledger, explicit=True)
        if deadline is not None and time.monotonic() > deadline:
            first = min(estimate.values(), default=0.0)
            raise FleetError(f"gave up waiting after {timeout:g}s; the first cluster runs dry in "
                             f"{first / 60:.1f} min")
        time.sleep(2.0)


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
    ensure_controller(ctx.workspace, ledger, explicit=True)  # it cancels the jobs that already reached a cluster
    ctx.sink.data({"cancelled": cancelled}, lambda c: c.print(f"cancelled {len(cancelled)} experiments"))
    if ledger.has_unfinished_work():
        ctx.sink.hint("the rest of the queue goes on; `fleet status` shows it")
    else:
        ctx.sink.hint("nothing is queued now — submit a wave (`fleet wave FILE`) or tear down (`fleet down --all -y`)")
    return 0


def cmd_release(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    held = ledger.experiments(wave=args.wave, states=[ExperimentState.HELD])
    for exp in held:
        ledger.release(exp.id)
    ensure_controller(ctx.workspace, ledger, explicit=True)
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
    ensure_controller(ctx.workspace, ledger, explicit=True)  # the next cycle starts its work first
    ctx.sink.data({"wave": wave.id, "track": wave.track, "priority": priority, "was": wave.priority},
                  lambda c: c.print(Text(plain(f"{wave.id}: priority {wave.priority} -> {priority}"))))
    ctx.sink.hint(f"its queued experiments start next on the clusters its tier uses; `fleet wait {wave.id}` waits")
    return 0
