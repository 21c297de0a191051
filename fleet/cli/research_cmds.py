"""`fleet promote`, `fleet verdict`, `fleet recheck`: validating winners against the baseline. The rules are in
`fleet/research/verdicts.py`, the JSON shape in `fleet/research/verdict_report.py`; ablation is in
`fleet/cli/ablation_cmds.py`."""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleet.cli.ablation_cmds import print_ablation
from fleet.cli.context import Context
from fleet.cli.research_common import (
    Evidence,
    grid_report,
    Keys,
    add_wait,
    experiment_of,
    submit,
    tier_of,
    warn_other_code,
    wave_of,
    with_metric,
)
from fleet.cli.loop_state import gather, preset_of
from fleet.cli.research_view import render_verdict
from fleet.cli.wave_cmds import already_queued, block_until_done
from fleet.core.ledger_rows import WaveRow
from fleet.core.workload import workload_for
from fleet.errors import InputError
from fleet.observe.next_steps import AdoptDecision, adopt_decisions, knob_writes
from fleet.research.promote import pairs_to_settle, promising
from fleet.research.plans import (
    UNFINISHED,
    Baseline,
    WavePlan,
    current_best,
    original_baseline,
    plan_chosen,
    plan_more_seeds,
    plan_promotion,
    plan_recheck,
    planned_runs,
    resolve_baseline,
)
from fleet.research.sequential import extend_waves
from fleet.research.verdict_report import is_validation, promotion_report
from fleet.research.verdicts import Rule


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("promote", parents=[common],
                       help="validate a wave's best configurations against the baseline, seed pair by seed pair")
    p.add_argument("wave", nargs="?",
                   help="the (screen) wave to promote from; with --add-seeds, the promote wave to extend")
    p.add_argument("--top", type=int, default=3, help="how many configurations to promote (default: 3)")
    p.add_argument("--experiments", nargs="+", metavar="EXP",
                   help="promote these experiments' configurations (from any waves) instead of a wave's top")
    p.add_argument("--add-seeds", type=int, default=None, metavar="N",
                   help="N more seed pairs for the undecided candidates of a finished promote wave (the pairs it "
                        "ran count)")
    _add_rule(p)
    p.add_argument("--tier", default="validate", help="tier that runs the validation (default: validate)")
    p.add_argument("--baseline", metavar="EXP",
                   help="experiment whose configuration is the baseline (default: the wave's experiment "
                        "described `baseline`, else its base env)")
    add_wait(p, "the verdicts")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("verdict", parents=[common],
                       help="keep / discard / inconclusive for a promote wave's candidates (or a seeded grid's)")
    p.add_argument("wave", help="a wave made by `fleet promote` or `fleet recheck` (or `fleet ablate`), or a grid "
                                "wave with a baseline and several seeds")
    p.set_defaults(func=cmd_verdict)

    p = sub.add_parser("recheck", parents=[common],
                       help="re-run the current best against the original baseline on fresh seeds")
    p.add_argument("--best", metavar="EXP", help="the configuration to recheck (default: the latest adopted experiment, the "
                        "committed stack; else the latest kept candidate)")
    p.add_argument("--baseline", metavar="EXP",
                   help="the reference (default: the first promotion's baseline, on its own code)")
    _add_rule(p)
    p.add_argument("--tier", default="validate", help="tier that runs it (default: validate)")
    add_wait(p, "the verdict")
    p.set_defaults(func=cmd_recheck)



def _add_rule(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=None,
                   help="a fixed number of seed pairs, judged once at the end (default: sequential)")
    p.add_argument("--max-seeds", type=int, default=None,
                   help="sequential: add seed pairs until each candidate is decided, at most this many "
                        "(default: verdicts.max_seeds in fleet.yaml, 16)")
    p.add_argument("--min-effect", type=float, default=None,
                   help="smallest gain worth keeping, in val_bpb (default: verdicts.min_effect, 0.0005)")
    p.add_argument("--alpha", type=float, default=None,
                   help="error rate of the wave's verdicts (default: verdicts.alpha, 0.05)")


