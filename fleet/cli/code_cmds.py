"""`fleet diff`, `fleet adopt`, `fleet schema`: experiments' code, and the wave file format.

The merge itself lives in `fleet.core.adopt`; here: which code to merge, and saying what changed."""
from __future__ import annotations

import argparse

from rich.text import Text

from fleet.cli.context import Context
from fleet.core import knob_block
from fleet.core.adopt import AdoptConflict, plan_adoption, write_adoption
from fleet.core.expand import env_value, knob_values
from fleet.core.ledger_rows import ExperimentRow, WaveRow
from fleet.core.snapshot import read_tree, snapshot_diff, snapshot_root
from fleet.core.wave import wave_json_schema
from fleet.core.workload import workload_for
from fleet.errors import InputError
from fleet.plain_text import plain


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("diff", parents=[common], help="the code difference between two experiments")
    p.add_argument("a", help="experiment id (or snapshot id)")
    p.add_argument("b", nargs="?", help="experiment id (default: the current working tree is not compared; give two)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("adopt", parents=[common],
                       help="merge an experiment's change (code and knob values) into the working tree")
    p.add_argument("experiment", help="experiment id")
    p.add_argument("--dry-run", action="store_true", help="show the diff it would apply; write nothing")
    p.add_argument("--preset", choices=knob_block.PRESETS,
                   help="env knobs: the preset whose Knob(...) defaults take the values (default: the one it ran with)")
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser("schema", parents=[common], help="print the wave file's JSON schema")
    p.set_defaults(func=cmd_schema)


def diff_text(diff: str) -> Text:
    """A unified diff coloured line by line, as plain text: no padding to the terminal's width (rich's
    Syntax pads every line with spaces), no markup, controls made visible."""
    out = Text()
    for line in plain(diff, one_line=False).splitlines():
        style = ("bold" if line.startswith(("+++", "---", "diff ")) else "green" if line.startswith("+")
                 else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else "")
        out.append(line + "\n", style=style)
    out.rstrip()
    return out


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
    prefix = workload_for(ctx.workspace.root, ctx.config).prefix
    text = snapshot_diff(ctx.workspace.snapshots, a, b, prefix=prefix)
    ctx.sink.data({"a": args.a, "b": args.b, "snapshot_a": a, "snapshot_b": b, "diff": text},
                  lambda c: c.print(diff_text(text) if text else f"same code (snapshot {a})"))
    return 0


def _preset(exp: ExperimentRow, result, flag: str | None) -> str | None:
    """The preset an env-knob experiment ran with: --preset, its PRESET knob, else its summary's `preset:`."""
    if flag:
        return flag
    chosen = exp.config.get("PRESET")
    if chosen in knob_block.PRESETS:
        return chosen
    reported = result.metrics.get("preset") if result is not None else None
    return reported if reported in knob_block.PRESETS else None


def _own_values(exp: ExperimentRow, wave: WaveRow | None) -> tuple[dict[str, str], dict[str, str]]:
    """The experiment's knob values that are its own change, and those its whole wave shared (its `env`,
    e.g. a short TIME_BUDGET for a screen), which are not adopted."""
    base = {k: v if isinstance(v, str) else env_value(v) for k, v in (wave.base if wave else {}).items()}
    values = knob_values(exp.config)
    shared = {k: v for k, v in values.items() if base.get(k) == v}
    return {k: v for k, v in values.items() if k not in shared}, shared


def _written_values(adoption, values: dict[str, str], script, preset: str | None) -> list[dict[str, str]]:
    """Each knob default the adoption writes as values (`{"knob", "from", "to"}`): for env knobs the preset's
    default before and the experiment's value, not the `Knob(...)` declarations it rewrites."""
    decls = knob_block.knob_declarations(script.content.decode("utf-8", "replace")) if script and preset else {}
    out = []
    for d in adoption.defaults:
        decl = decls.get(d.name)
        if decl is not None and d.name in values:
            out.append({"knob": d.name, "from": str(decl.default(preset)), "to": values[d.name]})
        else:
            out.append({"knob": d.name, "from": d.before, "to": d.after})
    return out


