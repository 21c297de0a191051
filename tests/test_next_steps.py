"""`fleet next`'s decisions as tables: plain states in, actions (with real ids) and warnings out."""
from __future__ import annotations

from dataclasses import replace

import pytest

from fleet.cli.loop_state import _committed_baseline, _screen_gain
from fleet.cli.research_cmds import Advice, advice_from, verdict_hint
from fleet.core.ledger_rows import ExperimentRow, WaveRow
from fleet.observe.journal import BEGIN, END, merge, render_section, tried_ideas
from fleet.observe.next_steps import (
    Adopted,
    AdoptTarget,
    Budget,
    CandidateView,
    ClusterView,
    LoopState,
    WaveView,
    adopt_decisions,
    knob_writes,
    next_actions,
)
from fleet.types import ExperimentState

BUDGET = Budget(1.0, None, None, True, 0.0, 4.0)


def cluster(name="c1", depth=0, dry=0.0, state="up", tiers=("screen", "validate"), replaces=None):
    return ClusterView(name, "H100", state, depth, dry if state == "up" else None, replaces, tiers)


def wave(id, kind="grid", *, unfinished=0, total=4, complete=None, read=False, candidates=(), promotable=True,
         parent=None, recheck=False, backfill=False, eta=None, created=1.0, held=0):
    return WaveView(id, kind, "screen" if kind == "grid" else "validate", "", backfill, parent, total, unfinished,
                    total - unfinished, 0, 0, held, eta, unfinished == 0 if complete is None else complete, read, recheck,
                    tuple(candidates), (), promotable and kind == "grid", created)


def cand(exp, verdict="keep", gain=0.01, knobs=None, code="c0", key=None, n=3, power_pairs=None, flagged=0):
    return CandidateView(exp, f"label {exp}", verdict, gain, n, power_pairs, code, key or f"k-{exp}",
                         knobs if knobs is not None else {"MATRIX_LR": "0.05"}, flagged)


def state(clusters=(), waves=(), adopted=(), **kw):
    return LoopState(tuple(clusters), tuple(waves), 2, None, kw.pop("baseline", None), kw.pop("baseline_code_at", None), tuple(adopted),
                     kw.pop("budget", BUDGET), **kw)


def kinds(s):
    return [(a.kind, a.command) for a in next_actions(s).actions]


def ids_exist(s: LoopState) -> None:
    known = {w.id for w in s.waves} | {c.experiment for w in s.waves for c in w.candidates}
    for a in next_actions(s).actions:
        assert set(a.ids) <= known, (a, known)
        for token in a.command.split()[1:]:
            assert not token.isupper() or token.startswith("--"), f"placeholder in {a.command!r}"


def test_nothing_yet_starts_with_the_baseline():
    s = state(clusters=[cluster()])
    assert kinds(s) == [("start", "fleet wave waves/001-baseline.yaml")]
    assert "seeds: 3" in next_actions(s).actions[0].why


def test_idle_clusters_come_first_and_are_filled_by_the_unpromoted_screen():
    s = state(clusters=[cluster("c1"), cluster("c2", depth=1, dry=100.0), cluster("c3", depth=2, dry=900.0)],
              waves=[wave("s1")], next_wave_file="waves/004-next.yaml")
    report = next_actions(s)
    assert report.idle == ("c1", "c2") and report.free_slots == 4  # c3 is busy for 15 min
    assert kinds(s)[0] == ("fill", "fleet promote s1")
    assert report.actions[0].fills == 4 and report.actions[0].ids == ("s1",)
    # promoting it is not suggested a second time further down
    assert [k for k, _ in kinds(s)].count("promote") == 0
    ids_exist(s)


def test_idle_clusters_without_a_screen_to_promote_ask_for_a_new_wave():
    promoted = [wave("s1"), wave("s1-promote", "promote", parent="s1", read=True,
                                 candidates=[cand("s1-promote-002", "discard", gain=-0.01)])]
    s = state(clusters=[cluster()], waves=promoted, next_wave_file="waves/004-next.yaml")
    first = next_actions(s).actions[0]
    assert (first.kind, first.command) == ("fill", "fleet wave waves/004-next.yaml")
    assert "at least 2 experiments" in first.why and "baseline" in first.why
    # a screen the validation tier cannot run on these clusters does not fill them
    s2 = state(clusters=[cluster(tiers=("screen",))], waves=[wave("s1")], next_wave_file="waves/004-next.yaml")
    assert kinds(s2)[:2] == [("fill", "fleet wave waves/004-next.yaml"), ("promote", "fleet promote s1")]


