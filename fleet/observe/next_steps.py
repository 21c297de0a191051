"""What an agent should do next: the fleet's state and its next actions, with real ids (pure).

`fleet next` gathers a `LoopState` from the ledger (`fleet.cli.next_cmds`); `next_actions` turns it
into actions, most urgent first, each with the exact command that follows from the state:

1. **read** — finished promote, re-check and ablation waves whose verdict nobody has read (and seeded
   grid waves with a baseline, which `fleet verdict` judges on their own seed pairs);
2. **adopt** — `keep` verdicts not adopted yet (a re-check's keep confirms, it is not adopted). Both
   take seconds and decide what the next wave should be (its ideas build on the adopted code), so
   they come before filling the clusters, which comes right after them.
3. **fill** — clusters idle, or running dry within the horizon once the pending work is placed
   (backfill does not count: it yields), so queue work for them (GPUs waiting cost the most). The
   filler is a finished screen not yet promoted, when the validation tier can use those clusters,
   else a new wave the agent writes: `fleet wave waves/NNN-next.yaml` names a file that does not
   exist yet, the one thing the agent supplies.
4. **promote** — finished screens with candidates and no promotion yet.
5. **recheck** — three or more changes adopted since the last re-check; **ablate** — a re-check
   that did not confirm the current best.
6. **continue** — inconclusive candidates that promise a gain (backfill does this too when clusters
   would idle; the agent may do it on purpose).
7. **wait** — work in flight: `fleet wait --until-idle` returns when a cluster is about to run dry.
8. **start** — nothing submitted yet: the first wave is the baseline on several seeds.

Every id an action names is one of the state's waves or experiments (`Action.ids`), so a test can
check that the suggestions always name existing things.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from fleet.core.wave_spec import VARIANT_KEYS
from fleet.research.promote import pairs_to_settle, promising

SCREEN_KINDS = ("grid", "search")  # waves that screen ideas: their best are promoted
RECHECK_EVERY = 3  # adopted changes between re-checks of the current best against the original baseline
HORIZON_S = 300.0  # a cluster that runs dry within this is "soon idle"


@dataclass(frozen=True)
class ClusterView:
    name: str
    accelerator: str
    state: str  # up | provisioning | lost | down
    depth: int  # the fleet's jobs queued or running there
    dry_in_s: float | None  # seconds until it has nothing left to run (None: not up)
    replaces: str | None = None
    eligible_tiers: tuple[str, ...] = ()  # the tiers whose work it may run


@dataclass(frozen=True)
class CandidateView:
    experiment: str | None
    label: str
    verdict: str  # keep | discard | inconclusive | need_more
    gain: float | None  # baseline − candidate (> 0 better)
    n: int
    pairs_for_power: int | None
    code: str | None  # the code it ran (adoption is of a code and configuration)
    config_key: str
    changes: dict[str, str | None]  # knob -> value vs its baseline
    flagged: int = 0  # seed pairs whose step counts differ by more than the threshold


@dataclass(frozen=True)
class WaveView:
    id: str
    kind: str  # grid | promote | ablate | calibrate | ...
    tier: str
    track: str
    backfill: bool
    parent: str | None
    total: int
    unfinished: int  # planned (a search's trials to choose), pending, queued or running
    done: int
    failed: int  # crash or timeout
    cancelled: int
    held: int
    eta_s: float | None  # seconds until its last run ends (None: nothing left; inf: no cluster can run it)
    complete: bool  # finished, and (validation) no candidate still needs pairs
    read: bool  # its verdict was shown (`fleet verdict` / `fleet ablation`)
    recheck: bool = False
    candidates: tuple[CandidateView, ...] = ()  # validation waves: each candidate's verdict
    ablation_drop: tuple[str, ...] = ()  # ablate waves: changes shown not to pull their weight
    promotable: bool = False  # a grid wave with a finished configuration other than its baseline
    created_at: float = 0.0
    subject: str | None = None  # ablate waves: the experiment ablated
    code_at: float | None = None  # when the code its candidates start from was taken (its source screen's submission)
    screen_gain: float | None = None  # grid waves: its baseline's mean − its best other configuration's mean


@dataclass(frozen=True)
class ConfigView:
    label: str
    mean: float
    std: float | None
    n: int
    experiment: str
    code: str
    config_key: str


@dataclass(frozen=True)
class Adopted:
    experiment: str
    at: float
    code: str | None
    config_key: str | None
    preset: str | None
    knobs: tuple[str, ...] = ()  # the knob defaults it wrote


@dataclass(frozen=True)
class Budget:
    spent_gpu_hours: float
    cap_gpu_hours: float | None
    left_gpu_hours: float | None  # cap − spent − committed (None: no cap)
    backfill_enabled: bool
    backfill_spent: float
    backfill_cap: float


@dataclass(frozen=True)
class AdoptTarget:
    """What `fleet adopt` of a kept experiment would write: its knob values as defaults of a preset."""

    experiment: str
    script: str  # e.g. train/train.py
    preset: str | None  # env knobs: the preset whose defaults change; None: constants (or unknown)
    knobs: str  # "env" | "constants"


@dataclass(frozen=True)
class LoopState:
    clusters: tuple[ClusterView, ...]
    waves: tuple[WaveView, ...]  # in submission order
    queue_depth: int
    best: ConfigView | None
    baseline: ConfigView | None  # the committed baseline: the `baseline` configuration on the latest code a screen ran
    baseline_code_at: float | None  # when that baseline's code was taken (its screen's submission), not when it ran
    adopted: tuple[Adopted, ...]
    budget: Budget
    adopt_targets: dict[str, AdoptTarget] = field(default_factory=dict)
    validate_tier: str = "validate"
    screen_tier: str = "screen"
    controller_error: str | None = None
    horizon_s: float = HORIZON_S
    next_wave_file: str = "waves/001-baseline.yaml"
    track: str | None = None


@dataclass(frozen=True)
class Action:
    kind: str
    command: str
    why: str
    ids: tuple[str, ...] = ()  # waves and experiments the command names (all exist)
    fills: int = 0  # experiments it would queue for idle or soon-idle clusters


@dataclass(frozen=True)
class NextReport:
    actions: tuple[Action, ...]
    warnings: tuple[str, ...]
    idle: tuple[str, ...]  # clusters idle or running dry within the horizon with nothing pending for them
    free_slots: int  # experiments that would fill them

    def as_dict(self) -> dict:
        return asdict(self)


# ---- the rules ----------------------------------------------------------------------------------------


def starving(state: LoopState) -> tuple[list[ClusterView], int]:
    """Clusters idle, or running dry within the horizon once the pending work is placed (`dry_in_s`, backfill
    not counted: it yields to any work), and the experiments that would keep them busy: a full queue each."""
    out = [c for c in state.clusters if c.state == "up" and c.dry_in_s is not None and c.dry_in_s <= state.horizon_s]
    return out, state.queue_depth * len(out)


def _promotable(state: LoopState) -> list[WaveView]:
    """Finished screens with a configuration besides the baseline that beat it, and no promotion yet, the most
    promising first (the largest gain of their best configuration over their baseline; unknown last)."""
    promoted = {w.parent for w in state.waves if w.kind == "promote" and not w.recheck and not w.backfill}
    # a screen whose best did not beat its baseline has nothing to validate (its ideas stay `screened`)
    found = [w for w in state.waves if w.kind in SCREEN_KINDS and not w.backfill and w.promotable and not w.unfinished
             and w.id not in promoted and (w.screen_gain is None or w.screen_gain > 0)]
    return sorted(found, key=lambda w: (w.screen_gain is None, -(w.screen_gain or 0.0), -w.created_at))


def _fill(state: LoopState, idle: Sequence[ClusterView], slots: int) -> Action:
    names = ", ".join(c.name for c in idle)
    why = f"{len(idle)} cluster(s) idle or running dry within {state.horizon_s / 60:.0f} min ({names}): what is " \
          f"queued for them ends by then"
    screens = _promotable(state)
    can_validate = any(state.validate_tier in c.eligible_tiers for c in idle)
    if screens and can_validate:
        s = screens[0]
        gain = f" (its best beat its baseline by {s.screen_gain:.4f} on the screen)" if s.screen_gain else ""
        return Action("fill", f"fleet promote {s.id}",
                      f"{why}: validate the best of {s.id}, which has no promotion yet{gain}", (s.id,), slots)
    return Action("fill", f"fleet wave {state.next_wave_file}",
                  f"{why}: write {state.next_wave_file} with at least {max(slots, 1)} experiments (include "
                  "`{description: baseline}`) and submit it", (), slots)


def knob_writes(changes: dict[str, str | None]) -> tuple[str, str]:
    """What adopting a change writes, in words: its knob values (``A=1 B=2``), and its code change
    (``patch gelu-mlp.diff``; a code variant is merged, not written as a knob; "" when none)."""
    knobs = " ".join(f"{k}={v}" for k, v in changes.items() if v is not None and k not in VARIANT_KEYS)
    code = ", ".join(f"{k} {v.split('@')[0] if k == 'patch' else v}" for k, v in changes.items()
                     if v is not None and k in VARIANT_KEYS)
    return knobs, code


def _adopt_why(c: CandidateView, wave: WaveView, target: AdoptTarget | None) -> str:
    knobs, code = knob_writes(c.changes)
    merges = f"merges its code change ({code})" if code else "merges its code change"
    if not knobs:
        gain = f", gain {c.gain:.4f} over {c.n} pairs" if c.gain is not None else ""
        return f"{c.label} is kept in {wave.id}{gain}: it {merges}"
    where = ""
    if target is not None:
        if target.knobs == "env" and target.preset:
            where = f" as the defaults of preset `{target.preset}` in {target.script}"
        elif target.knobs == "env":
            where = f" as Knob(...) defaults in {target.script} (the preset it ran with is unknown: pass --preset)"
        else:
            where = f" as the constants' values in {target.script}"
    gain = f", gain {c.gain:.4f} over {c.n} pairs" if c.gain is not None else ""
    return f"{c.label} is kept in {wave.id}{gain}: it writes {knobs}{where} and {merges}"


def _adopted(state: LoopState, c: CandidateView) -> bool:
    return any(a.experiment == c.experiment or (a.code == c.code and a.config_key == c.config_key)
               for a in state.adopted)


@dataclass(frozen=True)
class AdoptDecision:
    """Whether one kept candidate is to adopt, and if not, why (the `fleet next` action and the verdict's hint)."""

    candidate: CandidateView
    wave: WaveView
    why_not: str | None = None  # None: adopt it
    instead: str | None = None  # the keep adopted in its place (a larger keep of the same knob)


def adopt_decisions(state: LoopState) -> list[AdoptDecision]:
    """Every keep of a promote or seeded grid wave (not a re-check), validated ones first, then the largest gain:
    to adopt unless already adopted, or changing a knob that a larger keep changes too, or that an adoption
    changed since their code was taken (they were judged against the code before it, and adopt would refuse
    the conflicting merge; two keeps of one knob cannot both be the default)."""
    keeps = [(c, w) for w in state.waves if w.kind in ("promote", "grid") and not w.recheck for c in w.candidates
             if c.verdict == "keep" and c.experiment]
    out: list[AdoptDecision] = []
    claimed: dict[str, str] = {}  # knob -> the keep to adopt that changes it
    seen: dict[tuple[str | None, str], str] = {}
    # validated keeps (promote waves, on the validate tier with more pairs) before a seeded screen's keeps of the
    # same idea; within each, the largest gain first
    for c, w in sorted(keeps, key=lambda cw: (cw[1].kind != "promote", -(cw[0].gain or 0.0), cw[1].id,
                                              cw[0].config_key)):
        if _adopted(state, c):
            out.append(AdoptDecision(c, w, "adopted already"))
            continue
        knobs = set(c.changes)
        taken = w.code_at if w.code_at is not None else w.created_at
        later = sorted({k for a in state.adopted if a.at > taken for k in a.knobs} & knobs)
        if (c.code, c.config_key) in seen:
            out.append(AdoptDecision(c, w, f"the same configuration as {seen[(c.code, c.config_key)]}",
                                     seen[(c.code, c.config_key)]))
        elif later:
            out.append(AdoptDecision(c, w, f"judged against code before the adoption of {', '.join(later)}: "
                                           "re-screen it on the current code"))
        elif knobs & claimed.keys():
            other = claimed[sorted(knobs & claimed.keys())[0]]
            out.append(AdoptDecision(c, w, f"{other}, a larger keep, changes {', '.join(sorted(knobs & claimed.keys()))} "
                                           "too", other))
        else:
            seen[(c.code, c.config_key)] = c.experiment or ""
            claimed.update({k: c.experiment or "" for k in knobs})
            out.append(AdoptDecision(c, w))
    return out


def adoptable(state: LoopState) -> list[tuple[CandidateView, WaveView]]:
    """Kept candidates worth adopting (`adopt_decisions` without a reason not to), in its order."""
    return [(d.candidate, d.wave) for d in adopt_decisions(state) if d.why_not is None]


def unread(state: LoopState) -> list[WaveView]:
    """Finished waves with a verdict nobody has read: promote and re-check waves, seeded grids (judged on
    their own pairs), ablations."""
    return [w for w in state.waves if w.complete and not w.read and
            ((w.kind in ("promote", "grid") and w.candidates) or w.kind == "ablate")]


def next_actions(state: LoopState) -> NextReport:
    actions: list[Action] = []
    for w in unread(state):
        if w.kind in ("promote", "grid"):
            what = "re-check verdict is" if w.recheck else "verdicts are"
            decided = sum(c.verdict in ("keep", "discard") for c in w.candidates)
            actions.append(Action("read", f"fleet verdict {w.id}",
                                  f"{w.id} finished{' (backfill)' if w.backfill else ''}: its {what} unread "
                                  f"({decided} of {len(w.candidates)} candidates decided)", (w.id,)))
        else:
            actions.append(Action("read", f"fleet ablation {w.id}", f"{w.id} finished: its ablation is unread", (w.id,)))
    for c, w in adoptable(state):
        actions.append(Action("adopt", f"fleet adopt {c.experiment}",
                              _adopt_why(c, w, state.adopt_targets.get(c.experiment or "")), (c.experiment, w.id)))
    idle, slots = starving(state)
    has_waves = any(not w.backfill for w in state.waves)
    if idle and has_waves:
        actions.append(_fill(state, idle, slots))
    filled_by = {a.ids[0] for a in actions if a.kind == "fill" and a.ids}
    for s in _promotable(state):
        if s.id not in filled_by:
            actions.append(Action("promote", f"fleet promote {s.id}",
                                  f"{s.id} finished and has no promotion: validate its best against its baseline", (s.id,)))
    actions += _recheck_or_ablate(state)
    actions += _continuations(state)
    in_flight = [w for w in state.waves if w.unfinished and not w.backfill]
    if in_flight:
        etas = ", ".join(f"{w.id} {w.total - w.unfinished}/{w.total}{_eta(w.eta_s)}" for w in in_flight)
        soonest = min((c.dry_in_s for c in state.clusters if c.dry_in_s is not None), default=None)
        actions.append(Action("wait", f"fleet wait --until-idle {state.horizon_s / 60:g}",
                              f"in flight: {etas}; returns when a cluster is about to run dry"
                              + ("" if soonest is None else " (the first in under a minute)" if soonest < 60
                                 else f" (the first in about {soonest / 60:.0f} min)"),
                              tuple(w.id for w in in_flight)))
    if not has_waves:
        actions.append(Action("start", f"fleet wave {state.next_wave_file}",
                              f"nothing has run yet: write {state.next_wave_file} with "
                              "`experiments: [{description: baseline}]` and `seeds: 3` (the noise, first) plus your "
                              "first ideas, and submit it"))
    return NextReport(tuple(actions), tuple(warnings(state)), tuple(c.name for c in idle), slots if idle else 0)


def _eta(eta_s: float | None) -> str:
    if eta_s is None:
        return ""
    if math.isinf(eta_s):
        return " (no cluster can run its tier)"
    return f" (ends in {eta_text(eta_s)})"


def eta_text(eta_s: float) -> str:
    """`~40 s` under a minute (a CPU run's), `~3 min` beyond."""
    return f"~{max(1, round(eta_s))} s" if eta_s < 60 else f"~{round(eta_s / 60)} min"


def _recheck_or_ablate(state: LoopState) -> list[Action]:
    out = []
    rechecks = [w for w in state.waves if w.kind == "promote" and w.recheck]
    last = max((w.created_at for w in rechecks), default=float("-inf"))
    since = [a for a in state.adopted if a.at > last]
    if len(since) >= RECHECK_EVERY and not any(w.unfinished for w in rechecks):
        out.append(Action("recheck", "fleet recheck",
                          f"{len(since)} changes adopted since the last re-check: re-run the current best against the "
                          "original baseline on fresh seeds (several keeps each carry some luck)"))
    if rechecks:
        latest = max(rechecks, key=lambda w: (w.created_at, w.id))
        best = latest.candidates[0] if latest.candidates else None
        # a re-check that showed nothing because it was cut short (runs cancelled, undecided) is no reason
        # to take the best apart: only one that ran to its end and did not confirm it is
        cut_short = latest.cancelled > 0 and best is not None and best.verdict != "discard"
        if latest.complete and cut_short and not any(a.kind == "recheck" for a in out):
            out.append(Action("recheck", "fleet recheck",
                              f"the re-check {latest.id} was cut short ({latest.cancelled} runs cancelled) before it "
                              "decided: run it again", (latest.id,)))
        if latest.complete and best is not None and best.verdict != "keep" and best.experiment and not cut_short:
            ablated = any(w.kind == "ablate" and w.created_at > latest.created_at for w in state.waves)
            if not ablated:
                out.append(Action("ablate", f"fleet ablate {best.experiment}",
                                  f"the re-check {latest.id} did not show the current best better than the original "
                                  "baseline: see which of its changes still help", (best.experiment, latest.id)))
    return out


def _continuations(state: LoopState) -> list[Action]:
    later: dict[str, set[tuple[str | None, str]]] = {}
    for w in state.waves:
        if w.kind == "promote":
            later[w.id] = {(c.code, c.config_key) for c in w.candidates}
    out = []
    for i, w in enumerate(state.waves):
        if w.kind != "promote" or w.recheck or not w.complete:
            continue
        following = set().union(*(later[v.id] for v in state.waves[i + 1:] if v.id in later)) if later else set()
        stuck = [c for c in w.candidates if promising(c.verdict, c.gain) and (c.code, c.config_key) not in following]
        add = pairs_to_settle((c.n, c.pairs_for_power) for c in stuck)
        if add is None:
            continue  # none, or a gain of min_effect would take more pairs than it is worth at this noise
        labels = ", ".join(c.label for c in stuck)
        note = " (backfill does this by itself when clusters would idle)" if state.budget.backfill_enabled else ""
        out.append(Action("continue", f"fleet promote {w.id} --add-seeds {add}",
                          f"{labels} of {w.id} inconclusive with a positive estimated gain: {add} more seed pairs"
                          f"{note}", (w.id,)))
    return out


def adopted_since_baseline(state: LoopState) -> list[Adopted]:
    """Adoptions the committed baseline's code does not have: made after its screen took the code. A baseline
    that finishes after an adoption but was queued before it (or a promotion's baseline, which reuses its
    screen's code) still runs the old code, so its finish time says nothing."""
    if state.baseline_code_at is None:
        return []
    return [a for a in state.adopted if a.at > state.baseline_code_at]


def warnings(state: LoopState) -> list[str]:
    out = []
    if state.controller_error:
        out.append(f"controller: {state.controller_error}")
    after = adopted_since_baseline(state)
    if after:
        out.append(f"stale baseline: {len(after)} change(s) adopted since the baseline's code was taken "
                   f"(latest {after[-1].experiment}); include `{{description: baseline}}` (committed, if not yet) in the "
                   "next wave so its candidates are compared with the new code")
    noisy = [(w, c) for w in state.waves if w.kind == "promote" for c in w.candidates if c.flagged]
    if noisy:
        pairs = sum(c.flagged for _, c in noisy)
        waves = ", ".join(dict.fromkeys(w.id for w, _ in noisy))
        out.append(f"noisy step counts: {pairs} seed pair(s) in {waves} ran a different number of steps than their "
                   "configurations usually do (a slow node, contention); their verdicts say so in `flagged_seeds`")
    lost = [c for c in state.clusters if c.state == "lost"]
    replaced = {c.replaces for c in state.clusters if c.replaces}
    for c in lost:
        if c.name in replaced:
            by = next(r.name for r in state.clusters if r.replaces == c.name)
            out.append(f"cluster {c.name} was lost; {by} replaces it")
        else:
            out.append(f"cluster {c.name} was lost and is not replaced (`fleet up` adds clusters)")
    held = sum(w.held for w in state.waves)
    if held:
        out.append(f"{held} experiment(s) held by a budget cap: `fleet release` runs them")
    b = state.budget
    if b.left_gpu_hours is not None and b.cap_gpu_hours and b.left_gpu_hours < 0.1 * b.cap_gpu_hours:
        out.append(f"budget: {max(b.left_gpu_hours, 0.0):.2f} of {b.cap_gpu_hours:g} GPU-hours left")
    stranded = [w for w in state.waves if w.unfinished and w.eta_s is not None and math.isinf(w.eta_s)]
    for w in stranded:
        out.append(f"{w.id} waits for hardware its tier {w.tier} needs and no cluster up has")
    return out


__all__ = ["Action", "AdoptDecision", "adopt_decisions", "Adopted", "knob_writes", "adopted_since_baseline", "AdoptTarget", "adoptable", "unread", "Budget", "CandidateView", "ClusterView", "ConfigView", "LoopState",
           "NextReport", "WaveView", "next_actions", "starving", "warnings"]
