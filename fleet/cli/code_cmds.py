"""`fleet diff`, `fleet adopt`, `fleet schema`: experiments' code, and the wave file format."""
from __future__ import annotations

import argparse

from rich.syntax import Syntax

from fleet.cli.context import Context
from fleet.core.snapshot import adopt_snapshot, snapshot_diff
from fleet.core.wave import wave_json_schema
from fleet.errors import InputError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("diff", parents=[common], help="the code difference between two experiments")
    p.add_argument("a", help="experiment id (or snapshot id)")
    p.add_argument("b", nargs="?", help="experiment id (default: the current working tree is not compared; give two)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("adopt", parents=[common], help="write an experiment's code snapshot into the working tree")
    p.add_argument("experiment", help="experiment id")
    p.add_argument("--dry-run", action="store_true", help="list what would change; write nothing")
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser("schema", parents=[common], help="print the wave file's JSON schema")
    p.set_defaults(func=cmd_schema)


def _snapshot_of(ctx: Context, ref: str) -> str:
    exp = ctx.ledger.experiment(ref)
    if exp is not None:
        return exp.snapshot
    if (ctx.workspace.snapshots / ref).is_dir():
        return ref
    raise InputError(f"{ref!r} is neither an experiment id nor a snapshot id; `fleet results --json` lists experiments")


def cmd_diff(ctx: Context, args: argparse.Namespace) -> int:
    if args.b is None:
        raise InputError("`fleet diff` needs two experiments, e.g. `fleet diff lr-wd-001 lr-wd-004`")
    a, b = _snapshot_of(ctx, args.a), _snapshot_of(ctx, args.b)
    text = snapshot_diff(ctx.workspace.snapshots, a, b)
    ctx.sink.data({"a": args.a, "b": args.b, "snapshot_a": a, "snapshot_b": b, "diff": text},
                  lambda c: c.print(Syntax(text, "diff") if text else f"same code (snapshot {a})"))
    return 0


def cmd_adopt(ctx: Context, args: argparse.Namespace) -> int:
    exp = ctx.ledger.experiment(args.experiment)
    if exp is None:
        raise InputError(f"unknown experiment {args.experiment!r}; `fleet results --json` lists experiment ids")
    workload = ctx.workspace.root / ctx.config.workload
    changed = adopt_snapshot(ctx.workspace.snapshots, exp.snapshot, workload, dry_run=args.dry_run)
    knobs = " ".join(f"{k}={v}" for k, v in sorted(exp.config.items()))
    payload = {"experiment": exp.id, "snapshot": exp.snapshot, "changed": changed, "dry_run": args.dry_run,
               "knobs": exp.config}
    ctx.sink.data(payload, lambda c: c.print(
        f"{'would change' if args.dry_run else 'adopted'} {len(changed)} files from {exp.id} ({exp.snapshot})"
        + "".join(f"\n  {p}" for p in changed)))
    if knobs:
        ctx.sink.hint(f"its knob overrides are not code: make them defaults in {ctx.config.workload}/train.py "
                      f"({knobs}), then commit")
    else:
        ctx.sink.hint("commit the adopted code (e.g. `git commit -am 'adopt <experiment>'`)")
    return 0


def cmd_schema(ctx: Context, args: argparse.Namespace) -> int:
    import json

    print(json.dumps(wave_json_schema(), indent=2))
    return 0
