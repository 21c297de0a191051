"""Verdict and ablation reports as tables for people (the JSON is the report itself).

Labels, sources and reasons come from wave files and runs: they are printed as plain text only
(`fleet.plain_text.plain`), never as markup.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet.cli.output import styled
from fleet.plain_text import plain

COLORS = {"keep": "green", "discard": "red", "drop": "red", "inconclusive": "yellow", "need_more": "cyan"}


def _f(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _interval(low: float | None, high: float | None) -> str:
    return f"[{low:+.4f}, {high:+.4f}]" if low is not None and high is not None else "-"


def _t(value: object) -> Text:
    return Text(plain(value))


def render_verdict(console: Console, report: dict[str, Any]) -> None:
    base, rule = report["baseline"], report["rule"]
    kind = "recheck" if report.get("recheck") else "verdicts"
    console.print(styled(f"{kind} of {report['wave']} (tier {report['tier']}, {report['metric']} val_bpb on "
                         f"{', '.join(report['accelerators']) or 'no finished runs yet'})"))
    console.print(styled(f"baseline: {_mean_std(base['mean'], base['std'])} (n={base['n']}) — {base['source']}"))
    table = Table(title_justify="left")
    for col in ("#", "candidate", "pairs", "Δ vs baseline", "interval of Δ", "power", "verdict", "reason"):
        table.add_column(col, no_wrap=col not in ("candidate", "reason"))
    for c in report["candidates"]:
        power = "-" if c["power"] is None else f"{100 * c['power']:.0f}%"
        table.add_row(str(c["rank"]), _t(c["label"]), str(c["n"]), _f(c["delta"], "+.4f"),
                      _interval(c["ci_low"], c["ci_high"]), power, Text(c["verdict"], style=COLORS[c["verdict"]]),
                      _t(c["reason"]))
    console.print(table)
    design = (f"sequential: looks after every pair, {rule['first_look']}..{rule['max_seeds']} pairs"
              if rule["design"] == "sequential" else f"fixed: {rule['max_seeds']} pairs, one look")
    console.print(styled((f"keep = gain significant at alpha {rule['alpha']:g} (Holm over the candidates) and ≥ "
                          f"min_effect {rule['min_effect']:g}; discard = gain shown < min_effect; {design}; Δ < 0 is "
                          "better; power = chance to detect a gain of min_effect by the cap at this noise", "dim")))
    if report.get("direction") == "maximize":
        console.print(styled((f"{report['metric_name']} is higher-is-better: values are shown negated, so lower is "
                              "better throughout", "dim")))


def render_ablation(console: Console, report: dict[str, Any]) -> None:
    console.print(styled(f"ablation of {report['experiment']} ({report['wave']}, tier {report['tier']}, "
                         f"{report['metric']} val_bpb; contribution = val_bpb without the change − with it; > 0 helps)"))
    arms = Table(title="arms", title_justify="left")
    for col in ("arm", "n", "mean ± std"):
        arms.add_column(col)
    for a in report["arms"]:
        arms.add_row(_t(a["name"]), str(a["n"]), _mean_std(a["mean"], a["std"]))
    console.print(arms)
    table = Table(title="changes", title_justify="left")
    for col in ("change", "baseline → stacked", "n", "contribution", "bounds", "verdict", "note"):
        table.add_column(col, no_wrap=col not in ("note", "change"))
    for c in report["changes"]:
        values = (f"{c['baseline_value'] or '(default)'} → {c['stacked_value'] or '(default)'}"
                  if len(c["knobs"]) == 1 else "(group)")
        table.add_row(_t(c["knob"]), _t(values), str(c["n"]), _f(c["contribution"], "+.4f"),
                      _interval(c["ci_low"], c["ci_high"]), Text(c["verdict"], style=COLORS[c["verdict"]]), _t(c["note"]))
    console.print(table)
    for s in report.get("skipped", []):
        console.print(styled((f"skipped {s['arm']}", "yellow"), f": {s['reason']}"))
    for note in report.get("notes", []):
        console.print(styled((note, "dim")))
    rule = report["rule"]
    console.print(styled((f"keep = contribution significant (Holm over the changes, alpha {rule['alpha']:g}) and ≥ "
                          f"min_effect {rule['min_effect']:g}; drop = contribution shown < min_effect", "dim")))