def rule_of(ctx: Context, args: argparse.Namespace) -> Rule:
    """The verdict rule: fleet.yaml's `verdicts:`, overridden by the flags (checked, exit 2 if bad)."""
    v = ctx.config.verdicts
    if args.seeds is not None and args.max_seeds is not None:
        raise InputError("--seeds fixes the number of pairs and --max-seeds caps a sequential validation; "
                         "give one (e.g. `--max-seeds 16`)")
    for flag, value in (("--seeds", args.seeds), ("--max-seeds", args.max_seeds)):
        if value is not None and value < 2:
            raise InputError(f"{flag} is {value}, but verdicts need at least 2 seed pairs (e.g. `{flag} 8`)")
    first = v.first_look if args.max_seeds is None else min(v.first_look, args.max_seeds)
    if args.seeds is not None:
        rule = Rule(v.alpha, v.min_effect, args.seeds, args.seeds, "fixed", v.step_mismatch)
    else:
        rule = Rule(v.alpha, v.min_effect, args.max_seeds or v.max_seeds, min(first, args.max_seeds or v.max_seeds),
                    "sequential", v.step_mismatch)
    if args.alpha is not None or args.min_effect is not None:
        rule = Rule(args.alpha if args.alpha is not None else rule.alpha,
                    args.min_effect if args.min_effect is not None else rule.min_effect,
                    rule.max_n, rule.first_look, rule.design, rule.mismatch)
    rule.check()
    return rule


# ---- promote / verdict / recheck ---------------------------------------------------------------------


def cmd_promote(ctx: Context, args: argparse.Namespace) -> int:
    if args.add_seeds is not None:
        return _add_seeds(ctx, args)
    if args.experiments:
        return _promote_chosen(ctx, args)
    if args.wave is None:
        raise InputError("name the wave to promote from (e.g. `fleet promote lr-wd`), or the configurations with "
                         "--experiments EXP...")
    ledger = ctx.ledger
    wave = wave_of(ctx, args.wave)
    tier = tier_of(ctx, args.tier)
    rule = rule_of(ctx, args)
    experiments = ledger.experiments(wave=wave.id)
    keys = Keys(ctx)
    snapshot = wave.snapshot
    baseline = resolve_baseline(wave, experiments, experiment_of(ctx, args.baseline, "--baseline"),
                                key=lambda c: keys.key(c, snapshot))
    baseline = Baseline(baseline.config, baseline.source, baseline.experiment, keys.key(baseline.config, snapshot))
    evidence = Evidence(ctx)
    plan = plan_promotion(wave, experiments, evidence.results, evidence.norm.values, baseline, args.top, rule)
    plan = _fresh_seeds(ctx, plan)
    unfinished = sum(e.state in UNFINISHED for e in experiments)
    if unfinished:
        ctx.sink.warn(f"{unfinished} experiments of {wave.id} are unfinished; promoting from those that finished")
    warn_other_code(ctx, baseline, plan)
    worse = plan.spec.get("not_better") or []
    if worse:
        names = ", ".join(f"{w['label']} ({w['screen_value']:.4f})" for w in worse)
        ctx.sink.warn(f"promoting {len(plan.spec['candidates'])} of the top {args.top}: {names} did not beat the "
                      f"baseline's {plan.spec['baseline']['screen_value']:.4f} on the screen (lower is better); to "
                      f"validate them anyway: `fleet promote --experiments {' '.join(w['experiment'] for w in worse)}`")
    new = submit(ctx, plan, tier, kind="promote", parent=wave.id, base=dict(wave.base))
    how = (f"{rule.max_n} seed pairs each" if rule.design == "fixed"
           else f"{plan.spec['seeds']} seed pairs each to start, more as needed up to {rule.max_n}")
    ctx.sink.info(f"wave {new.id}: top {len(plan.spec['candidates'])} of {wave.id} (by {plan.spec['sorted_by']} "
                  f"val_bpb) and the baseline ({baseline.source}), {how} on tier {tier}; keep needs a gain of at "
                  f"least {rule.min_effect:g} significant at alpha {rule.alpha:g}")
    return _aftersubmit(ctx, args, new, plan, tier)


