"""`fleet status`, `fleet results`, `fleet logs`: reading the ledger (never imports SkyPilot)."""
from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet.cli.context import Context
from fleet.cli.output import PlainConsole, styled
from fleet.cli.results_view import (
    configuration_verdicts,
    efficiency_for,
    leaderboard_payload,
    render_leaderboard,
    validation_reports,
)
from fleet.core.daemon import backend_name, controller_running
from fleet.core.fleet_size import fleet_target, launch_failures, launches_under_way
from fleet.core.ledger_rows import SEEDED
from fleet.core.results import ANSI
from fleet.errors import InputError
from fleet.observe.cost import cost_summary, describe_spend, dollars_for
from fleet.observe.efficiency import Efficiency
from fleet.observe.leaderboard import verdict_status
from fleet.plain_text import plain
from fleet.types import ClusterState, job_name


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="clusters, queues, running experiments, wave progress")
    p.add_argument("--track", default=None, help="only the waves of this track (\"\" for the default track)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("results", parents=[common], help="the leaderboard (table, tsv or json)")
    p.add_argument("wave_id", nargs="?", metavar="WAVE", help="only this wave (the same as --wave)")
    p.add_argument("--wave", help="only this wave (default: every wave)")
    p.add_argument("--format", choices=("table", "tsv", "json"), default=None, help="output format (default: table)")
    p.add_argument("--sort", choices=("normalized", "raw"), default="normalized",
                   help="rank by hardware-normalized val_bpb (default, when there is mixed hardware) or raw")
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N rows (table and json: best first; tsv: in the order experiments ran)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("logs", parents=[common], help="an experiment's log")
    p.add_argument("experiment", help="experiment id")
    p.add_argument("--tail", type=int, default=None, help="only the last N lines")
    p.add_argument("--attempt", type=int, default=None, help="which attempt (default: the latest)")
    p.set_defaults(func=cmd_logs)


def status_payload(ctx: Context, track: str | None = None, board: dict | None = None,
                   efficiency: Efficiency | None = None) -> dict:
    """What `fleet status` shows; `board` is a leaderboard payload and `efficiency` the accounting already
    read (reused, not read again)."""
    ledger = ctx.ledger
    now = time.time()
    attempts = ledger.attempts(active=True)
    clusters = []
    for c in ledger.clusters():
        if c.state == ClusterState.DOWN:
            continue
        mine = [a for a in attempts if a.cluster == c.name]
        running = next((a for a in mine if a.state == "running"), None)
        clusters.append({
            "name": c.name, "accelerator": c.accelerator, "state": c.state.value, "queue_depth": len(mine),
            "replaces": c.replaces,
            "running": None if running is None else {
                "experiment": running.experiment_id,
                "elapsed_s": round(now - (running.started_at or running.submitted_at), 1)},
        })
    waves = []
    counts_by_wave = ledger.counts_by_wave()
    for w in ledger.waves(track=track):
        counts = counts_by_wave.get(w.id, {})
        total = sum(counts.values())
        finished = sum(counts.get(s, 0) for s in ("done", "crash", "timeout", "cancelled", "pruned"))
        waves.append({"id": w.id, "tier": w.tier, "kind": w.kind, "priority": w.priority, "track": w.track,
                      "backfill": w.backfill, "total": total, "finished": finished, "counts": counts})
    if board is None:
        board = leaderboard_payload(ctx, None, limit=1)  # the best configuration only: SQL picks it
    best = board["best"]
    running = controller_running(ctx.workspace)
    error = ledger.get_meta("controller_error") or None
    if not running and error is None:  # a controller stopped by a full disk may not have recorded it
        full = ctx.workspace.disk_problem(probe=False)
        error = None if full is None else str(full)
    idle = [c["name"] for c in clusters if c["state"] == "up" and c["queue_depth"] == 0]
    target = fleet_target(ledger)
    return {
        "backend": backend_name(ledger),
        "controller": {"running": running, "error": error},
        "clusters": clusters,
        "idle_clusters": idle,
        "fleet_size": None if target is None else {
            "target": target.count, "live": sum(1 for c in clusters if c["state"] in ("up", "provisioning")),
            "launching": launches_under_way(ledger), "last_failure": launch_failures(ledger).get("error")},
        "track": track,
        "waves": waves,
        # The best configuration by its mean over runs (pooled across waves), never one lucky run.
        "best": None if best is None else {
            "experiment": best["experiments"][0], "experiments": list(best["experiments"]), "label": best["label"],
            "config_key": best["config_key"], "n": best["n"], "val_bpb": best["val_bpb"], "std": best["std"],
            "normalized": best["normalized"], "accelerator": ", ".join(best["accelerators"])},
        "sorted_by": board["sorted_by"],
        "cost": cost_summary(ledger, ctx.config),
        "efficiency": (efficiency or efficiency_for(ctx)).compact(),
    }


def render_status(console: Console, payload: dict) -> None:
    ctrl = payload["controller"]
    console.print(styled(f"backend {payload['backend']} · controller {'running' if ctrl['running'] else 'stopped'}",
                         *((" · ", (ctrl["error"], "red")) if ctrl["error"] else ())))
    size = payload.get("fleet_size")
    title = "clusters" if size is None else f"clusters ({size['live']} of {size['target']} up or launching)"
    table = Table(title=title, title_justify="left")
    for col in ("cluster", "accel", "state", "queue", "running", "elapsed"):
        table.add_column(col)
    for c in payload["clusters"]:
        run = c["running"]
        state = c["state"] + (f" (replaces {c['replaces']})" if c.get("replaces") else "")
        table.add_row(*(Text(plain(x)) for x in (c["name"], c["accelerator"], state, str(c["queue_depth"]),
                      run["experiment"] if run else "-", f"{run['elapsed_s']:.0f}s" if run else "-")))
    console.print(table)
    if size and size["last_failure"]:
        console.print(styled(("last replacement launch failed: ", "yellow"), size["last_failure"]))
    waves = Table(title="waves" if payload.get("track") is None else f"waves of track {payload['track'] or '(default)'}",
                  title_justify="left")
    for col in ("wave", "track", "tier", "prio", "progress", "pending", "running", "done", "crash", "cancel"):
        waves.add_column(col)
    for w in payload["waves"]:
        n = w["counts"]
        waves.add_row(Text(plain(w["id"] + (" [backfill]" if w.get("backfill") else ""))), Text(plain(w["track"] or "-")), Text(plain(w["tier"])), str(w["priority"]),
                      f"{w['finished'] - n.get('cancelled', 0)}/{w['total']}",  # a cancelled run did not run
                      str(n.get("pending", 0) + n.get("queued", 0) + n.get("planned", 0)), str(n.get("running", 0)), str(n.get("done", 0)),
                      str(n.get("crash", 0) + n.get("timeout", 0)), str(n.get("cancelled", 0)))
    console.print(waves)
    if payload["best"]:
        b = payload["best"]
        spread = f" ± {b['std']:.4f}" if b["std"] is not None else ""
        console.print(styled(f"best: {b['label'] or 'base'} val_bpb={b['val_bpb']:.4f}{spread} (mean of n={b['n']}, "
                             f"{b['accelerator']}; {b['experiment']})"))
    console.print(styled(f"spend: {describe_spend(payload['cost'])}"))
    eff = payload.get("efficiency") or {}
    if eff.get("best") is not None:
        waste = ", ".join(f"{k} {100 * v:.0f}%" for k, v in eff["waste"].items())
        per = eff.get("gpu_hours_per_0.001")
        console.print(styled(f"efficiency: best after {eff['gpu_hours_to_best']:.2f} of {eff['gpu_hours']:.2f} GPU-hours"
                             + (f", {per:.3f} GPU-h per 0.001" if per is not None else "") + f"; GPU time to {waste}"))


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    track = args.track
    if args.track is not None and args.track not in ctx.ledger.tracks():
        known = ", ".join(repr(t) for t in ctx.ledger.tracks()) or "none yet"
        raise InputError(f"--track {args.track!r} has no waves; tracks with waves: {known}")
    payload = status_payload(ctx, args.track)
    ctx.sink.data(payload, lambda c: render_status(c, payload))
    idle = payload["idle_clusters"]
    if idle and not any(w["finished"] < w["total"] for w in payload["waves"] if not w["backfill"]):
        # `fleet next` weighs every verdict and idea in the ledger (seconds at 10,000 runs); status stays
        # a cheap view and names the command that decides
        ctx.sink.hint(f"`fleet next{'' if track is None else f' --track {track}'}` — {len(idle)} cluster(s) idle "
                      f"({', '.join(idle[:4])}{', …' if len(idle) > 4 else ''}) with none of your work queued: it "
                      "names what to run next (a verdict to read, a change to adopt, a promotion or a new wave)")
    return 0


def results_tsv(ctx: Context, wave: str | None, limit: int | None = None) -> str:
    """autoresearch-compatible results.tsv: experiment, val_bpb, memory_gb, status, description."""
    ledger = ctx.ledger
    experiments = ledger.experiments(wave=wave)
    results = ledger.results(wave=wave)
    status = verdict_status(experiments, *configuration_verdicts(ctx, validation_reports(ctx)))
    backfill = set(ledger.backfill_waves())
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["experiment", "val_bpb", "memory_gb", "status", "description"])
    for exp in [e for e in experiments if e.id in status][:limit]:
        res = results.get(exp.id)
        bpb = f"{res.val_bpb:.6f}" if res and res.val_bpb is not None else "0.000000"
        mem = f"{res.peak_memory_mb / 1024:.1f}" if res and res.peak_memory_mb is not None else "0.0"
        run = f"SEED={exp.seed}" if exp.seeding == SEEDED else f"replicate {exp.seed}"  # no SEED knob: replicates
        description = plain(" ".join(f"{exp.label or exp.description or 'base'} {run}".split()))
        description = f"[backfill] {description}" if exp.wave_id in backfill else description
        writer.writerow([exp.id, bpb, mem, status[exp.id], description])
    return buf.getvalue()