def test_finished_verdicts_nobody_read_and_keeps_not_adopted():
    keep = cand("p-002", gain=0.02)
    waves = [wave("s1", promotable=False),
             wave("p", "promote", parent="s1", candidates=[keep, cand("p-003", "discard", gain=-0.01, knobs={"WD": "0.1"})]),
             wave("q", "promote", parent="s1", unfinished=2, complete=False, candidates=[cand("q-002", "need_more")],
                  created=2.0)]
    s = state(clusters=[cluster(depth=2, dry=900.0)], waves=waves,
              adopt_targets={"p-002": AdoptTarget("p-002", "train/train.py", "gpu", "env")})
    got = kinds(s)
    assert got[:2] == [("read", "fleet verdict p"), ("adopt", "fleet adopt p-002")]
    assert ("read", "fleet verdict q") not in got  # still running
    why = next_actions(s).actions[1].why
    assert "MATRIX_LR=0.05" in why and "preset `gpu`" in why and "train/train.py" in why
    assert got[-1][0] == "wait" and "q 2/4" in next_actions(s).actions[-1].why
    read = state(clusters=[cluster(depth=2, dry=900.0)], waves=[replace(waves[1], read=True), waves[2]])
    assert ("read", "fleet verdict p") not in kinds(read)
    ids_exist(s)


def test_two_keeps_of_one_knob_are_not_both_adopted():
    a, b = cand("p-002", gain=0.02), cand("p-003", gain=0.03, key="k3")
    other = cand("p-004", gain=0.01, knobs={"WEIGHT_DECAY": "0.1"})
    s = state(waves=[wave("s1", promotable=False), wave("p", "promote", read=True, candidates=[a, b, other])],
              clusters=[cluster(depth=2, dry=900.0)])
    assert [c for k, c in kinds(s) if k == "adopt"] == ["fleet adopt p-003", "fleet adopt p-004"]
    # once p-003 is adopted, p-002 (judged before it, same knob) is not suggested; p-004 still is
    done = Adopted("p-003", 5.0, "c0", "k3", "gpu", ("MATRIX_LR",))
    s2 = replace(s, adopted=(done,))
    assert [c for k, c in kinds(s2) if k == "adopt"] == ["fleet adopt p-004"]
    # a keep of the same knob from a wave made after the adoption is a new finding: it is suggested
    later = wave("p2", "promote", read=True, created=6.0, candidates=[cand("p2-002", gain=0.005, code="c1")])
    s3 = replace(s2, waves=s2.waves + (later,))
    assert "fleet adopt p2-002" in [c for k, c in kinds(s3) if k == "adopt"]