def _promote_chosen(ctx: Context, args: argparse.Namespace) -> int:
    """`fleet promote --experiments EXP...`: chosen configurations against a baseline."""
    chosen = [experiment_of(ctx, e, "--experiments") for e in dict.fromkeys(args.experiments)]
    if args.wave is not None:
        raise InputError("--experiments names the configurations itself; drop the wave id "
                         f"(e.g. `fleet promote --experiments {' '.join(args.experiments)}`)")
    wave = ctx.ledger.wave(chosen[0].wave_id)
    tier = tier_of(ctx, args.tier)
    rule = rule_of(ctx, args)
    keys = Keys(ctx)
    baseline = resolve_baseline(wave, ctx.ledger.experiments(wave=wave.id),
                                experiment_of(ctx, args.baseline, "--baseline"), key=lambda c: keys.key(c, wave.snapshot))
    baseline = Baseline(baseline.config, baseline.source, baseline.experiment, keys.key(baseline.config, wave.snapshot))
    plan = _fresh_seeds(ctx, plan_chosen(wave, chosen, baseline, rule))
    warn_other_code(ctx, baseline, plan)
    new = submit(ctx, plan, tier, kind="promote", parent=wave.id, base=dict(wave.base))
    ctx.sink.info(f"wave {new.id}: {len(plan.spec['candidates'])} chosen configuration(s) and the baseline "
                  f"({baseline.source}) on tier {tier}")
    return _aftersubmit(ctx, args, new, plan, tier)


def _add_seeds(ctx: Context, args: argparse.Namespace) -> int:
    """`fleet promote WAVE --add-seeds N`: more pairs for a finished promote wave's undecided candidates."""
    if args.wave is None:
        raise InputError("--add-seeds extends a promote wave: name it (e.g. `fleet promote lr-wd-promote --add-seeds 8`)")
    if args.add_seeds < 1 or args.add_seeds > 1024:
        raise InputError(f"--add-seeds is {args.add_seeds}, but must be from 1 to 1024 seed pairs (e.g. --add-seeds 8)")
    if args.seeds is not None or args.max_seeds is not None:
        raise InputError("--add-seeds keeps the wave's rule and raises its cap by N; drop --seeds/--max-seeds")
    wave = wave_of(ctx, args.wave)
    if not is_validation(wave):
        raise InputError(f"wave {wave.id!r} is a {wave.kind} wave; --add-seeds extends a promote wave "
                         f"(`fleet promote {wave.id}` makes one)")
    if wave.spec.get("recheck"):
        raise InputError(f"{wave.id} is a re-check, judged on its own fresh runs only; run a larger one with "
                         f"`fleet recheck --max-seeds N`")
    report = verdict_payload(ctx, wave)
    if report["unfinished"] or report["undecided"]:
        raise InputError(f"{wave.id} is still running ({report['unfinished']} unfinished, {report['undecided']} "
                         f"candidates still getting pairs): `fleet wait {wave.id}` first")
    wanted = {c["config_key"] for c in report["candidates"]}
    if args.experiments:
        picked = {experiment_of(ctx, e, "--experiments").config_key for e in args.experiments}
        unknown = picked - wanted
        if unknown:
            raise InputError(f"--experiments names configurations that are not candidates of {wave.id}")
        wanted = picked
    else:
        wanted = {c["config_key"] for c in report["candidates"] if c["verdict"] == "inconclusive"}
        if not wanted:
            verdicts = ", ".join(f"{c['label']}: {c['verdict']}" for c in report["candidates"])
            raise InputError(f"every candidate of {wave.id} is decided ({verdicts}); name one with --experiments "
                             "to add pairs anyway")
    pairs = max(c["n"] for c in report["candidates"] if c["config_key"] in wanted)
    keys = wanted | {wave.spec["baseline"]["config_key"]}
    first = max((e.seed for e in ctx.ledger.experiments() if e.config_key in keys), default=-1) + 1
    plan = plan_more_seeds(wave, sorted(wanted), pairs, args.add_seeds, first)
    tier = wave.tier if args.tier == "validate" and wave.tier in ctx.config.tiers else tier_of(ctx, args.tier)
    new = submit(ctx, plan, tier, kind="promote", parent=wave.id, base=dict(wave.base))
    ctx.sink.info(f"wave {new.id}: {args.add_seeds} more seed pairs for {len(plan.spec['candidates'])} candidate(s) of "
                  f"{wave.id}; judged on all {pairs + args.add_seeds} pairs (its own count) under the same rule")
    return _aftersubmit(ctx, args, new, plan, tier)


