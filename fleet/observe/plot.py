"""`fleet plot`: val_bpb of every finished experiment, the running best, crashes and promotions.

The running best is the best *configuration* so far by its mean over the runs finished by then (its
label says n): one lucky run is not a best, and a leader whose next seed is worse can fall back.

`plot_data` is pure (ledger rows in, points out) and tested without matplotlib; `render_png` draws
it with matplotlib's Agg canvas (no pyplot, no display, no global backend switch). matplotlib is
the optional `plot` extra, imported only here and only when drawing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.core.ledger_rows import ExperimentRow, ResultRow
from fleet.errors import FleetError
from fleet.plain_text import plain
from fleet.types import ExperimentState

MISSING_MATPLOTLIB = ("plotting needs matplotlib, which is not installed; install the plot extra: "
                      "pip install 'skyfleet[plot]'")
ACCELERATOR_STYLE = {"H100": ("tab:blue", "o"), "H200": ("tab:orange", "s"), "cpu": ("tab:gray", "o")}
OTHER_STYLES = [("tab:green", "D"), ("tab:purple", "^"), ("tab:brown", "v"), ("tab:pink", "P"), ("tab:olive", "X")]
MAX_BEST_LABELS = 8  # label only the last few improvements of the running best, or the plot is unreadable


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    experiment: str
    accelerator: str
    label: str
    promoted: bool = False  # ran in a promote (validation) wave
    verdict: str | None = None  # keep / discard / inconclusive of its configuration, when judged


@dataclass(frozen=True)
class PlotData:
    points: tuple[Point, ...]
    crashes: tuple[tuple[float, str], ...]  # (x, experiment) of crashed, timed-out or pruned experiments
    best: tuple[tuple[float, float, str], ...]  # the best configuration's mean after each change: (x, y, label)
    x_end: float  # the last finished experiment's x (the step line runs to it)
    xlabel: str
    ylabel: str
    title: str
    skipped: int = 0  # finished runs without a value to plot (no normalized value for their hardware)


def plot_data(
    experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow], *,
    normalized: Mapping[str, float | None] | None = None, promoted: frozenset[str] = frozenset(),
    verdicts: Mapping[str, str] | None = None, x: str = "order", origin: float | None = None,
) -> PlotData:
    """Finished experiments in the order they finished; `x` is "order" (1, 2, ...), "time" (minutes) or
    "gpu_hours" (GPU-hours spent by then: the running best is the frontier, the best found per GPU-hour).

    With `normalized`, y is the hardware-normalized val_bpb and runs without one are skipped (and
    counted). `promoted` are experiment ids of promote waves; `verdicts` maps experiment id to its
    configuration's verdict.
    """
    if x not in ("order", "time", "gpu_hours"):
        raise ValueError(f"x must be 'order', 'time' or 'gpu_hours', not {x!r}")
    verdicts = verdicts or {}
    finished = sorted((e for e in experiments if e.state.finished and e.state != ExperimentState.CANCELLED),
                      key=lambda e: (e.finished_at or 0.0, e.id))
    if origin is None:
        origin = min((e.created_at for e in experiments), default=0.0)

    spent, total = {}, 0.0  # GPU-hours by the time each finished run ended, every run counted
    for exp in finished:
        res = results.get(exp.id)
        total += max(0.0, (res.gpu_seconds or 0.0) if res else 0.0) / 3600
        spent[exp.id] = total

    def x_of(i: int, exp: ExperimentRow) -> float:
        if x == "gpu_hours":
            return spent[exp.id]
        return float(i) if x == "order" else ((exp.finished_at or origin) - origin) / 60

    points, crashes, best, skipped = [], [], [], 0
    by_config: dict[tuple[str, str], list[float]] = {}
    labels: dict[tuple[str, str], str] = {}
    for i, exp in enumerate(finished, start=1):
        res = results.get(exp.id)
        if exp.state != ExperimentState.DONE or res is None or res.val_bpb is None:
            crashes.append((x_of(i, exp), exp.id))
            continue
        y = res.val_bpb if normalized is None else normalized.get(exp.id)
        if y is None or not math.isfinite(y):
            skipped += 1
            continue
        label = exp.label or exp.description or "base"
        point = Point(x_of(i, exp), float(y), exp.id, res.accelerator or "unknown", label,
                      exp.id in promoted, verdicts.get(exp.id))
        points.append(point)
        by_config.setdefault((exp.code, exp.config_key), []).append(float(y))
        labels.setdefault((exp.code, exp.config_key), label)
        key, values = min(by_config.items(), key=lambda kv: (sum(kv[1]) / len(kv[1]), kv[0]))
        mean = sum(values) / len(values)
        leader = f"{labels[key]} (n={len(values)})"
        if not best or best[-1][1] != mean or best[-1][2] != leader:
            best.append((point.x, mean, leader))
    metric = "val_bpb" if normalized is None else "normalized val_bpb"
    x_end = x_of(len(finished), finished[-1]) if finished else 0.0
    title = f"{metric} of {len(finished)} finished experiments"
    if best:
        title += f" — best {best[-1][1]:.4f}"
    xlabel = {"order": "experiment (in the order they finished)", "time": "minutes since the first wave",
              "gpu_hours": "GPU-hours spent (every finished run counted)"}[x]
    return PlotData(tuple(points), tuple(crashes), tuple(best), x_end, xlabel, metric + " (lower is better)", title,
                    skipped)


def _styles(accelerators: Sequence[str]) -> dict[str, tuple[str, str]]:
    out, others = {}, iter(OTHER_STYLES * 4)
    for acc in accelerators:
        out[acc] = ACCELERATOR_STYLE.get(acc) or next(others)
    return out


def _y_range(values: Sequence[float]) -> tuple[float, float]:
    """The range shown: every value, unless a few diverged runs would squash the rest flat."""
    lo, hi = min(values), max(values)
    ordered = sorted(values)
    q90 = ordered[int(0.9 * (len(ordered) - 1))]
    if len(values) >= 5 and hi - lo > 4 * (q90 - lo) > 0:
        hi = q90 + 1.0 * (q90 - lo)
    return lo, hi


@dataclass(frozen=True)
class Box:
    """A label's extent in display pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    def shifted(self, dy: float) -> Box:
        return Box(self.x0, self.y0 + dy, self.x1, self.y1 + dy)

    def overlaps(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


def place_labels(boxes: Sequence[Box], obstacles: Sequence[Box] = (), bounds: Box | None = None,
                 tries: int = 24) -> list[float]:
    """Vertical shifts (pixels) so that no label overlaps another or an obstacle (the plotted points) or leaves
    `bounds` (the axes): each, in order, keeps its place if it is clear, else moves up or down by half its
    height, a step at a time, alternating, to the nearest clear place; with none clear within `tries`
    steps, to the place with the fewest overlaps."""
    placed: list[Box] = list(obstacles)
    out = []

    def outside(b: Box) -> bool:
        return bounds is not None and (b.y0 < bounds.y0 or b.y1 > bounds.y1)

    for box in boxes:
        step = max(box.y1 - box.y0, 1.0) / 2
        shifts = [0.0] + [sign * k * step for k in range(1, tries // 2 + 1) for sign in (1, -1)]
        chosen = min(shifts, key=lambda dy: (outside(box.shifted(dy)), sum(box.shifted(dy).overlaps(p) for p in placed),
                                             abs(dy)))
        placed.append(box.shifted(chosen))
        out.append(chosen)
    return out


@dataclass(frozen=True)
class _Label:
    text: str
    anchor: tuple[float, float]  # data coordinates
    offset: tuple[float, float]  # points
    fontsize: float
    right: bool  # the text ends at the offset point (else starts there)
    style: dict


def _draw_labels(fig, ax, labels: Sequence[_Label], points: Sequence[tuple[float, float]], dpi: int) -> None:
    """Annotate without overlaps: the layout is fixed first (one draw), then each label's box is placed
    clear of the others and of the plotted points."""
    if not labels:
        return
    fig.canvas.draw()
    px = dpi / 72.0
    marker = 6 * px
    obstacles = [Box(x - marker, y - marker, x + marker, y + marker)
                 for x, y in (ax.transData.transform(p) for p in points)]
    boxes = []
    for lab in labels:
        x, y = ax.transData.transform(lab.anchor)
        width, height = 0.62 * lab.fontsize * px * len(lab.text), 1.4 * lab.fontsize * px
        x0 = x + lab.offset[0] * px - (width if lab.right else 0.0)
        y0 = y + lab.offset[1] * px
        boxes.append(Box(x0, y0, x0 + width, y0 + height))
    frame = ax.bbox
    for lab, dy in zip(labels, place_labels(boxes, obstacles, Box(frame.x0, frame.y0, frame.x1, frame.y1))):
        ax.annotate(lab.text, lab.anchor, xytext=(lab.offset[0], lab.offset[1] + dy / px), textcoords="offset points",
                    fontsize=lab.fontsize, ha="right" if lab.right else "left", va="bottom", **lab.style)


def _literal(text: str) -> str:
    """User text as matplotlib shows it literally: no mathtext (`$...$`), no control characters."""
    return plain(text, replacement="?").replace("$", r"\$")


def render_png(data: PlotData, path: Path, dpi: int = 120) -> None:
    """Draw `data` to a PNG at `path` (about 1200 × 660 pixels)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise FleetError(MISSING_MATPLOTLIB) from None
    fig = Figure(figsize=(10, 5.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = [p.y for p in data.points]
    lo, hi = _y_range(ys) if ys else (0.0, 1.0)
    margin = max(0.06 * (hi - lo), 1e-3)
    top = hi + margin  # crashes and off-scale runs are drawn on this line
    styles = _styles(sorted({p.accelerator for p in data.points}))
    for acc, (color, marker) in styles.items():
        mine = [p for p in data.points if p.accelerator == acc]
        ax.scatter([p.x for p in mine], [min(p.y, top) for p in mine], s=28, c=color, marker=marker, alpha=0.75,
                   edgecolors="none", label=f"{acc} ({len(mine)})", zorder=3)
    promoted = [p for p in data.points if p.promoted]
    if promoted:
        ax.scatter([p.x for p in promoted], [min(p.y, top) for p in promoted], s=110, facecolors="none",
                   edgecolors="black", linewidths=1.2, label="promote wave", zorder=4)
    if data.best:
        xs = [b[0] for b in data.best] + [max(data.x_end, data.best[-1][0])]
        ys_best = [b[1] for b in data.best] + [data.best[-1][1]]
        ax.step(xs, ys_best, where="post", color="tab:green", linewidth=1.8, label="best configuration (mean)",
                zorder=2)

        def config(label: str) -> str:
            return label.rsplit(" (n=", 1)[0]

        shown = [b for i, b in enumerate(data.best) if i == 0 or config(b[2]) != config(data.best[i - 1][2])]
        labels = [_Label(_literal(label[:40]), (bx, by), (4, -13), 7, False, {"color": "tab:green"})
                  for bx, by, label in shown[-MAX_BEST_LABELS:]]
    else:
        labels = []
    kept = {}
    for p in data.points:
        if p.verdict == "keep" and (p.label not in kept or p.y < kept[p.label].y):
            kept[p.label] = p
    labels += [_Label(_literal(f"keep: {p.label[:36]}"), (p.x, min(p.y, top)), (-10, 20), 8, True,
                      {"fontweight": "bold", "arrowprops": {"arrowstyle": "-", "color": "black", "lw": 0.6}})
               for p in kept.values()]
    if data.crashes:
        ax.scatter([c[0] for c in data.crashes], [top] * len(data.crashes), marker="x", c="red", s=36,
                   label=f"no result: crash, timeout, pruned ({len(data.crashes)})", zorder=5)
    if any(p.y > top for p in data.points):
        ax.axhline(top, color="0.6", linewidth=0.6, linestyle=":")
        ax.text(0.995, top, "off scale ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=7, color="0.4")
    ax.set_ylim(lo - margin, top + margin)
    ax.set_xlabel(data.xlabel)
    ax.set_ylabel(data.ylabel)
    title = data.title + (f" ({data.skipped} without a normalized value not shown)" if data.skipped else "")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if data.points or data.crashes:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no finished experiments yet", transform=ax.transAxes, ha="center", va="center")
    _draw_labels(fig, ax, labels, [(p.x, min(p.y, top)) for p in data.points], dpi)  # last: the layout is final
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
