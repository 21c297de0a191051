"""`fleet ablate`, `fleet ablation`: what each of an experiment's changes is worth. The rules are in
`fleet/research/ablate.py`, the JSON shape in `fleet/research/ablation_plans.py`."""
from __future__ import annotations

import argparse

from fleet.cli.context import Context
from fleet.cli.research_common import (
    Evidence,
    Keys,
    add_wait,
    experiment_of,
    tier_of,
    wave_of,
    warn_other_code,
    submit,
    with_metric,
)
from fleet.cli.research_view import render_ablation
from fleet.cli.wave_cmds import already_queued, block_until_done
from fleet.core.expand import env_value, knob_values
from fleet.core.knobs import workload_answers
from fleet.core.ledger_rows import WaveRow
from fleet.core.snapshot import snapshot_root
from fleet.core.variants import VariantError, ref_variant
from fleet.errors import InputError
from fleet.research.ablate import effective_changes, leave_one_out
from fleet.research.ablation_plans import ablation_report, plan_ablation
from fleet.research.plans import Baseline, resolve_baseline
from fleet.research.verdicts import Rule


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ablate", parents=[common],
                       help="leave-one-out wave: which of an experiment's changes vs the baseline help")
    p.add_argument("experiment", help="the experiment whose configuration stacks the changes")
    p.add_argument("--baseline", metavar="EXP",
                   help="experiment whose configuration is the baseline (default: as for `fleet promote`)")
    p.add_argument("--baseline-commit", metavar="REV",
                   help="the workload's code at this git commit, with its defaults, is the baseline "
                        "(for changes baked into defaults since)")
    p.add_argument("--group", action="append", default=[], metavar="A,B",
                   help="knobs that must change together: reset them in one arm (repeatable)")
    p.add_argument("--preset", help="with --baseline-commit: the preset whose defaults apply (default: the "
                                    "experiment's own, from its result)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default: 3)")
    p.add_argument("--tier", default="validate", help="tier that runs the arms (default: validate)")
    add_wait(p, "the contributions")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("ablation", parents=[common], help="each change's contribution in an ablate wave")
    p.add_argument("wave", help="a wave made by `fleet ablate`")
    p.set_defaults(func=cmd_ablation)




def cmd_ablate(ctx: Context, args: argparse.Namespace) -> int:
    ledger = ctx.ledger
    tier = tier_of(ctx, args.tier)
    stacked = experiment_of(ctx, args.experiment, "experiment")
    wave = ledger.wave(stacked.wave_id)
    if args.baseline and args.baseline_commit:
        raise InputError("--baseline and --baseline-commit both name a baseline; give one")
    if args.seeds < 2:
        raise InputError(f"--seeds is {args.seeds}, but a contribution needs at least 2 seed pairs (e.g. `--seeds 3`)")
    keys = Keys(ctx)
    commit = None
    code = wave.snapshot  # the stacked configuration runs on its wave's code (its variant's, if it names one)
    if args.baseline_commit:
        try:
            tree = ref_variant(keys.codes.workload, args.baseline_commit)
        except VariantError as exc:
            raise InputError(f"--baseline-commit {args.baseline_commit!r}: {exc}") from None
        commit = tree.value
        baseline = Baseline({k: env_value(v) if isinstance(v, (bool, int, float)) else str(v)
                             for k, v in (wave.base or {}).items()},
                            f"commit {commit} with its defaults", None, None, keys.codes.store_files(tree.files))
    else:
        baseline = resolve_baseline(wave, ledger.experiments(wave=wave.id), experiment_of(ctx, args.baseline, "--baseline"))
        baseline = Baseline(baseline.config, baseline.source, baseline.experiment)  # its knobs, on this code
    base_code = baseline.snapshot or stacked.code
    result = ledger.result(stacked.id)
    preset = args.preset or (str(result.metrics.get("preset")) if result and result.metrics.get("preset") else None)
    changes, notes = effective_changes(baseline.config, keys.listing(base_code), stacked.config,
                                       keys.listing(stacked.code), preset)
    groups = [g.split(",") for g in args.group]
    arms = leave_one_out(baseline.config, stacked.config, args.seeds, changes=changes, groups=groups,
                         same_code=base_code == stacked.code)
    arms, skipped = _accepted_arms(keys, arms, stacked.code)
    v = ctx.config.verdicts
    rule = Rule(v.alpha, v.min_effect, args.seeds, args.seeds, "fixed", v.step_mismatch)
    plan = plan_ablation(stacked, baseline, arms, rule, keys.key, code, skipped, notes, commit)
    warn_other_code(ctx, baseline, plan)
    for note in [*notes, *(f"skipped {s['arm']}: {s['reason']}" for s in skipped)]:
        ctx.sink.warn(note)
    new = submit(ctx, plan, tier, kind="ablate", parent=wave.id, base=dict(baseline.config))
    units = ", ".join(a.name.removeprefix("without:") for a in arms if a.role == "without") or changes[0].knob
    ctx.sink.info(f"wave {new.id}: {len(arms)} arms x {args.seeds} seeds on tier {tier}; "
                  f"changes vs the baseline ({baseline.source}): {units}")
    if args.wait:
        with already_queued(new.id, len(plan.planned)):
            block_until_done(ctx, new.id, args.timeout)
            return print_ablation(ctx, ledger.wave(new.id))
    ctx.sink.data({"wave": new.id, "experiments": len(plan.planned), "tier": tier, "seeds": args.seeds,
                   "baseline": plan.spec["baseline"], "changes": plan.spec["changes"], "arms": plan.spec["arms"],
                   "skipped": skipped, "notes": notes, "snapshot": new.snapshot}, lambda c: c.print(new.id))
    ctx.sink.hint(f"`fleet wait {new.id}` then `fleet ablation {new.id}`")
    return 0