def test_each_keep_not_to_adopt_says_why_and_the_verdict_hint_follows_the_same_rule():
    """The verdict's adopt hint comes from `adopt_decisions`, the rule `fleet next` follows: no adopt hint for a
    keep adopted already, or judged against code an adoption of its knob changed since."""
    a, b = cand("p-002", gain=0.02), cand("p-003", gain=0.03, key="k3")
    other = cand("p-004", gain=0.01, knobs={"WEIGHT_DECAY": "0.1"})
    p = wave("p", "promote", read=True, candidates=[a, b, other], created=2.0)
    s = state(waves=[wave("s1", promotable=False), p])
    why = {d.candidate.experiment: (d.why_not, d.instead) for d in adopt_decisions(s)}
    assert why == {"p-003": (None, None), "p-004": (None, None),
                   "p-002": ("p-003, a larger keep, changes MATRIX_LR too", "p-003")}
    report = {"wave": "p", "unfinished": 0, "undecided": 0, "best_keep": "p-003", "candidates": []}

    # adopted already: the hint says so instead of suggesting adopt again; the next keep of the wave is offered
    s2 = replace(s, adopted=(Adopted("p-003", 5.0, "c0", "k3", "cpu", ("MATRIX_LR",)),))
    assert adopt_decisions(s2)[0].why_not == "adopted already"
    s3 = replace(s2, adopted=s2.adopted + (Adopted("p-004", 6.0, "c0", "k-p-004", "cpu", ("WEIGHT_DECAY",)),))
    hint = verdict_hint(report, _advice(s3, "p"))
    assert hint.startswith("p-003 is adopted already") and "fleet adopt" not in hint
    assert verdict_hint(report, _advice(s2, "p")).startswith("`fleet adopt p-004` keeps a winner not adopted yet")

    # an adoption of the same knob after the keep's code was taken: re-screen it, not adopt it
    u = cand("g-002", gain=0.02, knobs={"UNEMBEDDING_LR": "0.016", "patch": "gelu-mlp.diff@95dbea2c"}, code="c9")
    g = wave("g", "promote", read=True, candidates=[u], created=3.0)
    s4 = state(waves=[g], adopted=(Adopted("x-002", 4.0, "c1", "kx", "cpu", ("UNEMBEDDING_LR",)),))
    assert not [k for k, _ in kinds(s4) if k == "adopt"]
    hint = verdict_hint({**report, "wave": "g", "best_keep": "g-002"}, _advice(s4, "g"))
    assert hint == ("g-002 is kept but not to adopt: judged against code before the adoption of UNEMBEDDING_LR: "
                    "re-screen it on the current code")
    # not adopted yet, and no adoption since: adopt, the code variant named as a code change, not a knob
    why = next(a.why for a in next_actions(replace(s4, adopted=())).actions if a.kind == "adopt")
    assert "writes UNEMBEDDING_LR=0.016 " in why and "merges its code change (patch gelu-mlp.diff)" in why
    assert "patch=" not in why
    assert knob_writes({"patch": "gelu-mlp.diff@95dbea2c", "A": "1", "B": None}) == ("A=1", "patch gelu-mlp.diff")


def _advice(s: LoopState, wave_id: str) -> Advice:
    best = max((c for w in s.waves if w.id == wave_id for c in w.candidates), key=lambda c: c.gain or 0.0)
    return advice_from(adopt_decisions(s), wave_id, best.experiment)


def test_a_validated_keep_is_suggested_before_a_screens_larger_keep_of_the_same_knob():
    # the screen's keep (3 seed pairs) looks larger, as the best of a screen tends to; the promote wave's
    # keep was validated on more pairs: it is the one to adopt, and the screen's (same knob) is not offered
    screen = wave("s1", read=True, candidates=[cand("s1-003", gain=0.03, key="k-screen")])
    promote = wave("p", "promote", read=True, candidates=[cand("p-002", gain=0.01, n=12)])
    s = state(waves=[screen, promote], clusters=[cluster(depth=2, dry=900.0)])
    assert [c for k, c in kinds(s) if k == "adopt"] == ["fleet adopt p-002"]


def test_recheck_after_three_adoptions_and_ablate_when_it_does_not_confirm():
    adopted = tuple(Adopted(f"p-00{i}", 10.0 + i, "c0", f"k{i}", "gpu", (f"K{i}",)) for i in range(3))
    base = [wave("s1", promotable=False)]
    s = state(waves=base, adopted=adopted, clusters=[cluster(depth=2, dry=900.0)])
    assert ("recheck", "fleet recheck") in kinds(s)
    assert ("recheck", "fleet recheck") not in kinds(replace(s, adopted=adopted[:2]))
    failed = wave("r", "promote", recheck=True, read=True, created=20.0,
                  candidates=[cand("r-002", "inconclusive", gain=0.0001)])
    s2 = replace(s, waves=tuple(base) + (failed,))
    got = kinds(s2)
    assert ("recheck", "fleet recheck") not in got  # re-checked since those adoptions
    assert ("ablate", "fleet ablate r-002") in got
    ids_exist(s2)
    # cut short (runs cancelled) before it decided: no reason to take the best apart; run the re-check again
    cut = replace(failed, cancelled=3)
    got = kinds(replace(s, waves=tuple(base) + (cut,)))
    assert ("ablate", "fleet ablate r-002") not in got and ("recheck", "fleet recheck") in got


