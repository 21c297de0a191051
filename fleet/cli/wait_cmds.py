"""`fleet wait`: block until a wave (or all work) is done, with progress; or until a cluster is about to run dry."""
from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from fleet.cli.arg_types import positive_minutes, positive_seconds
from fleet.cli.context import CONTROLLER_HOOKS, Context
from fleet.cli.next_cmds import next_hint
from fleet.cli.results_view import leaderboard_payload, render_leaderboard
from fleet.core.daemon import controller_running, ensure_controller
from fleet.core.drain import drain_estimate
from fleet.core.fleet_size import fleet_target
from fleet.errors import FleetError, InputError
from fleet.plain_text import plain
from fleet.research.sequential import extend_waves
from fleet.types import ClusterState, ExperimentState

UNFINISHED = (ExperimentState.PLANNED, ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("wait", parents=[common], help="block until a wave (default: all work) is done")
    p.add_argument("wave", nargs="?", help="wave id (default: every unfinished wave)")
    p.add_argument("--timeout", type=positive_seconds("--timeout"), default=None,
                   help="give up after this many seconds (exit 1)")
    p.add_argument("--until-idle", type=positive_minutes("--until-idle"), nargs="?", const=5.0, default=None,
                   metavar="MINUTES",
                   help="return as soon as some cluster would run out of work within MINUTES (default 5), "
                        "so the next wave is queued before the queues drain")
    p.set_defaults(func=cmd_wait)


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
    "All work" is the waves people submitted: backfill the fleet queued itself is not waited for
    (name its wave to wait for it).

    Keeps a controller alive meanwhile: if it was killed, this starts a new one, which resumes.
    """
    ledger = ctx.ledger
    if wave is not None and ledger.wave(wave) is None:
        raise InputError(f"wave {wave!r} does not exist; `fleet status` lists waves")
    deadline = None if timeout is None else time.monotonic() + timeout
    spawned_at: float | None = None
    seen_until = time.time()  # experiments that finished before the wait began are not announced
    own = None if wave is not None else False  # all work: not backfill
    scope = {wave} if wave is not None else {w.id for w in ledger.waves() if not w.backfill}
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=ctx.sink.err, disable=ctx.sink.mode != "human", transient=True) as progress:
        bar = progress.add_task(plain(wave or "all waves"), total=sum(ledger.counts(wave, backfill=own).values()))
        while True:
            counts = ledger.counts(wave, backfill=own)
            unfinished = sum(counts.get(s.value, 0) for s in UNFINISHED)
            # A search's planned trials wait on a budget cap with its held experiments: not work to wait for.
            unfinished -= sum(ledger.counts(w).get(ExperimentState.PLANNED.value, 0)
                              for w in _capped_searches(ledger, wave))
            untold = ledger.untold_trials(wave)  # finished, but the search has still to hear of it
            finished = sum(counts.values()) - unfinished - counts.get("held", 0)
            if ctx.sink.mode == "human":
                new = [e for e in ledger.finished_since(seen_until, wave) if e.wave_id in scope]
                for i, exp in enumerate(new):  # numbered in the order they finished
                    number = max(1, finished - len(new) + i + 1)
                    progress.console.print(finished_line(ctx, exp, number, sum(counts.values())))
                    seen_until = max(seen_until, exp.finished_at or seen_until)
            progress.update(bar, completed=finished, total=sum(counts.values()),
                            description=plain(f"{wave or 'all waves'}: {counts.get('running', 0)} running"))
            # A sequential validation may still need seed pairs: add them now rather than call it done
            # (the controller does so too, as results arrive; adding is idempotent).
            if wave is None:  # waves submitted meanwhile count too
                scope = {w.id for w in ledger.waves() if not w.backfill}
            if unfinished == 0 and untold == 0 and not extend_waves(ctx.workspace, ledger, ctx.config, waves=scope):
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
                    ensure_controller(ctx.workspace, ledger, explicit=True, hooks=CONTROLLER_HOOKS)
            if deadline is not None and time.monotonic() > deadline:
                raise FleetError(f"gave up waiting after {timeout:g}s; {unfinished} experiments unfinished "
                                 "(they keep running: `fleet wait` again later)")
            time.sleep(0.5)


def _capped_searches(ledger, wave: str | None) -> set[str]:
    """Waves (all, or `wave`) with planned trials that wait on held experiments."""
    counts = {w.id: ledger.counts(w.id) for w in ledger.waves() if wave is None or w.id == wave}
    return {w for w, n in counts.items() if n.get(ExperimentState.PLANNED.value) and n.get(ExperimentState.HELD.value)}


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
        return 0
    hint = wave_hint(ctx, wave) if wave is not None else None
    if hint is None:
        hint = next_hint(ctx)
    if hint:
        ctx.sink.hint(hint)
    return 0


def wave_hint(ctx: Context, wave_id: str) -> str | None:
    """The step that follows a finished wave, by its kind, with its id (None: ask `fleet next`)."""
    ledger = ctx.ledger
    wave = ledger.wave(wave_id)
    if wave is None:
        return None
    if wave.kind == "promote":
        return f"`fleet verdict {wave.id}` judges it"
    if wave.kind == "ablate":
        return f"`fleet ablation {wave.id}` says what each change is worth"
    if wave.kind != "grid" or any(w.parent == wave.id and w.kind == "promote" for w in ledger.waves()):
        return None
    mine = ledger.experiments(wave=wave.id)
    base = {e.config_key for e in mine if e.description.strip().lower() == "baseline"}
    if not any(e.state == ExperimentState.DONE and e.config_key not in base for e in mine):
        return None
    seeded = base and len({e.seed for e in mine if e.config_key in base}) >= 2
    also = f"; with its {len({e.seed for e in mine})} seeds, `fleet verdict {wave.id}` judges each configuration " \
           "on its own seed pairs" if seeded else ""
    return f"`fleet promote {wave.id}` validates its best configurations against its baseline, seed pair by seed " \
           f"pair{also}"


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
        estimate = drain_estimate(ledger, tiers, time.time(), backfill=False)  # backfill yields to new work
        soon = sorted((seconds, name) for name, seconds in estimate.items() if seconds <= minutes * 60)
        if soon:
            counts = ledger.counts()
            payload = {"until_idle_minutes": minutes, "idle_soon": [{"cluster": n, "dry_in_s": round(s, 1)}
                                                                   for s, n in soon],
                       "dry_in_s": {n: round(s, 1) for n, s in sorted(estimate.items())},
                       "pending": counts.get("pending", 0), "running": counts.get("running", 0)}
            ctx.sink.data(payload, lambda c: [c.print(Text(plain(f"{n}  runs dry in {s / 60:.1f} min")))
                                              for s, n in soon])
            ctx.sink.hint(next_hint(ctx, horizon_s=minutes * 60)
                          or f"{len(soon)} clusters run out of work within {minutes:g} min")
            return 0
        if ledger.has_unfinished_work() and not controller_running(ctx.workspace):
            if spawned_at is None or time.time() - spawned_at > 10:
                spawned_at = time.time()
                ensure_controller(ctx.workspace, ledger, explicit=True, hooks=CONTROLLER_HOOKS)
        if deadline is not None and time.monotonic() > deadline:
            first = min(estimate.values(), default=0.0)
            raise FleetError(f"gave up waiting after {timeout:g}s; the first cluster runs dry in "
                             f"{first / 60:.1f} min")
        time.sleep(2.0)
