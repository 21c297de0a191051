"""`fleet report`: a shareable Markdown summary of a research run (pure: records in, text out).

Verdicts are those of `fleet verdict`: `fleet.research.plans.promotion_report` judges each candidate of a
promote wave against its baseline on paired seeds; `verdicts_from_reports` flattens its output.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fleet.observe.dashboard import WaveLine
from fleet.observe.efficiency import IMPROVEMENT_UNIT, Efficiency
from fleet.observe.leaderboard import ConfigRow, Row
from fleet.plain_text import plain

PROMOTE_KIND = "promote"


@dataclass(frozen=True)
class ConfigVerdict:
    wave: str
    label: str
    experiments: tuple[str, ...]
    n: int  # paired seeds
    mean: float | None
    baseline_mean: float | None
    delta: float | None
    p_value: float | None
    verdict: str
    reason: str
    low: float | None = None  # bounds on delta the verdict used
    high: float | None = None
    power: float | None = None  # to detect a gain of min_effect by the cap, at the observed noise
    complete: bool = True  # False: its wave still runs, so an undecided candidate is not a verdict yet


def verdicts_from_reports(reports: Iterable[Mapping]) -> list[ConfigVerdict]:
    """One row per candidate of each promote wave's report (the `fleet verdict --json` shape)."""
    return [ConfigVerdict(r["wave"], c["label"], tuple(c["experiments"]), c["n"], c["mean"], c["baseline_mean"],
                          c["delta"], c["p_value"], c["verdict"], c["reason"], c.get("ci_low"), c.get("ci_high"),
                          c.get("power"), bool(r.get("complete", True)))
            for r in reports for c in r["candidates"]]


@dataclass(frozen=True)
class AdoptedChange:
    """One `fleet adopt` that changed the working tree, with the verdict that allowed it."""

    when: str
    experiment: str
    label: str
    verdict: str  # e.g. "keep in lr-promote (Δ -0.0040, 5 pairs)"; "no keep on record" when adopted without one
    written: str  # e.g. "MATRIX_LR 0.04 -> 0.05 (preset gpu)"


@dataclass(frozen=True)
class AblationLine:
    wave: str
    experiment: str
    change: str
    n: int
    contribution: float | None  # val_bpb without the change − with it (> 0 helps)
    low: float | None
    high: float | None
    verdict: str  # keep | drop | inconclusive
    complete: bool


def ablations_from_reports(reports: Iterable[Mapping]) -> list[AblationLine]:
    """One row per change of each ablation report (the `fleet ablation --json` shape)."""
    return [AblationLine(r["wave"], r.get("experiment") or "-", c["knob"], c["n"], c["contribution"], c["ci_low"],
                         c["ci_high"], c["verdict"], bool(r["complete"]))
            for r in reports for c in r["changes"]]


def _shown_verdict(v: ConfigVerdict) -> str:
    """keep in bold; an undecided candidate of a wave still running is `running`, never `inconclusive`."""
    if v.verdict == "keep":
        return "**keep**"
    if v.verdict == "need_more" or (not v.complete and v.verdict == "inconclusive"):
        return "running"
    return v.verdict


def _cell(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}" if isinstance(value, float) else plain(value)
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_efficiency(eff: Efficiency, top: int = 15) -> list[str]:
    """The frontier (GPU-hours until each new best), the cost of improvement and the waste, as Markdown lines."""
    if not eff.frontier:
        return ["No finished result yet."]
    lines = ["GPU-hours spent (every finished run counted, crashed and pruned ones too) until each new best:", ""]
    shown = list(eff.frontier)[-top:]
    lines += _table(["experiment", "configuration", "value", "GPU-hours by then", "$ by then"],
                    [[f"`{p.experiment}`", p.label or "(base)", p.value, f"{p.gpu_hours:.3f}", f"{p.dollars:.2f}"]
                     for p in shown], right=(2, 3, 4))
    lines.append("")
    if eff.gpu_hours_per_unit is not None:
        lines.append(f"**Cost of improvement:** {eff.gpu_hours_per_unit:.3f} GPU-hours (${eff.dollars_per_unit:.2f}) "
                     f"per {IMPROVEMENT_UNIT:g} of improvement ({eff.improvement:.4f} in all, over the first finished "
                     f"result, in {eff.frontier[-1].gpu_hours:.2f} GPU-hours).")
    else:
        lines.append("**Cost of improvement:** no improvement over the first finished result yet.")
    waste = ", ".join(f"{k} {100 * v:.1f}% ({eff.waste_gpu_hours[k]:.2f} h)" for k, v in eff.waste.items())
    lines.append(f"**GPU time that taught nothing new:** {waste} of {eff.gpu_hours:.2f} GPU-hours "
                 "(duplicate: a configuration, seed and code that had already finished).")
    return lines