def _fresh_seeds(ctx: Context, plan: WavePlan) -> WavePlan:
    """Seeds after those the same configurations already ran (pooled evidence is not rerun)."""
    keys = {c["config_key"] for c in plan.spec["candidates"]} | {plan.spec["baseline"]["config_key"]}
    first = max((e.seed for e in ctx.ledger.experiments() if e.config_key in keys), default=-1) + 1
    if not first:
        return plan
    seeds = range(first, first + plan.spec["seeds"])
    return WavePlan(planned_runs(plan.spec, seeds), {**plan.spec, "first_seed": first}, plan.snapshot)


def _aftersubmit(ctx: Context, args: argparse.Namespace, new: WaveRow, plan: WavePlan, tier: str) -> int:
    if args.wait:
        with already_queued(new.id, len(plan.planned)):
            block_until_done(ctx, new.id, args.timeout)
            return _print_verdict(ctx, ctx.ledger.wave(new.id))
    n = len(ctx.ledger.experiments(wave=new.id))
    ctx.sink.data({"wave": new.id, "experiments": n, "tier": tier, "seeds": plan.spec["seeds"],
                   "rule": plan.spec["rule"], "sorted_by": plan.spec.get("sorted_by"),
                   "baseline": plan.spec["baseline"], "candidates": plan.spec["candidates"], "snapshot": new.snapshot},
                  lambda c: c.print(new.id))
    ctx.sink.hint(f"`fleet wait {new.id}` (it adds seed pairs until each candidate is decided) then "
                  f"`fleet verdict {new.id}`" if plan.spec["rule"]["design"] == "sequential"
                  else f"`fleet wait {new.id}` then `fleet verdict {new.id}`")
    return 0


def cmd_verdict(ctx: Context, args: argparse.Namespace) -> int:
    wave = wave_of(ctx, args.wave)
    if wave.kind == "ablate":
        return print_ablation(ctx, wave)
    if wave.kind == "grid":
        return _grid_verdict(ctx, wave)
    if not is_validation(wave):
        raise InputError(f"wave {wave.id!r} is a {wave.kind} wave; verdicts are for waves made by "
                         f"`fleet promote`, `fleet recheck`, `fleet ablate EXP`, or grid waves with several seeds")
    return _print_verdict(ctx, wave)


def _grid_verdict(ctx: Context, wave: WaveRow) -> int:
    """A seeded grid wave judged on its own seed pairs: every configuration against its baseline."""
    report = grid_report(ctx, wave)
    ctx.sink.data(report, lambda c: render_verdict(c, report))
    if report["complete"]:
        ctx.ledger.mark_read(wave.id)
    ctx.sink.hint(verdict_hint(report, adopt_advice(ctx, report)))
    return 0


def verdict_payload(ctx: Context, wave: WaveRow) -> dict[str, Any]:
    evidence = Evidence(ctx)
    report = promotion_report(wave, evidence.experiments, evidence.results, evidence.norm.values, evidence.slope)
    return with_metric(report, evidence.metric)


def _print_verdict(ctx: Context, wave: WaveRow) -> int:
    if extend_waves(ctx.workspace, ctx.ledger, ctx.config, waves={wave.id}):  # a controller that died before adding pairs
        ctx.sink.info(f"added the seed pairs {wave.id} still needs")
    report = verdict_payload(ctx, wave)
    ctx.sink.data(report, lambda c: render_verdict(c, report))
    if report["complete"]:
        ctx.ledger.mark_read(wave.id)  # `fleet next` stops listing it as unread
    ctx.sink.hint(verdict_hint(report, adopt_advice(ctx, report)))
    return 0