def test_inconclusive_candidates_that_promise_a_gain_can_be_continued():
    p = wave("p", "promote", read=True, candidates=[cand("p-002", "inconclusive", gain=0.001, n=16, power_pairs=40),
                                                   cand("p-003", "inconclusive", gain=-0.002, key="k3")])
    s = state(waves=[wave("s1", promotable=False), p], clusters=[cluster(depth=2, dry=900.0)])
    cont = [a for a in next_actions(s).actions if a.kind == "continue"]
    assert [a.command for a in cont] == ["fleet promote p --add-seeds 24"]
    assert "backfill does this" in cont[0].why
    more = wave("p-more", "promote", parent="p", created=3.0, candidates=[cand("p-more-002", "need_more", key="k-p-002")],
                unfinished=2, complete=False)
    assert not [a for a in next_actions(replace(s, waves=s.waves + (more,))).actions if a.kind == "continue"]


def test_backfill_alone_in_flight_is_not_work_to_wait_for():
    s = state(clusters=[cluster(depth=1, dry=0.0)],
              waves=[wave("s1", promotable=False), wave("backfill-x", "promote", backfill=True, unfinished=3,
                                                         complete=False, candidates=[cand("backfill-x-002", "need_more")])])
    got = kinds(s)
    assert got[0][0] == "fill" and "wait" not in [k for k, _ in got]


@pytest.mark.parametrize("make, expected", [
    (lambda: state(waves=[wave("s1", promotable=False)], adopted=[Adopted("p-002", 50.0, "c", "k", "gpu", ("A",))],
                   baseline_code_at=40.0), "stale baseline"),
    (lambda: state(waves=[wave("p", "promote", read=True, candidates=[cand("p-002", "discard", gain=-0.1, flagged=2)])]),
     "noisy step counts: 2 seed pair(s) in p"),
    (lambda: state(clusters=[cluster("c1", state="lost")]), "cluster c1 was lost and is not replaced"),
    (lambda: state(clusters=[cluster("c1", state="lost"), cluster("c2", depth=2, dry=900.0, replaces="c1")]),
     "cluster c1 was lost; c2 replaces it"),
    (lambda: state(waves=[wave("s1", held=3)]), "3 experiment(s) held by a budget cap"),
    (lambda: state(waves=[wave("s1", unfinished=2, complete=False, eta=float("inf"))]), "waits for hardware"),
    (lambda: state(budget=Budget(9.5, 10.0, 0.5, True, 0.0, 4.0)), "budget: 0.50 of 10 GPU-hours left"),
])
def test_warnings(make, expected):
    assert any(expected in w for w in next_actions(make()).warnings), next_actions(make()).warnings


def test_no_stale_warning_when_the_baseline_ran_after_the_adoption():
    s = state(waves=[wave("s1", promotable=False)], adopted=[Adopted("p-002", 50.0, "c", "k", "gpu", ("A",))],
              baseline_code_at=60.0)
    assert not any("stale" in w for w in next_actions(s).warnings)


def _screen(id: str, created: float) -> WaveRow:
    return WaveRow(id, id, "screen", "grid", {}, {}, f"code-{id}", None, None, created)


def _baseline_run(wave: WaveRow, finished: float) -> ExperimentRow:
    return ExperimentRow(f"{wave.id}-001", wave.id, 1, {}, "kb", 0, "baseline", "baseline", wave.snapshot, "screen",
                         ExperimentState.DONE, 1, "", wave.created_at, finished, finished)


def _config(code: str) -> dict:
    return {"label": "baseline", "val_bpb": 1.85, "std": None, "n": 1, "experiments": ["x"], "code": code,
            "config_key": "kb"}


