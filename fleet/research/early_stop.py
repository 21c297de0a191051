"""Progress-aligned early stopping, the decision: is this run clearly behind at the same point of its budget?

Every run of a wave trains for the same budget, so "25% in" means the same thing for each of them. At
each checkpoint `at` (a fraction of the budget), a run's training loss is compared with the wave's
baseline run at the same fraction (the mean over the baseline's runs), or, in a wave without a
baseline, with the median of its other runs there (at least `MIN_REFERENCE_RUNS` of them). A run
whose loss exceeds the reference by more than `margin` (training-loss units) is stopped and recorded
as pruned.

What this controls: the margin is the smallest gap at which stopping is worth its risk. Training loss
at a fixed fraction ranks configurations well *before* the learning rate starts to fall; from the
warmdown start on the schedule reshapes the loss (the failure of stopping "before the schedule comes
down"), so a run past its own warmdown start is never stopped, and the checkpoints themselves must
lie before the wave's earliest warmdown start (checked on submit, `search_checks`).

The loss at a fraction `f` is the mean of the run's logged points within `WINDOW` of `f` (per-step
loss is noisy), decided only once the run has passed `f + WINDOW`, so the value no longer changes;
with no point in the window, it is interpolated between the nearest points on either side.
"""
from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

WINDOW = 0.05  # fractions of the budget either side of a checkpoint averaged into its loss
MAX_GAP = 0.3  # interpolate only between points at most this far apart
MIN_REFERENCE_RUNS = 3  # a median needs at least this many other runs at the checkpoint

# `step 00120 loss 3.517 progress  25.0%` (this project's train.py) and
# `step 00120 (25.0%) | loss: 3.517 | ...` (autoresearch's, which ends lines with \r).
_LINES = (
    re.compile(r"step\s+\d+\s+loss\s+(?P<loss>\S+)\s+progress\s+(?P<progress>[0-9.]+)\s*%"),
    re.compile(r"step\s+\d+\s+\((?P<progress>[0-9.]+)\s*%\)\s*\|\s*loss:\s*(?P<loss>\S+)"),
)


@dataclass(frozen=True)
class Point:
    progress: float  # fraction of the budget, 0..1
    loss: float


@dataclass(frozen=True)
class Prune:
    """The decision to stop a run, with what it rests on."""

    at: float  # the checkpoint
    loss: float  # the run's loss there
    reference: float  # the baseline's (or median) loss there
    against: str  # "baseline" | "median of N runs"
    last_loss: float
    last_progress: float

    @property
    def reason(self) -> str:
        return (f"pruned at {self.at:.0%} of its budget: training loss {self.loss:.4f} trails the {self.against} "
                f"({self.reference:.4f}) by {self.loss - self.reference:.4f}; last loss {self.last_loss:.4f} at "
                f"{self.last_progress:.0%}")


def parse_curve(text: str) -> list[Point]:
    """The (progress, loss) points a log shows, in order; lines that are not loss lines (or whose loss is not
    a finite number) are skipped."""
    out = []
    for line in re.split(r"[\r\n]+", text):
        for pattern in _LINES:
            match = pattern.search(line)
            if match is None:
                continue
            try:
                loss, progress = float(match["loss"]), float(match["progress"]) / 100
            except ValueError:
                break
            if math.isfinite(loss) and math.isfinite(progress) and 0 <= progress <= 1.5:
                out.append(Point(min(progress, 1.0), loss))
            break
    return out


def merge(known: Sequence[Point], new: Iterable[Point]) -> list[Point]:
    """Points seen in earlier cycles plus those of the latest tail, one per progress value, in order."""
    by_progress = {p.progress: p for p in known}
    by_progress.update({p.progress: p for p in new})
    return [by_progress[k] for k in sorted(by_progress)]


def loss_at(curve: Sequence[Point], fraction: float, finished: bool = False) -> float | None:
    """The run's loss at `fraction`, or None until it has passed `fraction + WINDOW` (or finished)."""
    if not curve or (not finished and curve[-1].progress < fraction + WINDOW):
        return None
    near = [p.loss for p in curve if abs(p.progress - fraction) <= WINDOW]
    if near:
        return sum(near) / len(near)
    below = [p for p in curve if p.progress < fraction]
    above = [p for p in curve if p.progress > fraction]
    if not below or not above:
        return None
    a, b = below[-1], above[0]
    if b.progress - a.progress > MAX_GAP:
        return None
    return a.loss + (b.loss - a.loss) * (fraction - a.progress) / (b.progress - a.progress)


@dataclass(frozen=True)
class Curve:
    points: tuple[Point, ...]
    finished: bool = False  # the run ended (its whole log is known)

    def at(self, fraction: float) -> float | None:
        return loss_at(self.points, fraction, self.finished)


def reference_at(fraction: float, baseline: Sequence[Curve], others: Sequence[Curve]) -> tuple[float, str] | None:
    """(the loss a run is compared with at `fraction`, what it is), or None when there is none yet."""
    if baseline:
        values = [v for v in (c.at(fraction) for c in baseline) if v is not None]
        return (sum(values) / len(values), "baseline") if values else None
    values = [v for v in (c.at(fraction) for c in others) if v is not None]
    if len(values) < MIN_REFERENCE_RUNS:
        return None
    return statistics.median(values), f"median of {len(values)} runs"


def judge(run: Curve, at: Sequence[float], margin: float, warmdown_start: float,
          baseline: Sequence[Curve], others: Sequence[Curve]) -> Prune | None:
    """Stop `run`? Only while it is before its own warmdown start, at a checkpoint before it, when the
    run trails the reference there by more than `margin`."""
    if not run.points or run.finished:
        return None
    last = run.points[-1]
    if last.progress >= warmdown_start:
        return None  # the schedule is coming down: never stop a run there
    for fraction in at:
        if fraction >= warmdown_start:
            break
        loss = run.at(fraction)
        reference = reference_at(fraction, baseline, others) if loss is not None else None
        if reference is None:
            continue
        value, against = reference
        if loss > value + margin:
            return Prune(fraction, loss, value, against, last.loss, last.progress)
    return None


def warmdown_start(config: Mapping[str, str], default_ratio: float | None) -> float:
    """Where a run's warmdown starts (a fraction of its budget): 1 - its WARMDOWN_RATIO; 1.0 when unknown."""
    try:
        ratio = float(config["WARMDOWN_RATIO"])
    except (KeyError, ValueError):
        ratio = default_ratio
    return 1.0 if ratio is None else 1.0 - ratio


__all__ = ["Curve", "Point", "Prune", "judge", "loss_at", "merge", "parse_curve", "reference_at", "warmdown_start"]