def adopt_note(ctx: Context, report: Mapping[str, Any], experiment: str | None = None) -> str:
    """What adopting ``experiment`` (default: the report's best keep) writes: its knob values, into which
    preset's defaults of which file, and the code change it merges."""
    exp_id = experiment or report.get("best_keep")
    exp = ctx.ledger.experiment(exp_id) if exp_id else None
    cand = next((c for c in report["candidates"] if exp is not None and c["experiment"] == exp.id), None)
    if cand is None:
        return ""
    knobs, code = knob_writes(cand["changes"])
    workload = workload_for(ctx.workspace.root, ctx.config)
    script = f"{workload.prefix}/{workload.script}" if workload.prefix else workload.script
    merges = f"merges its code change ({code}) into {script}" if code else f"merges its code change into {script}"
    if not knobs:
        return merges
    wave = ctx.ledger.wave(exp.wave_id)
    if (wave.spec.get("knobs") if wave else "env") == "constants":
        where = f"the constants of {script}"
    else:
        preset = preset_of(exp, ctx.ledger.result(exp.id))
        where = (f"the `{preset}` preset's Knob(...) defaults in {script}" if preset
                 else f"{script} (the preset it ran with is unknown: add --preset gpu|cpu|tiny)")
    return f"writes {knobs} into {where}" + (f" and merges its code change ({code})" if code else "")


def adopt_advice(ctx: Context, report: Mapping[str, Any]) -> Advice:
    """What the verdict says about adopting its keeps, by the rule `fleet next` follows (`adopt_decisions`)."""
    if not report.get("best_keep") or report.get("recheck"):
        return Advice()
    advice = advice_from(adopt_decisions(gather(ctx).state), report["wave"], report["best_keep"])
    return replace(advice, note=adopt_note(ctx, report, advice.adopt)) if advice.adopt else advice


@dataclass(frozen=True)
class Advice:
    adopt: str | None = None  # the keep to adopt (None: none of the report's keeps)
    note: str = ""  # what adopting it writes
    why_not: str | None = None  # why the best keep is not to adopt
    instead: str | None = None  # the keep to adopt in its place


def advice_from(decisions: Sequence[AdoptDecision], wave: str, best_keep: str) -> Advice:
    """The wave's first keep to adopt, else why its best keep is not to adopt (adopted already, judged against
    code an adoption of its knob changed since, a larger keep of the same knob) (pure)."""
    mine = [d for d in decisions if d.wave.id == wave]
    chosen = next((d for d in mine if d.why_not is None and d.candidate.experiment), None)
    if chosen is not None:
        return Advice(chosen.candidate.experiment)
    best = next((d for d in mine if d.candidate.experiment == best_keep), None)
    if best is None:  # not among the loop's keeps: what the report says
        return Advice(best_keep)
    return Advice(None, "", best.why_not, best.instead)