def test_the_baseline_is_fresh_by_when_its_code_was_taken_not_when_it_finished():
    """A baseline queued before an adoption that finishes after it ran the old code: still stale."""
    adopted = [Adopted("p-002", 50.0, "c", "k", "cpu", ("FINAL_LR_FRAC",))]
    old = _screen("s-old", 10.0)
    waves, runs = [old], [_baseline_run(old, 100.0)]  # finished after the adoption, on code taken before it
    base, code_at = _committed_baseline(waves, runs, [_config("code-s-old")], {w.id: w for w in waves})
    assert base.experiment == "s-old-001" and code_at == 10.0
    s = state(waves=[wave("s-old", promotable=False)], adopted=adopted, baseline_code_at=code_at, baseline=base)
    assert any("stale baseline: 1 change(s) adopted" in w for w in next_actions(s).warnings)
    journal = render_section(generated="now", state=s, report=next_actions(s), ideas=[], adoptions=[])
    assert "stale: its code predates 1 adoption(s) (latest `p-002`)" in journal

    new = _screen("s-new", 60.0)  # a screen after the adoption: its baseline is the committed one, whenever it finished
    waves, runs = [old, new], [_baseline_run(old, 100.0), _baseline_run(new, 80.0)]
    base, code_at = _committed_baseline(waves, runs, [_config("code-s-old"), _config("code-s-new")],
                                        {w.id: w for w in waves})
    assert base.experiment == "s-new-001" and base.code == "code-s-new" and code_at == 60.0
    s = state(waves=[wave("s-old", promotable=False)], adopted=adopted, baseline_code_at=code_at, baseline=base)
    assert not any("stale" in w for w in next_actions(s).warnings)
    assert "stale" not in render_section(generated="now", state=s, report=next_actions(s), ideas=[], adoptions=[])

    # a promotion's baseline runs reuse their screen's code: they do not make the baseline fresh
    promote = WaveRow("s-old-promote", "s-old-promote", "validate", "promote", {}, {}, "code-s-old", "s-old", None, 70.0)
    _, code_at = _committed_baseline([old, promote], [_baseline_run(old, 100.0), _baseline_run(promote, 110.0)],
                                     [_config("code-s-old")], {"s-old": old, "s-old-promote": promote})
    assert code_at == 10.0


def test_a_screens_gain_uses_the_column_promote_ranks_by():
    """`fleet promote` ranks by normalized values when any run has one (`plans.rank_screen`); so does the gain
    `fleet next` uses to offer a screen for promotion, or it would offer screens promote refuses."""
    s1 = _screen("s1", 1.0)
    base, idea, other = _baseline_run(s1, 2.0), replace(_baseline_run(s1, 2.0), id="s1-002", config_key="ki",
                                                        description="idea"), \
        replace(_baseline_run(s1, 2.0), id="s1-003", config_key="ko", description="other")
    rows = {"s1-001": {"config_key": "kb", "val_bpb": 1.85, "normalized": 1.85},
            "s1-002": {"config_key": "ki", "val_bpb": 1.80, "normalized": 1.90},  # raw better, normalized worse
            "s1-003": {"config_key": "ko", "val_bpb": 1.70, "normalized": None}}  # unknown speed: left out
    assert _screen_gain([base, idea, other], rows, {"kb"}) == pytest.approx(1.85 - 1.90)
    raw = {k: {**r, "normalized": None} for k, r in rows.items()}
    assert _screen_gain([base, idea, other], raw, {"kb"}) == pytest.approx(1.85 - 1.70)


# ---- the journal -------------------------------------------------------------------------------------


def test_the_generated_section_is_replaced_and_the_agents_notes_kept():
    first = merge(None, f"{BEGIN}\nstate one\n{END}\n")
    assert first.startswith("# Journal\n") and "state one" in first and "## Notes" in first
    mine = first + "my idea: try SwiGLU\n"
    second = merge(mine, f"{BEGIN}\nstate two\n{END}\n")
    assert "state two" in second and "state one" not in second and "my idea: try SwiGLU" in second
    assert second.count(BEGIN) == 1 and second.count(END) == 1
    # a journal the agent wrote by hand gets the section after its title, nothing of it lost
    hand = "# My journal\n\nreasoning...\n"
    third = merge(hand, f"{BEGIN}\nstate\n{END}\n")
    assert third.startswith("# My journal\n\n" + BEGIN) and third.endswith("reasoning...\n")


class W:  # a wave row, as much as tried_ideas reads
    def __init__(self, id, kind="grid", backfill=False):
        self.id, self.kind, self.backfill = id, kind, backfill


def row(exp, key, value, state="done", wave="s1", label=None):
    return {"experiment": exp, "config_key": key, "val_bpb": value, "state": state, "wave": wave, "label": label or key}


def test_tried_ideas_say_how_each_came_out():
    rows = [row("s1-001", "base", 1.00), row("s1-002", "lr05", 0.98), row("s1-003", "wd1", 1.02),
            row("s1-004", "crash", None, state="crash"), row("s1-005", "run", None, state="running")]
    reports = {"p": {"candidates": [{"experiment": "p-002", "config_key": "lr05", "verdict": "keep", "delta": -0.015}]}}
    code = {e["experiment"]: "c0" for e in rows} | {"p-002": "c0"}
    ideas = tried_ideas([W("s1"), W("p", "promote")], rows, reports, {"p-002"}, code, {"s1-001"})
    got = {i.idea: (i.outcome, i.delta) for i in ideas}
    assert got["lr05"] == ("keep (adopted)", -0.015)  # the verdict's difference, not the screen's
    assert got["wd1"][0] == "screened" and got["wd1"][1] == pytest.approx(0.02)
    assert got["crash"][0] == "crashed" and got["run"][0] == "running"
    assert "base" not in got  # the baseline is not an idea


