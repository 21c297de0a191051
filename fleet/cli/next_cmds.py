"""`fleet next` and `fleet journal`: where the research loop stands and what to do next, with real ids.

The state is gathered in `fleet.cli.loop_state`; the actions are decided by the pure
`fleet.observe.next_steps.next_actions`; the journal is rendered by `fleet.observe.journal`. Other
commands' `next:` hints come from the same actions (`next_hint`).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from fleet.cli.context import Context
from fleet.cli.loop_state import Gathered, adopted_changes, gather
from fleet.cli.output import styled
from fleet.cli.arg_types import positive_minutes
from fleet.errors import InputError
from fleet.observe.journal import merge, render_section, tried_ideas
from fleet.observe.next_steps import HORIZON_S, NextReport, eta_text, next_actions, unread
from fleet.plain_text import plain

DEFAULT_JOURNAL = Path("journal.md")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("next", parents=[common],
                       help="the state of the research loop and the next actions, most urgent first, with real ids")
    p.add_argument("--track", default=None, help="only this track's waves (\"\" for the default track)")
    p.add_argument("--horizon", type=positive_minutes("--horizon"), default=HORIZON_S / 60, metavar="MINUTES",
                   help="a cluster that runs dry within this many minutes needs work now (default 5)")
    p.set_defaults(func=cmd_next)

    p = sub.add_parser("journal", parents=[common],
                       help="write the fleet's part of the journal (best, adopted changes, in flight, ideas tried)")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_JOURNAL,
                   help="the Markdown file (default journal.md); only the generated section is replaced")
    p.add_argument("--track", default=None, help="only this track's waves (\"\" for the default track)")
    p.set_defaults(func=cmd_journal)


def _check_track(ctx: Context, track: str | None) -> None:
    if track is not None and track not in ctx.ledger.tracks():
        known = ", ".join(repr(t) for t in ctx.ledger.tracks()) or "none yet"
        raise InputError(f"--track {track!r} has no waves; tracks with waves: {known}")


def _seconds(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 1)


def next_payload(g: Gathered, report: NextReport) -> dict[str, Any]:
    s = g.state
    return {
        "track": s.track,
        "actions": [asdict(a) | {"ids": list(a.ids)} for a in report.actions],
        "warnings": list(report.warnings),
        "idle_clusters": list(report.idle),
        "free_slots": report.free_slots,
        "clusters": [{"name": c.name, "accelerator": c.accelerator, "state": c.state, "depth": c.depth,
                      "dry_in_s": _seconds(c.dry_in_s), "replaces": c.replaces} for c in s.clusters],
        "in_flight": [{"wave": w.id, "kind": w.kind, "tier": w.tier, "track": w.track, "backfill": w.backfill,
                       "finished": w.total - w.unfinished, "total": w.total, "eta_s": _seconds(w.eta_s),
                       "stranded": w.eta_s is not None and math.isinf(w.eta_s)}
                      for w in s.waves if w.unfinished],
        "unread": [w.id for w in unread(s)],
        "keeps_not_adopted": [a.ids[0] for a in report.actions if a.kind == "adopt"],
        "best": None if s.best is None else asdict(s.best),
        "baseline": None if s.baseline is None else asdict(s.baseline),
        "adopted": [asdict(a) for a in s.adopted],
        "budget": asdict(s.budget),
    }


def render_next(console: Console, payload: dict[str, Any]) -> None:
    best, base = payload["best"], payload["baseline"]
    if best:
        spread = f" ± {best['std']:.4f}" if best["std"] is not None else ""
        console.print(styled(("best ", "bold"), f"{best['label']}: {best['mean']:.4f}{spread} (n={best['n']}, "
                             f"{best['experiment']})"))
    if base:
        console.print(styled(("baseline ", "bold"), f"{base['mean']:.4f} (n={base['n']}, {base['experiment']})"))
    for w in payload["in_flight"]:
        eta = "no cluster can run it" if w["stranded"] else (
            "" if w["eta_s"] is None else f"ends in {eta_text(w['eta_s'])}")
        tag = " [backfill]" if w["backfill"] else ""
        console.print(Text(plain(f"in flight  {w['wave']}{tag}  {w['finished']}/{w['total']}  {eta}")))
    if payload["idle_clusters"]:
        console.print(styled(("idle soon ", "yellow"), f"{', '.join(payload['idle_clusters'])} "
                             f"({payload['free_slots']} experiments would fill them)"))
    for warning in payload["warnings"]:
        console.print(styled(("warning ", "yellow"), warning))
    for i, a in enumerate(payload["actions"], 1):
        console.print(styled((f"{i}. ", "bold"), (a["command"], "cyan"), f"  — {a['why']}"))
    if not payload["actions"]:
        console.print("nothing to do")


def cmd_next(ctx: Context, args: argparse.Namespace) -> int:
    _check_track(ctx, args.track)
    with ctx.ledger.reading():  # read-only: every experiment and result decoded once
        g = gather(ctx, args.track, horizon_s=args.horizon * 60)
    report = next_actions(g.state)
    payload = next_payload(g, report)
    ctx.sink.data(payload, lambda c: render_next(c, payload))
    if report.actions:
        ctx.sink.hint(f"`{report.actions[0].command}`")
    return 0


def next_hint(ctx: Context, track: str | None = None, horizon_s: float = HORIZON_S) -> str | None:
    """The first action `fleet next` would suggest (with the same horizon), as a hint line (None: nothing to do)."""
    with ctx.ledger.reading():
        report = next_actions(gather(ctx, track, horizon_s=horizon_s).state)
    if not report.actions:
        return None
    first = report.actions[0]
    return f"`{first.command}` — {first.why}"


# ---- fleet journal -----------------------------------------------------------------------------------


def cmd_journal(ctx: Context, args: argparse.Namespace) -> int:
    _check_track(ctx, args.track)
    with ctx.ledger.reading():
        g = gather(ctx, args.track)
    report = next_actions(g.state)
    code = {e.id: e.code for e in g.experiments}
    baselines = {e.id for e in g.experiments if e.description.strip().lower() == "baseline"}
    ideas = tried_ideas(g.waves, g.board["rows"], g.reports, {a.experiment for a in g.state.adopted}, code, baselines)
    section = render_section(generated=time.strftime("%Y-%m-%d %H:%M"), state=g.state, report=report, ideas=ideas,
                             adoptions=adopted_changes(g.adoption_rows, g.reports, g.experiments),
                             metric=ctx.config.metric.name)
    path = args.output
    try:
        existing = path.read_text() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(merge(existing, section))
    except OSError as exc:
        raise InputError(f"cannot write --output {path}: {exc.strerror}; pick another path") from None
    ctx.sink.data({"journal": str(path), "updated": existing is not None, "ideas": len(ideas),
                   "adopted": len(g.state.adopted), "actions": [a.command for a in report.actions]},
                  lambda c: c.print(str(path)))
    ctx.sink.info(f"{'updated' if existing is not None else 'wrote'} {path}: the section between the "
                  "`fleet journal` markers is generated; write your reasoning and ideas outside it")
    if report.actions:
        ctx.sink.hint(f"`{report.actions[0].command}` — {report.actions[0].why}")
    return 0