def with_costs(ctx: Context, payload: dict, wave: str | None) -> dict:
    """Each row's dollars (its GPU-seconds at its accelerator's price) and the spend of the rows' scope."""
    prices = ctx.config.prices
    rows = [{**r, "dollars": dollars_for(r["accelerator"], r["gpu_seconds"], prices)} for r in payload["rows"]]
    return {**payload, "rows": rows, "cost": cost_summary(ctx.ledger, ctx.config, wave)}


def _render_results(console: Console, payload: dict, wave: str | None) -> None:
    render_leaderboard(console, payload)
    console.print(styled(f"spend{' of ' + wave if wave else ''}: {describe_spend(payload['cost'])}"))


def cmd_results(ctx: Context, args: argparse.Namespace) -> int:
    if args.wave_id is not None and args.wave is not None and args.wave_id != args.wave:
        raise InputError(f"two waves asked for ({args.wave_id!r} and --wave {args.wave!r}); name one")
    args.wave = args.wave if args.wave is not None else args.wave_id
    if args.wave and ctx.ledger.wave(args.wave) is None:
        raise InputError(f"--wave {args.wave!r} does not exist; `fleet status` lists waves")
    if ctx.sink.json and args.format not in (None, "json"):
        raise InputError(f"--json and --format {args.format} ask for two formats; use one (e.g. `--format tsv`)")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit is {args.limit}, but must be a positive number of rows (e.g. --limit 10)")
    fmt = args.format or ("json" if ctx.sink.json else "table")
    if fmt == "tsv":
        text = results_tsv(ctx, args.wave, args.limit)
    else:
        # With --limit only the rows shown are read (SQL picks them when there is one kind of hardware).
        payload = with_costs(ctx, leaderboard_payload(ctx, args.wave, sort_by=args.sort, limit=args.limit), args.wave)
        if fmt == "json":
            text = json.dumps(payload, indent=2, default=str) + "\n"
        elif args.output is None:
            _render_results(ctx.sink.out, payload, args.wave)
            return 0
        else:  # the table as text, for a file
            buffer = io.StringIO()
            _render_results(PlainConsole(file=buffer, width=160, color_system=None), payload, args.wave)
            text = buffer.getvalue()
    if args.output:
        try:
            args.output.write_text(text)
        except OSError as exc:
            raise InputError(f"cannot write --output {args.output}: {exc.strerror}; "
                             "create the directory or pick another path") from None
        ctx.sink.info(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _as_shown(line: str) -> str:
    """A log line as a terminal would leave it (colours gone, the last `\r` segment), controls visible."""
    segments = [s for s in line.split("\r") if s.strip()]
    return plain(ANSI.sub("", segments[-1] if segments else ""))


def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    if ledger.experiment(args.experiment) is None:
        raise InputError(f"unknown experiment {args.experiment!r}; `fleet results --json` lists experiment ids")
    attempts = ledger.attempts(args.experiment)
    if args.attempt is not None:
        attempts = [a for a in attempts if a.n == args.attempt]
    if not attempts:
        raise InputError(f"{args.experiment} has not started yet" if args.attempt is None
                         else f"--attempt {args.attempt}: {args.experiment} has no such attempt")
    attempt = attempts[-1]
    path = ctx.workspace.resolve(attempt.log_path)
    if not path.exists():  # stored by an older fleet as an absolute path, and the project moved since
        path = ctx.workspace.logs / f"{job_name(attempt.experiment_id, attempt.n)}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    if not text and attempt.job_id is not None and attempt.state in ("pending", "running"):
        text = ctx.backend().logs(attempt.cluster, attempt.job_id)  # live log from a remote cluster
    lines = text.splitlines()
    if args.tail is not None:
        lines = lines[-args.tail:] if args.tail > 0 else []
    if ctx.sink.json:
        ctx.sink.data({"experiment": args.experiment, "attempt": attempt.n, "cluster": attempt.cluster,
                       "state": attempt.state, "log_path": str(path), "lines": lines})
    else:  # what a terminal would show of each line (colours, `\r` progress), controls made visible
        print("\n".join(_as_shown(line) for line in lines))
    return 0
