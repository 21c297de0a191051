"""`fleet up`, `fleet down`, `fleet gpus`: the clusters themselves."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from rich.table import Table

from fleet.cli.context import CONTROLLER_HOOKS, Context
from fleet.core.controller import MAX_ATTEMPTS
from fleet.core.daemon import bring_up_local, ensure_controller
from fleet.core.fleet_size import FleetTarget, record_target, shrink_target
from fleet.errors import FleetError, InputError
from fleet.types import ClusterState


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("up", parents=[common], help="bring up clusters (local slots, or SkyPilot clusters)")
    p.add_argument("--clusters", type=int, default=None, help="how many (default: local: one per GPU or CPU slot)")
    p.add_argument("--accelerators", default="H100:1,H200:1",
                   help="SkyPilot: accelerators to alternate over, e.g. H100:1,H200:1 (default) or H200:1")
    p.add_argument("--infra", default="k8s", help="SkyPilot infra, e.g. k8s or k8s/my-context (default k8s)")
    p.add_argument("--prefix", default="gpu", help="SkyPilot cluster name prefix (default gpu → gpu-01, gpu-02…)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", parents=[common], help="tear clusters down")
    p.add_argument("clusters", nargs="*", help="cluster names (default: with --all, every cluster)")
    p.add_argument("--all", action="store_true", help="every cluster of this workspace")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("gpus", parents=[common], help="H100/H200 capacity and free counts per Kubernetes context")
    p.add_argument("--infra", default="k8s", help="k8s or k8s/CONTEXT (default k8s)")
    p.set_defaults(func=cmd_gpus)


def parse_accelerators(text: str) -> list[str]:
    names = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, count = part.partition(":")
        if count and count != "1":
            raise InputError(f"--accelerators {part!r}: fleet clusters have one GPU each; use {name}:1")
        if not name.replace("-", "").isalnum():
            raise InputError(f"--accelerators {part!r} is not an accelerator name (e.g. H100:1,H200:1)")
        names.append(name)
    if not names:
        raise InputError("--accelerators is empty; e.g. --accelerators H100:1,H200:1")
    return names


def cmd_up(ctx: Context, args: argparse.Namespace) -> int:
    name = ctx.backend_name()
    if args.clusters is not None and not 1 <= args.clusters <= 512:
        raise InputError(f"--clusters is {args.clusters}, but must be between 1 and 512 (e.g. --clusters 16)")
    ctx.ledger.set_meta("backend", name)
    if name == "local":
        names = bring_up_local(ctx.workspace, ctx.ledger, ctx.config, args.clusters)
        labels = [c.accelerator for c in ctx.ledger.clusters() if c.name in set(names)]
        record_target(ctx.ledger, FleetTarget(len(names), tuple(labels), "local", "local"))
    else:
        count = args.clusters or 16
        accelerators = parse_accelerators(args.accelerators)
        names = [f"{args.prefix}-{i + 1:02d}" for i in range(count)]
        wanted = [accelerators[i % len(accelerators)] for i in range(count)]
        backend = ctx.backend(name)
        backend.infra = args.infra  # the SkyPilot backend launches on this infra
        # Recorded first: the controller keeps the fleet at this size, replacing lost clusters.
        record_target(ctx.ledger, FleetTarget(count, tuple(accelerators), name, args.prefix, args.infra))
        ctx.sink.info(f"launching {count} clusters on {args.infra} (setup runs once per cluster)…")
        try:
            infos = backend.up(names, wanted)
        finally:
            for info in backend.clusters():
                if info.name in names:
                    ctx.ledger.upsert_cluster(info.name, name, info.accelerator, info.state)
        names = [i.name for i in infos]
    clusters = [c for c in ctx.ledger.clusters([ClusterState.UP]) if c.name in set(names)]
    payload = {"backend": name, "clusters": [{"name": c.name, "accelerator": c.accelerator} for c in clusters]}
    ctx.sink.data(payload, lambda con: [con.print(f"{c.name}  {c.accelerator}") for c in clusters])
    ensure_controller(ctx.workspace, ctx.ledger, explicit=True, hooks=CONTROLLER_HOOKS)
    ctx.sink.hint(f"{len(clusters)} clusters up — submit work with `fleet wave FILE`; lost clusters are replaced "
                  "while work is queued")
    return 0


def cmd_down(ctx: Context, args: argparse.Namespace) -> int:
    known = {c.name: c for c in ctx.ledger.clusters() if c.state != ClusterState.DOWN}
    targets = sorted(known) if args.all else list(args.clusters)
    if not targets:
        if args.all:  # nothing is up: tearing down is already done, and safe to repeat
            ctx.sink.data({"down": []}, lambda c: c.print("no clusters to tear down"))
            return 0
        raise InputError("name clusters to tear down, or --all (e.g. `fleet down --all -y`)")
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise InputError(f"unknown cluster {unknown[0]!r}; known: {', '.join(sorted(known)) or 'none'}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise InputError("`fleet down` asks for confirmation; pass -y to tear down without asking")
        answer = input(f"tear down {len(targets)} clusters ({', '.join(targets[:4])}…)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise FleetError("nothing torn down")
    by_backend: dict[str, list[str]] = {}
    for t in targets:
        by_backend.setdefault(known[t].backend, []).append(t)
    for backend_name, names in by_backend.items():
        ctx.backend(backend_name).down(names)
        for n in names:
            ctx.ledger.upsert_cluster(n, backend_name, known[n].accelerator, ClusterState.DOWN)
    # Work that was queued or running there goes back to pending, to run when clusters are up again.
    for attempt in ctx.ledger.attempts(active=True):
        if attempt.cluster in set(targets):
            ctx.ledger.requeue(attempt, f"cluster {attempt.cluster} was torn down", MAX_ATTEMPTS)
    if args.all:
        record_target(ctx.ledger, None)  # the fleet is meant to be gone: nothing is replaced
    else:
        shrink_target(ctx.ledger, len(targets))
    ctx.sink.data({"down": targets}, lambda c: c.print(f"tore down {len(targets)} clusters"))
    if ctx.ledger.has_unfinished_work():
        ctx.sink.hint("unfinished experiments wait in the ledger until clusters are up again (`fleet up`)")
    return 0


def cmd_gpus(ctx: Context, args: argparse.Namespace) -> int:
    rows = [dataclasses.asdict(r) for r in ctx.backend("sky").gpu_availability(args.infra)]

    def render(console) -> None:
        table = Table(title=f"GPUs on {args.infra}", title_justify="left")
        for col in ("context", "accelerator", "capacity", "free"):
            table.add_column(col)
        for r in rows:
            free = "?" if r["available"] < 0 else str(r["available"])
            table.add_row(r["context"], r["accelerator"], str(r["capacity"]), free)
        console.print(table)

    ctx.sink.data({"infra": args.infra, "gpus": rows}, render)
    total_free = sum(max(0, r["available"]) for r in rows if r["accelerator"] in ("H100", "H200"))
    ctx.sink.hint(f"{total_free} H100/H200 free — e.g. `fleet up --backend sky --clusters {max(1, total_free)}`")
    return 0