def render_report(
    *, generated: str, scope: str, waves: Sequence[WaveLine], rows: Sequence[Row], sorted_by: str,
    calibration: str, verdicts: Sequence[ConfigVerdict], cost: Mapping, plot_file: str | None,
    plot_note: str = "", top: int = 10, configs: Sequence[ConfigRow] = (),
    adopted: Sequence[AdoptedChange] = (), ablations: Sequence[AblationLine] = (), backfill_waves: frozenset[str] = frozenset(),
    efficiency: Efficiency | None = None,
) -> str:
    """The report as Markdown; `plot_file` is the PNG's path relative to the report (or None).

    The best is a configuration by its mean over runs (with n), never one run."""
    ranked = [c for c in configs if c.rank is not None]
    finished = sum(w.finished for w in waves)
    total = sum(w.total for w in waves)
    lines = ["# skyfleet report", "", f"{scope} · generated {generated} · {finished}/{total} experiments finished"]
    if ranked:
        b = ranked[0]
        spread = f" ± {b.std:.4f}" if b.std is not None else ""
        lines.append(f"\n**Best:** {_cell(b.label or '(base)')} — val_bpb {b.val_bpb:.4f}{spread}, mean of n={b.n}"
                     + (f" (normalized {b.normalized:.4f})" if b.normalized is not None else "")
                     + f" on {', '.join(b.accelerators)}; e.g. `{b.experiments[0]}`")

    lines += ["", "## Waves", ""]
    wave_rows = []
    for w in waves:
        n = w.counts
        share = f"{100 * w.finished / w.total:.0f}%" if w.total else "-"
        wave_rows.append([w.id, w.kind + (" (backfill)" if w.id in backfill_waves else ""), w.tier, w.total, f"{w.finished}/{w.total} ({share})", n.get("done", 0),
                          n.get("crash", 0) + n.get("timeout", 0), n.get("held", 0), f"{w.gpu_hours:.2f}",
                          f"{w.dollars:.2f}", "-" if w.cap_gpu_hours is None else f"{w.cap_gpu_hours:g}"])
    lines += _table(["wave", "kind", "tier", "size", "progress", "done", "crash", "held", "GPU-h", "$", "cap GPU-h"],
                    wave_rows, right=(3, 5, 6, 7, 8, 9, 10)) if wave_rows else ["No waves yet."]

    by = "val_bpb normalized across hardware" if sorted_by == "normalized" else "raw val_bpb"
    lines += ["", "## Best configurations", ""]
    if ranked:
        lines.append(f"Top {min(top, len(ranked))} of {len(ranked)} configurations by their mean {by} over their "
                     f"finished runs (all waves: the same code and configuration are one experiment).")
    if calibration:
        lines.append(f"Normalization: {calibration}.")
    lines.append("")
    if ranked:
        lines += _table(["#", "configuration", "n", "val_bpb", "± std", "normalized", "step-corrected", "accel",
                         "runs"],
                        [[c.rank, c.label or "(base)", c.n, c.val_bpb, c.std, c.normalized, c.corrected,
                          ", ".join(c.accelerators), ", ".join(f"`{e}`" for e in c.experiments[:3])
                          + (" …" if len(c.experiments) > 3 else "")] for c in ranked[:top]],
                        right=(0, 2, 3, 4, 5, 6))
    else:
        lines.append("No finished experiments yet.")

    lines += ["", "## Verdicts", ""]
    if verdicts:
        lines.append("Candidates of promote and recheck waves against their baseline, seed pair by seed pair: keep = "
                     "gain significant (Holm over the wave's candidates) and at least min_effect; discard = gain shown "
                     "below min_effect; otherwise inconclusive. Δ < 0 is better.")
        lines.append("")
        lines += _table(["wave", "configuration", "verdict", "pairs", "mean", "baseline", "Δ", "interval of Δ",
                         "power", "why"],
                        [[v.wave, v.label, _shown_verdict(v), v.n, v.mean,
                          v.baseline_mean, None if v.delta is None else f"{v.delta:+.4f}",
                          None if v.low is None or v.high is None else f"[{v.low:+.4f}, {v.high:+.4f}]",
                          None if v.power is None else f"{100 * v.power:.0f}%", v.reason] for v in verdicts],
                        right=(3, 4, 5, 6, 8))
    else:
        lines.append("No validation yet: `fleet promote` on a screen wave reruns its best configurations against "
                     "the baseline, seed pair by seed pair.")

    if any(not v.complete for v in verdicts):
        lines += ["", "`running`: its wave is still adding seed pairs or running them; not a verdict yet."]

    lines += ["", "## Adopted changes", ""]
    if adopted:
        lines.append("Changes merged into the working tree with `fleet adopt`, in order, and the verdict behind each.")
        lines.append("")
        lines += _table(["#", "when", "experiment", "change", "verdict", "defaults written"],
                        [[i, a.when, f"`{a.experiment}`", a.label, a.verdict, a.written] for i, a in enumerate(adopted, 1)],
                        right=(0,))
    else:
        lines.append("Nothing adopted yet (`fleet adopt EXP` after a `keep` verdict).")

    lines += ["", "## Ablations", ""]
    if ablations:
        lines.append("What each change of an experiment is worth, by leaving it out: contribution = val_bpb without "
                     "the change − with it (> 0 helps); drop = shown to be worth less than min_effect.")
        lines.append("")
        lines += _table(["wave", "experiment", "change", "pairs", "contribution", "interval", "verdict"],
                        [[a.wave, f"`{a.experiment}`", a.change, a.n,
                          None if a.contribution is None else f"{a.contribution:+.4f}",
                          None if a.low is None or a.high is None else f"[{a.low:+.4f}, {a.high:+.4f}]",
                          a.verdict if a.complete else "running"] for a in ablations],
                        right=(3, 4))
    else:
        lines.append("No ablation yet (`fleet ablate EXP` shows which of a winner's changes still help).")

    lines += ["", "## Progress", ""]
    lines.append(f"![val_bpb of every experiment and the best configuration's mean]({plot_file})" if plot_file
                 else plot_note or "No plot.")

    if efficiency is not None:
        lines += ["", "## Efficiency", ""] + render_efficiency(efficiency)

    lines += ["", "## Spend", ""]
    by_acc = cost.get("by_accelerator") or {}
    spend_rows = [[acc, "-" if v["price_per_hour"] is None else f"{v['price_per_hour']:.2f}", f"{v['gpu_hours']:.2f}",
                   f"{v['dollars']:.2f}"] for acc, v in by_acc.items()]
    spend_rows.append(["**total**", "", f"{cost.get('gpu_hours', 0.0):.2f}", f"{cost.get('dollars', 0.0):.2f}"])
    lines += _table(["accelerator", "$ / GPU-hour", "GPU-hours", "$"], spend_rows, right=(1, 2, 3))
    lines.append("")
    lines.append("GPU time counts each experiment from its job's start to its end (queue time excluded); "
                 "prices come from `prices:` in fleet.yaml.")
    if cost.get("cap_gpu_hours"):
        lines.append(f"Budget cap: {cost['cap_gpu_hours']:g} GPU-hours "
                     f"({100 * cost.get('gpu_hours', 0.0) / cost['cap_gpu_hours']:.0f}% used).")
    fill = cost.get("backfill")
    if fill:
        state = (f"on, capped at {fill['cap_gpu_hours']:g} GPU-hours" if fill["enabled"] else "off")
        lines.append(f"Backfill ({state}): {fill['gpu_hours']:.2f} GPU-hours in {fill['waves']} wave(s), included above. "
                     f"GPUs stood idle for {fill['idle_gpu_hours']:.2f} GPU-hours while clusters were up.")
    return "\n".join(lines) + "\n"