def cmd_adopt(ctx: Context, args: argparse.Namespace) -> int:
    exp = ctx.ledger.experiment(args.experiment)
    if exp is None:
        raise InputError(f"unknown experiment {args.experiment!r}; `fleet results --json` lists experiment ids")
    workload = workload_for(ctx.workspace.root, ctx.config)
    store = ctx.workspace.snapshots
    wave = ctx.ledger.wave(exp.wave_id)
    base_id = exp.base_snapshot or (wave.snapshot if wave else exp.code)
    code, base = read_tree(snapshot_root(store, exp.code)), read_tree(snapshot_root(store, base_id))
    values, shared = _own_values(exp, wave)
    mode = workload.knob_mode(code)
    work = workload.read(strict=False)
    adoption = plan_adoption(exp.id, base, code, work, workload.script, mode, values,
                             _preset(exp, ctx.ledger.result(exp.id), args.preset), workload.prefix)
    if adoption.conflicts:
        lines = "\n".join(f"  {c}" for c in adoption.conflicts)
        raise AdoptConflict(f"adopting {exp.id} conflicts with changes made in the working tree since its code was "
                            f"taken; nothing was changed:\n{lines}\nmerge those lines by hand "
                            f"(`fleet adopt {exp.id} --dry-run` shows the rest of its change)")
    shown = [f"{workload.prefix}/{rel}" if workload.prefix else rel for rel in adoption.changed]
    defaults = [{"knob": d.name, "from": d.before, "to": d.after} for d in adoption.defaults]
    preset = _preset(exp, ctx.ledger.result(exp.id), args.preset) if mode == "env" else None
    written = _written_values(adoption, values, work.get(workload.script), preset)
    if not args.dry_run:
        write_adoption(workload.directory, adoption)
        if shown:  # `fleet next` and `fleet journal` read the chain of adopted changes from here
            ctx.ledger.record_adoption(exp.id, preset, written, shown)
    script = f"{workload.prefix}/{workload.script}" if workload.prefix else workload.script
    payload = {"experiment": exp.id, "snapshot": exp.snapshot, "code": exp.code, "base": base_id,
               "changed": shown, "defaults": defaults, "knobs": knob_values(exp.config), "dry_run": args.dry_run,
               "preset": preset, "script": script, "diff": adoption.diff, "notes": list(adoption.notes)}
    where = (f"the `{preset}` preset's Knob(...) defaults in {script}" if preset
             else f"the constants of {script}" if mode == "constants" else f"{script}")

    def render(console) -> None:
        if args.dry_run:
            console.print(diff_text(adoption.diff) if adoption.diff else f"{exp.id}: nothing to change")
            return
        console.print(f"adopted {exp.id}: {len(shown)} file(s) changed" + "".join(f"\n  {p}" for p in shown),
                      markup=False)
        if written:
            console.print(f"  defaults written to {where}:", markup=False)
        for d in written:
            console.print(f"    {d['knob']}: {d['from']} -> {d['to']}", markup=False)

    ctx.sink.data(payload, render)
    for note in adoption.notes:
        ctx.sink.warn(note)
    if shared:
        ctx.sink.info(f"not written as defaults: {' '.join(f'{k}={v}' for k, v in shared.items())} "
                      f"(the wave's `env`: every experiment of {exp.wave_id} ran with it)")
    knobs = " ".join(f"{d['knob']}={d['to']}" for d in written)
    if args.dry_run:
        ctx.sink.hint(f"`fleet adopt {exp.id}` applies it" + (f": writes {knobs} into {where}" if knobs else ""))
    elif shown:
        ctx.sink.hint(f"review and commit {' '.join(shown)} (e.g. `git commit -am 'adopt {exp.id}'`); "
                      "the next wave's `{description: baseline}` then runs the new defaults")
    else:
        ctx.sink.hint("the working tree already has this experiment's change")
    return 0


def cmd_schema(ctx: Context, args: argparse.Namespace) -> int:
    import json

    print(json.dumps(wave_json_schema(), indent=2))
    return 0