def _accepted_arms(keys: Keys, arms, code: str):
    """The arms the workload accepts; a rejected `without` arm is skipped with its reason (never fatal).

    Only a workload that answers `--check-knobs` can reject a combination (constants take any value
    of their type, which submission checks)."""
    withouts = [a for a in arms if a.role == "without"]
    if keys.codes.mode(code) != "env":
        return list(arms), []
    answers = workload_answers([knob_values(a.config) for a in withouts], snapshot_root(keys.codes.store, code).parent,
                               keys.codes.workload.script_path)
    skipped = []
    for arm, answer in zip(withouts, answers):
        if answer is not None:
            knobs = ",".join(arm.removed)
            skipped.append({"arm": arm.name, "knobs": list(arm.removed),
                            "reason": f"the workload rejects it ({' '.join(str(answer).split())[:200]}); if it must "
                                      f"change with another knob, group them: `--group {knobs},OTHER`"})
    rejected = {s["arm"] for s in skipped}
    kept = [a for a in arms if a.name not in rejected]
    if not any(a.role == "without" for a in kept) and withouts:
        raise InputError("the workload rejects every arm of this ablation; group knobs that must change together "
                         "(`--group A,B`): " + "; ".join(s["reason"] for s in skipped))
    return kept, skipped


def cmd_ablation(ctx: Context, args: argparse.Namespace) -> int:
    wave = wave_of(ctx, args.wave)
    if wave.kind != "ablate":
        raise InputError(f"wave {wave.id!r} is a {wave.kind} wave, not an ablation; "
                         "`fleet ablate EXP` makes one" + (" (`fleet verdict` reads promote waves)"
                                                            if wave.kind == "promote" else ""))
    return print_ablation(ctx, wave)


def print_ablation(ctx: Context, wave: WaveRow) -> int:
    evidence = Evidence(ctx)
    report = with_metric(ablation_report(wave, evidence.experiments, evidence.results, evidence.norm.values),
                         evidence.metric)
    ctx.sink.data(report, lambda c: render_ablation(c, report))
    if report["complete"]:
        ctx.ledger.mark_read(wave.id)  # `fleet next` stops listing it as unread
    if not report["complete"]:
        ctx.sink.warn(f"{report['unfinished']} experiments of {wave.id} are unfinished; contributions use what finished")
        ctx.sink.hint(f"`fleet wait {wave.id}` then `fleet ablation {wave.id}`")
    elif report["drop"]:
        ctx.sink.hint(f"drop {', '.join(report['drop'])}: each is shown to be worth less than min_effect; a simpler "
                      "configuration is a win (set them back in train/train.py, then commit)")
    elif report["inconclusive"]:
        ctx.sink.hint(f"keep {', '.join(report['inconclusive'])} for now (not shown either way); "
                      f"`fleet ablate {report['experiment']} --seeds {2 * report['rule']['max_seeds']}` can settle them")
    return 0