def test_a_searchs_trials_not_chosen_yet_are_not_ideas_tried():
    rows = [row("s1-001", "base", 1.00), row("s1-002", "lr05", None, state="pending", label="MATRIX_LR=0.05")]
    rows += [row(f"s1-00{k + 3}", "", None, state="planned", label=f"trial {k + 1} (not chosen yet)") for k in range(4)]
    code = {e["experiment"]: "c0" for e in rows}
    ideas = tried_ideas([W("s1", "search")], rows, {}, set(), code, {"s1-001"})
    assert [(i.idea, i.outcome) for i in ideas] == [("MATRIX_LR=0.05", "running")]  # asked, not yet run; no crash


def test_a_keep_whose_code_predates_an_adoption_of_its_knob_is_not_suggested():
    """Its promotion came after the adoption, but its screen took the code before it: adopt would conflict."""
    old = replace(wave("p", "promote", read=True, created=9.0, candidates=[cand("p-002", gain=0.01, code="c1")]),
                  code_at=1.0)
    s = state(waves=[wave("s1", promotable=False), old], clusters=[cluster(depth=2, dry=900.0)],
              adopted=[Adopted("q-002", 5.0, "c0", "kq", "cpu", ("MATRIX_LR",))])
    assert not [k for k, _ in kinds(s) if k == "adopt"]
    assert [c for k, c in kinds(replace(s, waves=(s.waves[0], replace(old, code_at=6.0)))) if k == "adopt"] == \
        ["fleet adopt p-002"]


def test_reading_and_adopting_come_before_filling_idle_clusters():
    """They take seconds and decide what the next wave builds on."""
    s = state(clusters=[cluster()], waves=[wave("s1"), wave("p", "promote", parent="s1", candidates=[cand("p-002")])],
              next_wave_file="waves/002-next.yaml")
    assert [k for k, _ in kinds(s)][:3] == ["read", "adopt", "fill"]


def test_a_seeded_grids_own_verdict_is_read_and_its_keep_adopted():
    grid = wave("s1", candidates=[cand("s1-002", gain=0.02), cand("s1-003", "discard", gain=-0.01, knobs={"WD": "1"})])
    s = state(clusters=[cluster(depth=2, dry=900.0)], waves=[grid])
    assert [c for _, c in kinds(s)][:2] == ["fleet verdict s1", "fleet adopt s1-002"]
    running = replace(grid, unfinished=2, complete=False, candidates=())  # judged once it finished
    assert [k for k, _ in kinds(replace(s, waves=(running,)))] == ["wait"]


def test_the_most_promising_screen_is_promoted_first_and_a_screen_nothing_beat_is_not():
    s = state(clusters=[cluster()], next_wave_file="waves/009-next.yaml",
              waves=[replace(wave("a"), screen_gain=0.01), replace(wave("b", created=2.0), screen_gain=0.03),
                     replace(wave("c", created=3.0), screen_gain=-0.02)])
    got = kinds(s)
    assert got[:2] == [("fill", "fleet promote b"), ("promote", "fleet promote a")]
    assert ("promote", "fleet promote c") not in got
    only_c = replace(s, waves=(s.waves[2],))
    assert kinds(only_c)[0] == ("fill", "fleet wave waves/009-next.yaml")


def test_a_finished_search_is_promoted_like_a_screen():
    search = replace(wave("tpe", "search"), promotable=True, screen_gain=0.02)
    s = state(clusters=[cluster()], waves=[search])
    assert kinds(s)[0] == ("fill", "fleet promote tpe")
    ids_exist(s)


@pytest.mark.parametrize("seconds, text", [(8.6, "~9 s"), (0.2, "~1 s"), (59.0, "~59 s"), (60.0, "~1 min"),
                                           (540.0, "~9 min")])
def test_an_eta_under_a_minute_is_in_seconds(seconds, text):
    from fleet.observe.next_steps import eta_text

    assert eta_text(seconds) == text
