"""`fleet init`: make any repository with a training script a fleet project (fleet.yaml, experiment.yaml)."""
from __future__ import annotations

import argparse

from fleet.cli.context import Context
from fleet.core.project_init import Layout, detect, example_wave, render_fleet_yaml, render_task


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("init", parents=[common],
                       help="detect this repository's training script and write fleet.yaml and experiment.yaml")
    p.add_argument("--script", help="the training script (default: train.py at the root, else train/train.py)")
    p.add_argument("--metric", default="val_bpb", help="the summary key that judges a run (default: val_bpb)")
    p.add_argument("--maximize", action="store_true", help="higher is better for --metric (default: lower)")
    p.add_argument("--force", action="store_true", help="replace fleet.yaml and experiment.yaml if they exist")
    p.set_defaults(func=cmd_init)


def _seed_advice(layout: Layout) -> str | None:
    if layout.knobs != "constants" or layout.seed_diff is None:
        return None
    text = (f"{layout.script} has no SEED constant: it fixes its seed in code, so runs of one configuration "
            "differ only by GPU nondeterminism. `seeds: N` then runs N replicates, and verdicts compare them "
            "unpaired (Welch's test), which needs more runs to see the same gain. To pair runs by seed, add a "
            "SEED constant (each run gets SEED=0..N-1 written into its snapshot)")
    return text + (":\n" + layout.seed_diff if layout.seed_diff else
                   " and pass it to every call that seeds a random generator.")


def cmd_init(ctx: Context, args: argparse.Namespace) -> int:
    root = ctx.workspace.root
    layout = detect(root, args.script)
    metric = args.metric
    direction = "maximize" if args.maximize else "minimize"
    files = [("fleet.yaml", render_fleet_yaml(layout, metric, direction)), ("experiment.yaml", render_task(layout))]
    written, kept = [], []
    for name, text in files:
        path = root / name
        if path.exists() and not args.force:
            kept.append({"path": name, "would_write": text})
            continue
        path.write_text(text)
        written.append(name)
    knobs = [{"name": c.name, "value": c.text, "line": c.line, "help": c.comment} for c in layout.constants]
    # Names a reader may take for knobs; function locals and one-letter imports (`F`) are not worth a line.
    skipped = [{"name": n.name, "why": n.why} for n in layout.not_knobs
               if "only inside" not in n.why and len(n.name) > 1]
    advice = _seed_advice(layout)
    wave = example_wave(layout) if layout.knobs == "constants" else None
    payload = {
        "root": str(root), "workload": layout.workload, "script": layout.script, "knobs": layout.knobs,
        "install": "uv" if layout.uv else "pip", "prepare": layout.prepare, "snapshot": list(layout.snapshot or []),
        "metric": {"name": metric, "direction": direction}, "written": written, "kept": kept,
        "constants": knobs, "not_knobs": skipped, "seed": {"has_seed": advice is None, "advice": advice},
        "example_wave": wave,
    }

    def render(console) -> None:
        where = f"{layout.workload}/{layout.script}" if layout.workload != "." else layout.script
        console.print(f"{where}: knobs are {'environment variables (--knobs)' if layout.knobs == 'env' else 'its constants'}"
                      f"; installs with {'uv (uv.lock)' if layout.uv else 'pip'}"
                      + (f"; data step {layout.prepare}" if layout.prepare else ""), markup=False)
        for k in knobs:
            console.print(f"  {k['name']} = {k['value']}" + (f"  # {k['help']}" if k["help"] else ""), markup=False)
        for name in written:
            console.print(f"wrote {name}", markup=False)

    ctx.sink.data(payload, render)
    for item in kept:
        ctx.sink.warn(f"{item['path']} exists and was kept; `fleet init --force` replaces it with:\n"
                      f"{item['would_write']}")
    for item in skipped:
        ctx.sink.info(f"not a knob: {item['why']}")
    for note in layout.notes:
        ctx.sink.info(note)
    if advice:
        ctx.sink.warn(advice)
    gitignore = root / ".gitignore"
    if not gitignore.exists() or ".fleet" not in gitignore.read_text(errors="replace"):
        ctx.sink.info("add `.fleet/` to .gitignore: it holds the ledger, logs and snapshots")
    if wave:
        ctx.sink.info("a first wave, to save as waves/001-first.yaml:\n" + wave)
        ctx.sink.hint("save it as waves/001-first.yaml, check it with `fleet wave waves/001-first.yaml --dry-run`, "
                      "run it with `fleet wave waves/001-first.yaml --wait`; then `fleet next` names each next step "
                      "with real ids")
    else:
        ctx.sink.hint("write a first wave as waves/001-first.yaml (`fleet schema` shows the format), run it with "
                      "`fleet wave waves/001-first.yaml --wait`; then `fleet next` names each next step")
    return 0
