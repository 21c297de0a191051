"""`fleet watch`, `fleet plot`, `fleet report`: seeing what the fleet does and found.

All three read the ledger only: they never call a backend (so never import SkyPilot) and are
safe to run in a loop next to the controller.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from fleet.cli.context import Context
from fleet.cli.inspect_cmds import status_payload
from fleet.cli.loop_state import adopted_changes
from fleet.cli.results_view import (
    ablation_reports,
    efficiency_for,
    leaderboard_payload,
    validation_reports,
)
from fleet.core.drain import start_overhead_s
from fleet.core.ledger import Ledger
from fleet.errors import FleetError, InputError
from fleet.observe.cost import cost_summary, ledger_usages_by_wave, spend_by_wave
from fleet.observe.dashboard import (
    ClusterLine,
    CrashLine,
    FleetSnapshot,
    WaveLine,
    overlap,
    render_dashboard,
    utilization_from,
    utilization_spans,
)
from fleet.observe.efficiency import describe as describe_efficiency
from fleet.observe.leaderboard import ConfigRow, Row
from fleet.observe.plot import PlotData, plot_data, render_png
from fleet.observe.report import (
    PROMOTE_KIND,
    ConfigVerdict,
    ablations_from_reports,
    render_report,
    verdicts_from_reports,
)
from fleet.research.normalize_view import normalized_for
from fleet.types import ClusterState, ExperimentState

LEADERBOARD_TOP = 10  # rows `fleet watch` shows (and reads)
CRASHES_SHOWN = 10


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("watch", parents=[common], help="live dashboard: clusters, waves, leaderboard, crashes, spend")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes from the ledger (default 2)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("plot", parents=[common], help="plot val_bpb of every experiment and the running best (PNG)")
    p.add_argument("-o", "--output", type=Path, default=Path("progress.png"), help="PNG to write (default progress.png)")
    p.add_argument("--wave", help="only this wave (default: every wave)")
    p.add_argument("--normalized", action="store_true", help="plot val_bpb normalized across hardware")
    p.add_argument("--x", choices=("order", "time", "gpu-hours"), default="order",
                   help="x axis: experiments in the order they finished (default), wall-clock minutes, or GPU-hours "
                   "spent (the running best is then the frontier: the best found per GPU-hour)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", parents=[common], help="a shareable Markdown summary (waves, best, plot, spend)")
    p.add_argument("-o", "--output", type=Path, default=Path("report.md"), help="Markdown file (default report.md)")
    p.add_argument("--wave", help="only this wave (default: every wave)")
    p.set_defaults(func=cmd_report)


def _check_wave(ledger: Ledger, wave: str | None) -> None:
    if wave is not None and ledger.wave(wave) is None:
        raise InputError(f"--wave {wave!r} does not exist; `fleet status` lists waves")


# --- reading the ledger ----------------------------------------------------------------------------
def wave_lines(ctx: Context, waves_payload: list[dict], wave: str | None = None) -> tuple[WaveLine, ...]:
    """`fleet status`'s waves with each wave's GPU time, dollars and cap."""
    ledger = ctx.ledger
    costs = spend_by_wave(ledger_usages_by_wave(ledger), ctx.config.prices)
    caps = {w.id: w.max_gpu_hours for w in ledger.waves()}
    out = []
    for w in waves_payload:
        if wave is not None and w["id"] != wave:
            continue
        c = costs.get(w["id"], {"gpu_hours": 0.0, "dollars": 0.0})
        out.append(WaveLine(w["id"], w["kind"], w["tier"], w["total"], w["finished"], w["counts"],
                            c["gpu_hours"], c["dollars"], caps.get(w["id"]), bool(w.get("backfill"))))
    return tuple(out)


def collect_snapshot(ctx: Context, now: float | None = None) -> FleetSnapshot:
    """Everything the dashboard shows, read from the ledger in one go: only what it shows (the top
    rows, the last crashes, the running experiments, busy time summed in SQL), never every row."""
    now = time.time() if now is None else now
    ledger = ctx.ledger
    board = leaderboard_payload(ctx, None, limit=LEADERBOARD_TOP)
    efficiency = efficiency_for(ctx)
    status = status_payload(ctx, board=board, efficiency=efficiency)
    running = {a.cluster: a for a in ledger.attempts(active=True) if a.state == "running"}
    experiments = ledger.experiments_by_id([a.experiment_id for a in running.values()])
    waves = {w.id: w for w in ledger.waves()}
    overhead = start_overhead_s(ledger)
    clusters = []
    for c in status["clusters"]:
        run, elapsed, budget = running.get(c["name"]), None, None
        if run is not None and run.experiment_id in experiments:
            exp = experiments[run.experiment_id]
            elapsed = now - (run.started_at or run.submitted_at)
            budget = _budget_s(exp.config.get("TIME_BUDGET"), waves[exp.wave_id].spec.get("default_budget"))
        clusters.append(ClusterLine(c["name"], c["accelerator"], c["state"], c["queue_depth"],
                                    run.experiment_id if run else None, elapsed, budget, c.get("replaces"), overhead))
    crashed = ledger.recently_finished([ExperimentState.CRASH, ExperimentState.TIMEOUT], CRASHES_SHOWN)
    results = ledger.results_by_id([e.id for e in crashed])
    crashes = tuple(CrashLine(e.id, e.state.value, results[e.id].accelerator if e.id in results else None,
                              e.reason, e.finished_at) for e in crashed)
    spans = utilization_spans(now)
    available = []
    for c in ledger.clusters():
        end = now if c.state in (ClusterState.UP, ClusterState.PROVISIONING) else c.updated_at
        available.append((c.created_at, end))
    # Busy time is jobs that held their GPU (or local CPU slot), queue time excluded, summed in SQL.
    busy = ledger.busy_seconds(spans, now)
    capacity = [sum(overlap(a, span) for a in available) for span in spans]
    return FleetSnapshot(
        taken_at=now, backend=status["backend"], controller_running=status["controller"]["running"],
        controller_error=status["controller"]["error"], clusters=tuple(clusters),
        waves=wave_lines(ctx, status["waves"]),
        leaderboard=tuple(Row(**r) for r in board["rows"]), sorted_by=board["sorted_by"],
        reference_accelerator=board["reference_accelerator"], calibration=board["calibration"],
        crashes=crashes, utilization=utilization_from(busy, capacity), cost=status["cost"],
        configs=tuple(ConfigRow(**c) for c in board["configs"]),
        efficiency=describe_efficiency(efficiency) if board["rows"] else "",  # once something finished
    )


def _budget_s(value: object, default: object) -> float | None:
    for v in (value, default):
        try:
            if v is not None:
                return float(v)
        except (TypeError, ValueError):
            continue
    return None


def promote_verdicts(ctx: Context) -> list[ConfigVerdict]:
    """The verdicts `fleet verdict` gives, for every promote and recheck wave."""
    return verdicts_from_reports(validation_reports(ctx))


# --- fleet watch -----------------------------------------------------------------------------------
_sleep = time.sleep  # the one clock seam: tests replace it to end the loop without waiting


def cmd_watch(ctx: Context, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise InputError(f"--interval is {args.interval:g}, but must be a positive number of seconds (e.g. 2)")
    console = ctx.sink.out
    try:
        if ctx.sink.json:
            ctx.sink.data(dataclasses.asdict(collect_snapshot(ctx)))
            return 0
        if args.once or not console.is_terminal:
            while True:  # plain text: one render per interval, for logs and pipes
                console.print(render_dashboard(collect_snapshot(ctx)))
                if args.once:
                    return 0
                _sleep(args.interval)
                console.rule()
        from rich.live import Live

        with Live(render_dashboard(collect_snapshot(ctx)), console=console, auto_refresh=False,
                  screen=False, redirect_stderr=False) as live:
            while True:
                _sleep(args.interval)
                live.update(render_dashboard(collect_snapshot(ctx)), refresh=True)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a dashboard is closed, not an error


# --- fleet plot ------------------------------------------------------------------------------------
def build_plot(ctx: Context, wave: str | None, normalized: bool, x: str) -> PlotData:
    ledger = ctx.ledger
    experiments = ledger.experiments(wave=wave)
    results = ledger.results(wave=wave)
    waves = ledger.waves()
    promoted = frozenset(e.id for e in experiments if e.wave_id in {w.id for w in waves if w.kind == PROMOTE_KIND})
    verdicts = {exp: v.verdict for v in promote_verdicts(ctx) for exp in v.experiments}
    norm = normalized_for(ledger, ctx.config.reference_accelerator).values if normalized else None
    if normalized and not any(v is not None for v in norm.values()):
        raise FleetError("no experiment has a normalized val_bpb yet (normalization needs runs on more than one "
                         "kind of accelerator); plot raw values without --normalized")
    origin = min((w.created_at for w in waves if wave is None or w.id == wave), default=None)
    return plot_data(experiments, results, normalized=norm, promoted=promoted, verdicts=verdicts, x=x.replace("-", "_"),
                     origin=origin)


def cmd_plot(ctx: Context, args: argparse.Namespace) -> int:
    _check_wave(ctx.ledger, args.wave)
    data = build_plot(ctx, args.wave, args.normalized, args.x)
    render_png(data, args.output)
    ctx.sink.data({"plot": str(args.output), "points": len(data.points), "crashes": len(data.crashes),
                   "best": data.best[-1][1] if data.best else None},
                  lambda c: c.print(str(args.output)))
    if not data.points:
        ctx.sink.hint("no finished experiments to plot yet: `fleet wave FILE` then `fleet wait`")
    return 0


# --- fleet report ----------------------------------------------------------------------------------
def cmd_report(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    _check_wave(ledger, args.wave)
    board = leaderboard_payload(ctx, args.wave)
    verdicts = [v for v in promote_verdicts(ctx) if args.wave is None or v.wave == args.wave]
    png = args.output.with_suffix(".png")
    plot_file, plot_note = None, ""
    try:
        render_png(build_plot(ctx, args.wave, False, "order"), png)
        plot_file = png.name if png.parent == args.output.parent else str(png)
    except FleetError as exc:
        plot_note = f"No plot: {exc}."
        ctx.sink.warn(str(exc))
    reports = {r["wave"]: r for r in validation_reports(ctx)}
    adopted = adopted_changes(ledger.adoptions(), reports, ledger.experiments())
    ablations = ablations_from_reports(r for r in ablation_reports(ctx) if args.wave is None or r["wave"] == args.wave)
    text = render_report(
        generated=time.strftime("%Y-%m-%d %H:%M"), scope=f"wave `{args.wave}`" if args.wave else "all waves",
        waves=wave_lines(ctx, status_payload(ctx)["waves"], args.wave), rows=[Row(**r) for r in board["rows"]], sorted_by=board["sorted_by"],
        calibration=board["calibration"], verdicts=verdicts, cost=cost_summary(ledger, ctx.config, args.wave),
        plot_file=plot_file, plot_note=plot_note, configs=[ConfigRow(**c) for c in board["configs"]],
        adopted=adopted if args.wave is None else [], ablations=ablations,
        backfill_waves=frozenset(ledger.backfill_waves()),
        efficiency=efficiency_for(ctx, args.wave),
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    ctx.sink.data({"report": str(args.output), "plot": str(png) if plot_file else None},
                  lambda c: c.print(str(args.output)))
    return 0
