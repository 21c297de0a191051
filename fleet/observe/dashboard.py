"""`fleet watch`: a snapshot of the fleet as a plain record, and a pure rendering of it.

The CLI reads a `FleetSnapshot` from the ledger (never the backend) every interval; everything here
is pure — utilization arithmetic over time intervals and `render_dashboard(snapshot)` — so the
dashboard is tested by rendering a constructed snapshot to a recording console.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleet.observe.cost import describe_spend
from fleet.observe.leaderboard import ConfigRow, Row
from fleet.plain_text import plain

SPARK = " ▁▂▃▄▅▆▇█"
UTILIZATION_WINDOW_S = 3600.0
UTILIZATION_BUCKET_S = 300.0


@dataclass(frozen=True)
class ClusterLine:
    name: str
    accelerator: str
    state: str
    queue_depth: int
    running: str | None = None  # experiment id
    elapsed_s: float | None = None
    budget_s: float | None = None  # the running experiment's TIME_BUDGET
    replaces: str | None = None  # the lost cluster it was launched to replace
    overhead_s: float = 0.0  # start-up and evaluation beyond TIME_BUDGET that recent runs took

    @property
    def expected_s(self) -> float | None:
        """How long its running job is expected to take, start to end: its budget is training time only."""
        return None if self.budget_s is None else self.budget_s + self.overhead_s


@dataclass(frozen=True)
class WaveLine:
    id: str
    kind: str
    tier: str
    total: int
    finished: int
    counts: dict[str, int]
    gpu_hours: float = 0.0
    dollars: float = 0.0
    cap_gpu_hours: float | None = None
    backfill: bool = False  # queued by the fleet itself for idle clusters

    @property
    def cancelled(self) -> int:
        return self.counts.get("cancelled", 0)

    @property
    def ran(self) -> int:
        """Finished experiments that ran (done, crash, timeout): a cancelled one did not."""
        return self.finished - self.cancelled


@dataclass(frozen=True)
class CrashLine:
    experiment: str
    state: str  # crash or timeout
    accelerator: str | None
    reason: str
    finished_at: float | None


@dataclass(frozen=True)
class Utilization:
    """Busy GPU time over available GPU time, overall and per bucket (None: no cluster was up)."""

    fraction: float | None
    buckets: tuple[float | None, ...]
    window_s: float = UTILIZATION_WINDOW_S
    bucket_s: float = UTILIZATION_BUCKET_S


@dataclass(frozen=True)
class FleetSnapshot:
    taken_at: float
    backend: str
    controller_running: bool
    controller_error: str | None
    clusters: tuple[ClusterLine, ...]
    waves: tuple[WaveLine, ...]
    leaderboard: tuple[Row, ...]  # ranked rows first, best first
    sorted_by: str
    reference_accelerator: str
    calibration: str
    crashes: tuple[CrashLine, ...]  # most recent first
    utilization: Utilization
    cost: dict = field(default_factory=dict)  # fleet.observe.cost.spend() plus cap_gpu_hours
    configs: tuple[ConfigRow, ...] = ()  # configurations by their mean over runs, best first
    efficiency: str = ""  # fleet.observe.efficiency.describe(): the best per GPU-hour and the waste


# --- utilization ---------------------------------------------------------------------------------
Interval = tuple[float, float]


def overlap(a: Interval, b: Interval) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def utilization_spans(now: float, window_s: float = UTILIZATION_WINDOW_S,
                      bucket_s: float = UTILIZATION_BUCKET_S) -> list[Interval]:
    """The whole window first, then its buckets, oldest first."""
    start = now - window_s
    n = max(1, round(window_s / bucket_s))
    return [(start, now)] + [(start + i * bucket_s, min(now, start + (i + 1) * bucket_s)) for i in range(n)]


def utilization_from(busy: Sequence[float], capacity: Sequence[float], window_s: float = UTILIZATION_WINDOW_S,
                     bucket_s: float = UTILIZATION_BUCKET_S) -> Utilization:
    """Utilization from the busy and the available GPU-seconds in each of `utilization_spans`."""
    ratios = [None if cap <= 0 else min(1.0, b / cap) for b, cap in zip(busy, capacity)]
    return Utilization(ratios[0], tuple(ratios[1:]), window_s, bucket_s)


def utilization(
    busy: Sequence[Interval], available: Sequence[Interval], now: float,
    window_s: float = UTILIZATION_WINDOW_S, bucket_s: float = UTILIZATION_BUCKET_S,
) -> Utilization:
    """Busy GPU-seconds ÷ available GPU-seconds over the last `window_s`, and per `bucket_s`.

    `busy` are attempts' (start, end) on a GPU (a running one ends `now`); `available` are
    clusters' (up since, gone at or `now`), so a fleet brought up ten minutes ago is not reported
    as idle for the fifty minutes before it existed. (`fleet watch` sums the busy time in SQL and
    calls `utilization_from` with the sums.)
    """
    spans = utilization_spans(now, window_s, bucket_s)
    return utilization_from([sum(overlap(b, span) for b in busy) for span in spans],
                            [sum(overlap(a, span) for a in available) for span in spans], window_s, bucket_s)


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value in 0..1; a gap where there is no value."""
    out = []
    for v in values:
        if v is None:
            out.append("·")
        else:
            out.append(SPARK[min(len(SPARK) - 1, max(0, round(v * (len(SPARK) - 1))))])
    return "".join(out)


