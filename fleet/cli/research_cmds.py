"""`fleet promote`, `fleet verdict`, `fleet ablate`, `fleet ablation`: validating winners and measuring
what each change is worth. The rules and JSON shapes are documented in `fleet/research/plans.py`."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet.cli.context import Context
from fleet.cli.wave_cmds import (
    UNFINISHED,
    already_queued,
    block_until_done,
    positive_seconds,
    submit_planned,
)
from fleet.core.expand import variant_of
from fleet.core.ledger_rows import WaveRow
from fleet.errors import InputError
from fleet.plain_text import plain
from fleet.research.normalize_view import normalized_for, research_results
from fleet.research.plans import (
    Baseline,
    WavePlan,
    ablation_report,
    plan_ablation,
    plan_promotion,
    promotion_report,
    resolve_baseline,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("promote", parents=[common],
                       help="validate a wave's best configurations with several seeds against a paired baseline")
    p.add_argument("wave", help="the (screen) wave to promote from")
    p.add_argument("--top", type=int, default=3, help="how many configurations to promote (default: 3)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: the tier's seeds)")
    p.add_argument("--tier", default="validate", help="tier that runs the validation (default: validate)")
    p.add_argument("--baseline", metavar="EXP",
                   help="experiment whose configuration is the baseline (default: the wave's experiment "
                        "described `baseline`, else its base env)")
    _add_wait(p, "the verdicts")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("verdict", parents=[common], help="keep / discard / inconclusive for a promote wave's candidates")
    p.add_argument("wave", help="a wave made by `fleet promote` (or `fleet ablate`)")
    p.set_defaults(func=cmd_verdict)

    p = sub.add_parser("ablate", parents=[common],
                       help="leave-one-out wave: which of an experiment's changes vs the baseline help")
    p.add_argument("experiment", help="the experiment whose configuration stacks the changes")
    p.add_argument("--baseline", metavar="EXP",
                   help="experiment whose configuration is the baseline (default: as for `fleet promote`)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default: 3)")
    p.add_argument("--tier", default="validate", help="tier that runs the arms (default: validate)")
    _add_wait(p, "the contributions")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("ablation", parents=[common], help="each change's contribution in an ablate wave")
    p.add_argument("wave", help="a wave made by `fleet ablate`")
    p.set_defaults(func=cmd_ablation)


def _add_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"block until it is done, then print {what}")
    p.add_argument("--timeout", type=positive_seconds("--timeout"), default=None,
                   help="with --wait: give up after this many seconds (exit 1)")


# ---- promote / verdict ----------------------------------------------------------------------------------


def cmd_promote(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    wave = _wave(ctx, args.wave)
    tier = _tier(ctx, args.tier)
    seeds = args.seeds if args.seeds is not None else ctx.config.tiers[tier].seeds
    experiments = ledger.experiments(wave=wave.id)
    baseline = resolve_baseline(wave, experiments, _experiment(ctx, args.baseline, "--baseline"))
    higher = ctx.config.metric.higher_is_better
    norm = normalized_for(ledger, ctx.config.reference_accelerator, higher)
    plan = plan_promotion(wave, experiments, research_results(ledger.results(wave=wave.id), higher), norm.values,
                          baseline, args.top, seeds)
    unfinished = sum(e.state in UNFINISHED for e in experiments)
    if unfinished:
        ctx.sink.warn(f"{unfinished} experiments of {wave.id} are unfinished; promoting from those that finished")
    _warn_other_code(ctx, baseline, plan)
    new = _submit(ctx, plan, tier, kind="promote", parent=wave.id, base=dict(wave.base))
    ctx.sink.info(f"wave {new.id}: top {len(plan.spec['candidates'])} of {wave.id} (by {plan.spec['sorted_by']} "
                  f"val_bpb) and the baseline ({baseline.source}), {seeds} seeds each on tier {tier}")
    if args.wait:
        with already_queued(new.id, len(plan.planned)):
            block_until_done(ctx, new.id, args.timeout)
            return _print_verdict(ctx, ledger.wave(new.id))
    n = len(ledger.experiments(wave=new.id))
    ctx.sink.data({"wave": new.id, "experiments": n, "tier": tier, "seeds": seeds, "sorted_by": plan.spec["sorted_by"],
                   "baseline": plan.spec["baseline"], "candidates": plan.spec["candidates"], "snapshot": new.snapshot},
                  lambda c: c.print(new.id))
    ctx.sink.hint(f"`fleet wait {new.id}` then `fleet verdict {new.id}`")
    return 0


def cmd_verdict(ctx: Context, args: argparse.Namespace) -> int:
    wave = _wave(ctx, args.wave)
    if wave.kind == "ablate":
        return _print_ablation(ctx, wave)
    if wave.kind != "promote":
        raise InputError(f"wave {wave.id!r} is a {wave.kind} wave; verdicts are for waves made by "
                         f"`fleet promote {wave.id}` (or `fleet ablate EXP`)")
    return _print_verdict(ctx, wave)


def _wave_report(ctx: Context, wave: WaveRow, build) -> dict:
    """A promote or ablate report from the wave's experiments, results and normalized values."""
    ledger = ctx.ledger
    higher = ctx.config.metric.higher_is_better
    norm = normalized_for(ledger, ctx.config.reference_accelerator, higher)
    report = build(wave, ledger.experiments(wave=wave.id), research_results(ledger.results(wave=wave.id), higher),
                   norm.values)
    metric = ctx.config.metric
    report["metric_name"] = metric.name
    report["direction"] = metric.direction  # maximize: values above are negated (lower is better there)
    return report


