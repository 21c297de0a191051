"""The `fleet` command: wires the command groups together and turns errors into exit codes.

Exit codes: 0 ok, 1 fleet error (a backend problem, a failed wait), 2 bad input.
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import traceback

from fleet import __version__
from fleet.backends.base import BackendError
from fleet.cli import (
    ablation_cmds,
    cluster_cmds,
    code_cmds,
    controller_cmds,
    init_cmds,
    inspect_cmds,
    ledger_cmds,
    next_cmds,
    observe_cmds,
    research_cmds,
    wave_cmds,
)
from fleet.cli.context import CONTROLLER_HOOKS, Context
from fleet.cli.output import Sink
from fleet.core.daemon import ensure_controller
from fleet.core.ledger import damaged_error, is_damage
from fleet.errors import FleetError, InputError
from fleet.workspace import Workspace

GROUPS = (init_cmds, wave_cmds, inspect_cmds, next_cmds, cluster_cmds, controller_cmds, code_cmds, research_cmds,
          ablation_cmds, observe_cmds, ledger_cmds)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors are bad input: exit 2, one line
        self.print_usage(sys.stderr)
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (for agents)")
    common.add_argument("-q", "--quiet", action="store_true", help="data only; no progress or hints")
    common.add_argument("--backend", choices=("local", "sky", "skypilot"), default=None,
                        help="where experiments run (default: $FLEET_BACKEND, else the workspace's, else local)")
    parser = _Parser(prog="fleet", description="Run many short training experiments in parallel on a fleet of clusters.")
    parser.add_argument("--version", action="version", version=f"skyfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for group in GROUPS:
        group.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Known before parsing, so even a bad flag is reported as JSON to an agent that asked for it.
    sink = Sink("json" if "--json" in (sys.argv[1:] if argv is None else argv) else "human")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        sink = Sink("json" if args.json else "quiet" if args.quiet else "human")
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        ctx = Context(Workspace.find(), sink, args.backend)
        try:
            code = int(args.func(ctx, args) or 0)
            if "ledger" in ctx.__dict__:  # the command used the ledger: resume a controller that died
                ensure_controller(ctx.workspace, ctx.ledger, hooks=CONTROLLER_HOOKS)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            raise damaged_error(ctx.workspace.ledger_path, exc) from None
        return code
    except BrokenPipeError:
        # `fleet status --json | head`: the reader left; exit quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sink.error("interrupted; experiments already queued keep running (`fleet status`)")
        return 130
    except (FleetError, BackendError) as exc:
        if os.environ.get("FLEET_DEBUG"):
            traceback.print_exc()
        code = exc.exit_code if isinstance(exc, FleetError) else 1
        for i, line in enumerate(str(exc).splitlines() or [type(exc).__name__]):
            sink.error(line) if i == 0 else sink.err.print(line, markup=False, highlight=False)
        if sink.json:  # an agent parsing stdout gets a document, not nothing
            sink.data({"error": str(exc), "exit_code": code})
        return code
    except Exception as exc:  # a bug: one line, not a traceback (FLEET_DEBUG=1 shows it)
        if os.environ.get("FLEET_DEBUG"):
            traceback.print_exc()
        sink.error(f"internal error: {exc!r}; rerun with FLEET_DEBUG=1 for the traceback and report it")
        if sink.json:
            sink.data({"error": f"internal error: {exc!r}", "exit_code": 1})
        return 1


if __name__ == "__main__":
    sys.exit(main())