def verdict_hint(report: Mapping[str, Any], advice: Advice | None = None) -> str:
    """The next step a verdict report calls for, with real ids; ``advice`` is what `fleet next`'s rule says
    about adopting its keeps (default: adopt the best keep)."""
    wave = report["wave"]
    if report["unfinished"] or report["undecided"]:
        return f"`fleet wait {wave}`: {report['undecided']} candidate(s) still need seed pairs; then `fleet verdict {wave}`"
    if report["best_keep"]:
        if report.get("recheck"):
            return f"the best still beats the original baseline; carry on from {report['best_keep']}"
        advice = advice or Advice(report["best_keep"])
        later = "; later, `fleet recheck` re-runs the current best against the original baseline"
        if advice.adopt is not None:
            winner = "the best winner" if advice.adopt == report["best_keep"] else "a winner not adopted yet"
            return f"`fleet adopt {advice.adopt}` keeps {winner}" + (f" ({advice.note})" if advice.note else "") + later
        if advice.instead is not None:
            return f"{report['best_keep']} is kept but not to adopt: {advice.why_not} (`fleet adopt {advice.instead}`)"
        if advice.why_not == "adopted already":
            return (f"{report['best_keep']} is adopted already: screen new ideas on the adopted code "
                    f"(`fleet next` names the file){later}")
        return f"{report['best_keep']} is kept but not to adopt: {advice.why_not}"
    if report.get("recheck"):
        best = report["candidates"][0]
        return (f"the current best ({best['label']}) is not shown better than the original baseline here: its gains "
                f"may not add up; `fleet ablate {best['experiments'][0]}` shows which of its changes still help")
    stuck = [c for c in report["candidates"] if c["verdict"] == "inconclusive"]
    if stuck and report.get("kind") == "grid":
        chosen = " ".join(c["experiment"] for c in stuck if (c["gain"] or 0) > 0 and c["experiment"])
        if chosen:
            return (f"`fleet promote --experiments {chosen}` validates the promising inconclusive ones on more seeds; "
                    "or move on")
        return "nothing here is shown better than the baseline; screen new ideas (`fleet next` names the file)"
    if stuck and not report.get("recheck"):
        # the rule `fleet next` and backfill follow: only candidates with a positive estimated gain are worth pairs
        hopeful = [c for c in stuck if promising(c["verdict"], c["gain"])]
        add = pairs_to_settle((c["n"], c["pairs_for_power"]) for c in hopeful)
        if add is None:
            need = max(c["pairs_for_power"] or 0 for c in hopeful or stuck)
            if not hopeful and pairs_to_settle((c["n"], c["pairs_for_power"]) for c in stuck) is not None:
                return ("move on: no inconclusive candidate has a positive estimated gain; nothing here is shown "
                        "better (screen new ideas: `fleet next` names the file)")
            return (f"move on: at this noise about {need} pairs would give 80% power to see a gain of "
                    f"{report['rule']['min_effect']:g}, more than more seeds are worth; nothing here is shown better "
                    "(screen new ideas: `fleet next` names the file)")
        return (f"`fleet promote {wave} --add-seeds {add}` continues the inconclusive ones (their pairs so far "
                f"count); or move on: nothing here is shown better by {report['rule']['min_effect']:g}")
    return "no candidate is kept; screen new ideas (`fleet wave FILE`)"


def cmd_recheck(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    tier = tier_of(ctx, args.tier)
    rule = rule_of(ctx, args)
    waves = ledger.waves()
    best = experiment_of(ctx, args.best, "--best")
    if best is None:
        reports = {w.id: verdict_payload(ctx, w) for w in waves if is_validation(w) and not w.spec.get("recheck")}
        best_id = current_best(waves, reports, [a.experiment_id for a in ledger.adoptions()])
        if best_id is None:
            raise InputError("no promotion has kept a candidate yet, so there is no current best to recheck; "
                             "name one with `fleet recheck --best EXP`")
        best = ledger.experiment(best_id)
    keys = Keys(ctx)
    explicit = experiment_of(ctx, args.baseline, "--baseline")
    if explicit is not None:
        baseline = Baseline(dict(explicit.config), f"--baseline {explicit.id}", explicit.id, explicit.config_key,
                            explicit.code)
    else:
        baseline = original_baseline(waves)
        if baseline is None:
            raise InputError("no promotion has run yet, so there is no original baseline; "
                             "name one with `fleet recheck --baseline EXP`")
    used = [e.seed for e in ledger.experiments() if e.config_key in (best.config_key, baseline.config_key)]
    plan = plan_recheck(best, baseline, rule, max(used, default=-1) + 1, key=lambda c: keys.key(c, best.code))
    new = submit(ctx, plan, tier, kind="promote", parent=best.wave_id, base={})
    ctx.sink.info(f"wave {new.id}: {best.id} ({best.label}) against {baseline.source} on fresh seeds, on tier {tier}")
    return _aftersubmit(ctx, args, new, plan, tier)


# ---- ablate / ablation ----------------------------------------------------------------------------------