def _print_verdict(ctx: Context, wave: WaveRow) -> int:
    report = _wave_report(ctx, wave, promotion_report)
    ctx.sink.data(report, lambda c: render_verdict(c, report))
    if not report["complete"]:
        ctx.sink.warn(f"{report['unfinished']} experiments of {wave.id} are unfinished; verdicts use what finished")
    if report["best_keep"]:
        ctx.sink.hint(f"`fleet adopt {report['best_keep']}` keeps the best winner's code")
    elif report["complete"]:
        ctx.sink.hint("no candidate cleared the noise floor; `fleet promote WAVE --seeds N` with more seeds "
                      "can settle an inconclusive one")
    return 0


def render_verdict(console: Console, report: dict[str, Any]) -> None:
    base = report["baseline"]
    console.print(Text(plain(f"verdicts of {report['wave']} (tier {report['tier']}, {report['metric']} val_bpb on "
                             f"{', '.join(report['accelerators']) or 'no finished runs'})")))
    console.print(Text(plain(f"baseline: {_mean_std(base['mean'], base['std'])} (n={base['n']}) — {base['source']}")))
    table = Table(title_justify="left")
    for col in ("#", "candidate", "n", "mean ± std", "Δ vs baseline", "p", "noise floor", "verdict", "reason"):
        table.add_column(col, no_wrap=col not in ("candidate", "reason"))
    colors = {"keep": "green", "discard": "red", "inconclusive": "yellow"}
    for c in report["candidates"]:
        table.add_row(str(c["rank"]), Text(plain(c["label"])), str(c["n"]), _mean_std(c["mean"], c["std"]),
                      _f(c["delta"], "+.4f"),
                      _f(c["p_value"], ".3g"), _f(c["noise_floor"]), Text(c["verdict"], style=colors[c["verdict"]]),
                      Text(plain(c["reason"])))
    console.print(table)
    rule = report["rule"]
    console.print(Text(f"keep = p < {rule['alpha']} ({rule['test']}) and gain > {rule['floor_multiple']:g} × "
                       "baseline seed std; Δ < 0 is better", style="dim"))
    if report.get("direction") == "maximize":
        console.print(Text(f"{report['metric_name']} is higher-is-better: values are shown negated, so lower is "
                           "better throughout", style="dim"))


# ---- ablate / ablation ----------------------------------------------------------------------------------