# --- rendering -----------------------------------------------------------------------------------
def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    return f"{_clock(now - then)} ago"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _t(value: object, style: str = "") -> Text:
    """User text as a cell: plain (never markup, controls made visible), optionally styled."""
    return Text(plain(value), style=style)


def render_clusters(snap: FleetSnapshot) -> RenderableType:
    if not snap.clusters:
        return Text.assemble(("clusters", "bold"), ": none up — `fleet up` starts them (the local backend "
                             "starts its slots with the first wave)")
    table = Table(title="clusters", title_justify="left", expand=False)
    for col, justify in (("cluster", "left"), ("accel", "left"), ("state", "left"), ("queue", "right"),
                         ("running", "left"), ("elapsed / expected", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for c in snap.clusters:
        style = {"up": "green", "provisioning": "yellow", "lost": "red"}.get(c.state, "")
        elapsed = Text("-")
        if c.running is not None:
            # Expected = TIME_BUDGET (training only) + the start-up and evaluation recent runs took.
            elapsed = Text(f"{_clock(c.elapsed_s)} / {_clock(c.expected_s)}")
            if c.expected_s and c.elapsed_s and c.elapsed_s > c.expected_s:
                elapsed.stylize("yellow")  # longer than runs usually take: slow, or stuck
        state = _t(c.state, style)
        if c.replaces:
            state.append(f" (replaces {plain(c.replaces)})", style="dim")
        table.add_row(_t(c.name), _t(c.accelerator), state, str(c.queue_depth), _t(c.running or "-"), elapsed)
    return table


def render_waves(snap: FleetSnapshot) -> RenderableType:
    if not snap.waves:
        return Text.assemble(("waves", "bold"), ": none yet — `fleet wave FILE` submits one")
    table = Table(title="waves", title_justify="left")
    for col, justify in (("wave", "left"), ("kind", "left"), ("tier", "left"), ("progress", "left"),
                         ("done", "right"), ("run", "right"), ("wait", "right"), ("crash", "right"),
                         ("held", "right"), ("cancel", "right"), ("GPU-h", "right"), ("$", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for w in snap.waves:
        n = w.counts
        bar = Table.grid(padding=(0, 1))
        # Cancelled experiments did not run: a cancelled wave is not shown as complete.
        label = f"{w.ran}/{w.total}" + (" cancelled" if w.cancelled and w.ran + w.cancelled == w.total and w.cancelled
                                        else "")
        bar.add_row(ProgressBar(total=max(1, w.total), completed=w.ran, width=24,
                                complete_style="yellow" if w.cancelled else "bar.complete"), label)
        held = n.get("held", 0)
        gpu = f"{w.gpu_hours:.2f}" + (f"/{w.cap_gpu_hours:g}" if w.cap_gpu_hours else "")
        kind = _t("backfill", "dim") if w.backfill else _t(w.kind)  # its id says what (backfill-…-more, -recheck)
        table.add_row(_t(w.id), kind, _t(w.tier), bar, str(n.get("done", 0)), str(n.get("running", 0)),
                      str(n.get("pending", 0) + n.get("queued", 0) + n.get("planned", 0)),
                      str(n.get("crash", 0) + n.get("timeout", 0)),
                      Text(str(held), style="yellow" if held else ""), str(w.cancelled), gpu, f"{w.dollars:.2f}")
    return table


def render_leaderboard_top(snap: FleetSnapshot, top: int = 10) -> RenderableType:
    """The best configurations by their mean over runs (one lucky run is not a best), with n."""
    by = f"val_bpb normalized to {snap.reference_accelerator}" if snap.sorted_by == "normalized" else "raw val_bpb"
    title = f"leaderboard top {top} — configurations by mean {by}"
    ranked = [c for c in snap.configs if c.rank is not None][:top]
    if not ranked:
        return Text.assemble(("leaderboard", "bold"), ": no finished experiments yet")
    table = Table(title=title, title_justify="left")
    for col, justify in (("#", "right"), ("config", "left"), ("n", "right"), ("val_bpb", "right"), ("± std", "right"),
                         ("normalized", "right"), ("accel", "left"), ("e.g.", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "config")
    for c in ranked:
        table.add_row(str(c.rank), _t((c.label or "(base)")[:48]), str(c.n), _num(c.val_bpb), _num(c.std),
                      _num(c.normalized), _t(", ".join(c.accelerators)), _t(c.experiments[0]))
    if snap.calibration:
        return Group(table, _t(snap.calibration, "dim"))
    return table


def render_crashes(snap: FleetSnapshot, limit: int = 5) -> RenderableType:
    if not snap.crashes:
        return Text.assemble(("recent crashes", "bold"), ": none")
    table = Table(title="recent crashes", title_justify="left")
    for col in ("experiment", "state", "accel", "when", "reason"):
        table.add_column(col, no_wrap=col != "reason")
    for c in snap.crashes[:limit]:
        table.add_row(_t(c.experiment), _t(c.state, "red"), _t(c.accelerator or "-"),
                      _ago(snap.taken_at, c.finished_at), _t(c.reason[:80] or "-"))
    return table


def render_footer(snap: FleetSnapshot) -> RenderableType:
    u = snap.utilization
    minutes = round(u.window_s / 60)
    shown = "-" if u.fraction is None else f"{100 * u.fraction:.0f}%"
    util = Text.assemble(("GPU utilization ", "bold"), f"(last {minutes} min, {round(u.bucket_s / 60)}-min buckets): ",
                         (shown, "bold"), "  ", (sparkline(u.buckets), "cyan"))
    lines: list[RenderableType] = [util]
    if snap.cost:
        spend = Text.assemble(("spend ", "bold"), describe_spend(snap.cost))
        cap = snap.cost.get("cap_gpu_hours")
        if cap and snap.cost["gpu_hours"] >= cap:
            spend.stylize("red")
        lines.append(spend)
    if snap.efficiency:
        lines.append(Text.assemble(("efficiency ", "bold"), snap.efficiency))
    held = sum(w.counts.get("held", 0) for w in snap.waves)
    if held:
        noun, them = ("experiment is", "it") if held == 1 else ("experiments are", "them")
        lines.append(Text(f"{held} {noun} held by a budget cap — `fleet release` runs {them}", style="yellow"))
    return Group(*lines)


def render_header(snap: FleetSnapshot) -> RenderableType:
    ctrl = ("running", "green") if snap.controller_running else ("stopped", "dim")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.taken_at))
    line = Text.assemble(("skyfleet", "bold"), f" · backend {plain(snap.backend)} · controller ", ctrl, f" · {when}")
    if snap.controller_error:
        line.append(" · ")
        line.append(plain(snap.controller_error), style="red")
    return line


def render_dashboard(snap: FleetSnapshot) -> RenderableType:
    """The whole dashboard for one snapshot: a pure function, so tests render it to a string."""
    return Group(render_header(snap), render_clusters(snap), render_waves(snap), render_leaderboard_top(snap),
                 render_crashes(snap), render_footer(snap))
