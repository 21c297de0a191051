"""What the research commands share: lookups that turn a bad id into one line of bad input, and submission;
keys with defaults filled in and the evidence verdicts read are `fleet.cli.verdict_inputs` (re-exported)."""
from __future__ import annotations

import argparse

from fleet.cli.arg_types import positive_seconds
from fleet.cli.context import Context
from fleet.cli.verdict_inputs import Evidence, Keys, grid_report, seeded_grid, with_metric  # noqa: F401 - shared names
from fleet.cli.wave_cmds import submit_planned
from fleet.core.expand import variant_of
from fleet.core.ledger_rows import WaveRow
from fleet.errors import InputError
from fleet.research.plans import Baseline, WavePlan


def add_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"block until it is done, then print {what}")
    p.add_argument("--timeout", type=positive_seconds("--timeout"), default=None,
                   help="with --wait: give up after this many seconds (exit 1)")


def wave_of(ctx: Context, wave_id: str) -> WaveRow:
    wave = ctx.ledger.wave(wave_id)
    if wave is None:
        raise InputError(f"wave {wave_id!r} does not exist; `fleet status` lists waves")
    return wave


def experiment_of(ctx: Context, exp_id: str | None, what: str):
    if exp_id is None:
        return None
    exp = ctx.ledger.experiment(exp_id)
    if exp is None:
        raise InputError(f"{what} {exp_id!r} is not an experiment; `fleet results --json` lists experiment ids")
    return exp


def tier_of(ctx: Context, tier: str) -> str:
    if tier not in ctx.config.tiers:
        raise InputError(f"--tier {tier!r} is not a configured tier; tiers: {', '.join(sorted(ctx.config.tiers))} "
                         "(define tiers under `tiers:` in fleet.yaml)")
    return tier


def warn_other_code(ctx: Context, baseline: Baseline, plan: WavePlan) -> None:
    if baseline.experiment is None:
        return
    exp = ctx.ledger.experiment(baseline.experiment)
    own = plan.spec["baseline"].get("snapshot") or plan.snapshot
    if exp is not None and exp.code != own and variant_of(exp.config) is None:
        ctx.sink.warn(f"the baseline {exp.id} ran code {exp.code}; its configuration now runs on the "
                      f"candidates' code {own}, so the comparison is of knobs only")


def submit(ctx: Context, plan: WavePlan, tier: str, *, kind: str, parent: str, base: dict) -> WaveRow:
    spec = {**plan.spec, "tier": tier}
    wave, _ = submit_planned(ctx, plan.spec["name"], tier, spec, plan.planned, kind=kind, parent=parent,
                             source=f"fleet {kind}", snapshot=plan.snapshot, base=base)
    return wave