def cmd_ablate(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    tier = _tier(ctx, args.tier)
    stacked = _experiment(ctx, args.experiment, "experiment")
    wave = ledger.wave(stacked.wave_id)
    baseline = resolve_baseline(wave, ledger.experiments(wave=wave.id), _experiment(ctx, args.baseline, "--baseline"))
    plan = plan_ablation(stacked, baseline, args.seeds, snapshot=wave.snapshot)
    _warn_other_code(ctx, baseline, plan)
    new = _submit(ctx, plan, tier, kind="ablate", parent=wave.id, base=dict(baseline.config))
    knobs = ", ".join(c["knob"] for c in plan.spec["changes"])
    ctx.sink.info(f"wave {new.id}: {len(plan.spec['arms'])} arms x {args.seeds} seeds on tier {tier}; "
                  f"changes vs the baseline ({baseline.source}): {knobs}")
    if args.wait:
        with already_queued(new.id, len(plan.planned)):
            block_until_done(ctx, new.id, args.timeout)
            return _print_ablation(ctx, ledger.wave(new.id))
    ctx.sink.data({"wave": new.id, "experiments": len(plan.planned), "tier": tier, "seeds": args.seeds,
                   "baseline": plan.spec["baseline"], "changes": plan.spec["changes"], "arms": plan.spec["arms"],
                   "snapshot": new.snapshot}, lambda c: c.print(new.id))
    ctx.sink.hint(f"`fleet wait {new.id}` then `fleet ablation {new.id}`")
    return 0


def cmd_ablation(ctx: Context, args: argparse.Namespace) -> int:
    wave = _wave(ctx, args.wave)
    if wave.kind != "ablate":
        raise InputError(f"wave {wave.id!r} is a {wave.kind} wave, not an ablation; "
                         "`fleet ablate EXP` makes one" + (" (`fleet verdict` reads promote waves)"
                                                            if wave.kind == "promote" else ""))
    return _print_ablation(ctx, wave)


def _print_ablation(ctx: Context, wave: WaveRow) -> int:
    report = _wave_report(ctx, wave, ablation_report)
    ctx.sink.data(report, lambda c: render_ablation(c, report))
    if not report["complete"]:
        ctx.sink.warn(f"{report['unfinished']} experiments of {wave.id} are unfinished; contributions use what finished")
    if report["drop"]:
        ctx.sink.hint(f"drop {', '.join(report['drop'])}: removing them does not hurt; a simpler configuration is a win")
    return 0


def render_ablation(console: Console, report: dict[str, Any]) -> None:
    console.print(Text(plain(f"ablation of {report['experiment']} ({report['wave']}, tier {report['tier']}, "
                             f"{report['metric']} val_bpb; contribution = val_bpb without the change − with it; "
                             "> 0 helps)")))
    arms = Table(title="arms", title_justify="left")
    for col in ("arm", "n", "mean ± std"):
        arms.add_column(col)
    for a in report["arms"]:
        arms.add_row(Text(plain(a["name"])), str(a["n"]), _mean_std(a["mean"], a["std"]))
    console.print(arms)
    table = Table(title="changes", title_justify="left")
    for col in ("knob", "baseline → stacked", "n", "contribution", "95% CI", "p", "verdict", "note"):
        table.add_column(col, no_wrap=col not in ("note",))
    colors = {"keep": "green", "drop": "red", "inconclusive": "yellow"}
    for c in report["changes"]:
        ci = f"[{_f(c['ci_low'], '+.4f')}, {_f(c['ci_high'], '+.4f')}]" if c["ci_low"] is not None else "-"
        table.add_row(c["knob"], Text(plain(f"{c['baseline_value'] or '(default)'} → {c['stacked_value'] or '(default)'}")),
                      str(c["n"]), _f(c["contribution"], "+.4f"), ci, _f(c["p_value"], ".3g"),
                      Text(c["verdict"], style=colors[c["verdict"]]), Text(plain(c["note"])))
    console.print(table)


# ---- shared -------------------------------------------------------------------------------------------


def _wave(ctx: Context, wave_id: str) -> WaveRow:
    wave = ctx.ledger.wave(wave_id)
    if wave is None:
        raise InputError(f"wave {wave_id!r} does not exist; `fleet status` lists waves")
    return wave


def _experiment(ctx: Context, exp_id: str | None, what: str):
    if exp_id is None:
        return None
    exp = ctx.ledger.experiment(exp_id)
    if exp is None:
        raise InputError(f"{what} {exp_id!r} is not an experiment; `fleet results --json` lists experiment ids")
    return exp


def _tier(ctx: Context, tier: str) -> str:
    if tier not in ctx.config.tiers:
        raise InputError(f"--tier {tier!r} is not a configured tier; tiers: {', '.join(sorted(ctx.config.tiers))} "
                         "(define tiers under `tiers:` in fleet.yaml)")
    return tier


def _warn_other_code(ctx: Context, baseline: Baseline, plan: WavePlan) -> None:
    if baseline.experiment is None:
        return
    exp = ctx.ledger.experiment(baseline.experiment)
    if exp is not None and exp.code != plan.snapshot and variant_of(exp.config) is None:
        ctx.sink.warn(f"the baseline {exp.id} ran code {exp.code}; its configuration now runs on the "
                      f"candidates' code {plan.snapshot}, so the comparison is of knobs only")


def _submit(ctx: Context, plan: WavePlan, tier: str, *, kind: str, parent: str, base: dict) -> WaveRow:
    spec = {**plan.spec, "tier": tier}
    wave, _ = submit_planned(ctx, plan.spec["name"], tier, spec, plan.planned, kind=kind, parent=parent,
                             source=f"fleet {kind}", snapshot=plan.snapshot, base=base)
    return wave


def _f(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
