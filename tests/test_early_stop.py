"""Early stopping, the decision: loss lines parsed, losses read at fractions of the budget, runs judged
against the baseline or the median, never past the warmdown start; the warmdown check of a wave."""
from __future__ import annotations

import random

import pytest

from fleet.core.knobs import KnobInfo, KnobListing
from fleet.core.wave_spec import EarlyStop, ExplicitExperiment, SearchDim, SearchSpec, WaveSpec
from fleet.research.early_stop import (
    MIN_REFERENCE_RUNS,
    Curve,
    Point,
    judge,
    loss_at,
    merge,
    parse_curve,
    warmdown_start,
)
from fleet.research.search_checks import largest_warmdown, warmdown_problems


@pytest.mark.parametrize("text, points", [
    ("step 00020 loss 3.719539404 progress  51.3%", [(0.513, 3.719539404)]),  # this project's train.py
    ("step 00120 (25.0%) | loss: 3.517000 | lrm: 1.00 | dt: 310ms", [(0.25, 3.517)]),  # autoresearch's
    ("\rstep 00001 (0.5%) | loss: 9.0 |\rstep 00002 (1.0%) | loss: 8.5 |", [(0.005, 9.0), (0.01, 8.5)]),  # \r lines
    ("step 00010 loss nan progress 10.0%", []),  # not a finite loss
    ("step 00010 loss inf progress 10.0%\nstep 00020 loss 4.0 progress 20.0%", [(0.2, 4.0)]),
    ("step 00010 loss 4.0 progress 120.0%", [(1.0, 4.0)]),  # the last step may overshoot its budget a little
    ("step 00010 loss 4.0 progress 999.0%", []),  # nonsense
    ("val_bpb: 1.0\nloss 4.0 progress 10%\nstep x loss 4 progress 10%\nstep 1 loss four progress 10%", []),
    ("", []),
])
def test_parse_curve(text, points):
    assert [(p.progress, p.loss) for p in parse_curve(text)] == [pytest.approx(x) for x in points]


def curve(*pairs: tuple[float, float], finished: bool = False) -> Curve:
    return Curve(tuple(Point(p, loss) for p, loss in pairs), finished)


def line(offset: float, upto: float, step: float = 0.05) -> Curve:
    """A straight falling loss curve, `offset` above the reference one, logged up to `upto`."""
    n = int(round(upto / step))
    return curve(*[(round(i * step, 4), 5.0 - 2 * i * step + offset) for i in range(1, n + 1)])


def test_a_loss_is_read_only_once_the_run_has_passed_its_window():
    c = [Point(0.2, 4.0), Point(0.25, 3.8), Point(0.3, 3.6)]
    assert loss_at(c, 0.25) == pytest.approx(3.8)  # the mean of 0.2 .. 0.3
    assert loss_at(c[:2], 0.25) is None  # not yet past 0.30: later points would still change it
    assert loss_at(c[:2], 0.25, finished=True) == pytest.approx(3.9)
    sparse = [Point(0.17, 4.0), Point(0.34, 3.0)]  # nothing within the window: interpolate
    assert loss_at(sparse, 0.25) == pytest.approx(4.0 - (0.08 / 0.17))
    assert loss_at([Point(0.1, 4.0), Point(0.6, 3.0)], 0.25) is None  # points too far apart to interpolate


def test_merge_keeps_earlier_points_and_takes_new_ones():
    merged = merge([Point(0.1, 5.0), Point(0.2, 4.0)], [Point(0.2, 4.1), Point(0.3, 3.0)])
    assert merged == [Point(0.1, 5.0), Point(0.2, 4.1), Point(0.3, 3.0)]


def test_a_run_trailing_the_baseline_by_more_than_the_margin_is_pruned():
    baseline = [line(0.0, 0.6)]
    verdict = judge(line(0.5, 0.35), (0.25,), 0.2, 0.5, baseline, [])
    assert verdict is not None and verdict.at == 0.25 and verdict.against == "baseline"
    assert verdict.loss - verdict.reference == pytest.approx(0.5)
    assert verdict.last_progress == pytest.approx(0.35) and "trails the baseline" in verdict.reason


@pytest.mark.parametrize("run, baseline, warmdown, why", [
    (line(0.15, 0.35), [line(0.0, 0.6)], 0.5, "within the margin"),
    (line(0.5, 0.25), [line(0.0, 0.6)], 0.5, "not past the checkpoint's window yet"),
    (line(0.5, 0.35), [line(0.0, 0.2)], 0.5, "the baseline is not there yet"),
    (line(0.5, 0.55), [line(0.0, 0.9)], 0.5, "past its warmdown start: never stopped there"),
    (line(0.5, 0.35), [line(0.0, 0.6)], 0.25, "the checkpoint is at its warmdown start"),
    (line(-0.5, 0.35), [line(0.0, 0.6)], 0.5, "ahead of the baseline"),
])
def test_a_run_is_not_pruned(run, baseline, warmdown, why):
    assert judge(run, (0.25,), 0.2, warmdown, baseline, []) is None, why


def test_a_finished_run_is_never_pruned():
    done = Curve(line(0.5, 0.35).points, finished=True)
    assert judge(done, (0.25,), 0.2, 0.5, [line(0.0, 0.6)], []) is None


def test_without_a_baseline_the_median_of_enough_other_runs_is_the_reference():
    others = [line(offset, 0.6) for offset in (0.0, 0.1, 0.2)]
    verdict = judge(line(0.6, 0.35), (0.25,), 0.3, 0.5, [], others)
    assert verdict is not None and verdict.reference == pytest.approx(others[1].at(0.25))
    assert verdict.against == f"median of {MIN_REFERENCE_RUNS} runs"
    assert judge(line(0.6, 0.35), (0.25,), 0.3, 0.5, [], others[:2]) is None  # too few to take a median


def test_later_checkpoints_are_judged_too():
    run = curve(*[(p, 3.0 if p < 0.3 else 4.0) for p in (0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)])
    base = curve(*[(p, 3.0) for p in (0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)])
    verdict = judge(run, (0.2, 0.5), 0.5, 0.7, [base], [])
    assert verdict is not None and verdict.at == 0.5


def test_on_noisy_curves_the_margin_keeps_equal_configurations_running():
    """Ten runs of one configuration, with per-step noise (sd 0.05): none trails the baseline by the margin."""
    rng = random.Random(1)

    def noisy() -> Curve:
        return curve(*[(i / 40, 5.0 - 2 * i / 40 + rng.gauss(0, 0.05)) for i in range(1, 25)])

    base = [noisy()]
    assert all(judge(noisy(), (0.25, 0.5), 0.1, 0.65, base, []) is None for _ in range(10))
    # A configuration clearly worse (by 0.3 at every point) is caught despite the same noise.
    worse = Curve(tuple(Point(p.progress, p.loss + 0.3) for p in noisy().points))
    assert judge(worse, (0.25, 0.5), 0.1, 0.65, base, []) is not None


@pytest.mark.parametrize("config, default, start", [
    ({"WARMDOWN_RATIO": "0.3"}, 0.5, 0.7),
    ({}, 0.5, 0.5),
    ({"WARMDOWN_RATIO": "x"}, 0.4, 0.6),
    ({}, None, 1.0),  # a workload without a warmdown knob: no warmdown known
])
def test_warmdown_start(config, default, start):
    assert warmdown_start(config, default) == pytest.approx(start)


LISTING = KnobListing({"WARMDOWN_RATIO": KnobInfo("WARMDOWN_RATIO", "float", {"gpu": 0.5, "cpu": 0.4, "tiny": 0.4})})


@pytest.mark.parametrize("spec, largest", [
    (WaveSpec("w"), (0.5, "the workload's default")),  # the largest of its presets' defaults
    (WaveSpec("w", env={"WARMDOWN_RATIO": 0.2}), (0.2, "env.WARMDOWN_RATIO")),  # env replaces the default
    (WaveSpec("w", env={"WARMDOWN_RATIO": 0.2}, grid={"WARMDOWN_RATIO": [0.1, 0.6]}), (0.6, "grid.WARMDOWN_RATIO")),
    (WaveSpec("w", experiments=[ExplicitExperiment({"WARMDOWN_RATIO": 0.7})]),
     (0.7, "experiments[0].WARMDOWN_RATIO")),
    (WaveSpec("w", search=SearchSpec(4, {"WARMDOWN_RATIO": SearchDim(0.2, 0.8)})), (0.8, "search.space.WARMDOWN_RATIO")),
])
def test_the_largest_warmdown_ratio_of_a_wave(spec, largest):
    assert largest_warmdown(spec, LISTING) == largest


def test_checkpoints_at_or_after_the_earliest_warmdown_start_are_refused():
    spec = WaveSpec("w", env={"WARMDOWN_RATIO": 0.6}, source="w.yaml")
    problems = warmdown_problems(EarlyStop((0.2, 0.4, 0.5), 0.1), spec, LISTING, "early_stop")
    assert len(problems) == 2
    assert problems[0].startswith("w.yaml: `early_stop.at[1]` = 0.4 is at or after the warmdown start")
    assert "starts falling at 40% of the budget" in problems[0] and "`at: [0.2]`" in problems[0]
    assert warmdown_problems(EarlyStop((0.2,), 0.1), spec, LISTING, "early_stop") == []
    assert warmdown_problems(EarlyStop((0.9,), 0.1), WaveSpec("w"), KnobListing({}), "early_stop") == []  # no such knob


def test_a_tiers_early_stop_applies_unless_the_wave_has_its_own():
    from pydantic import ValidationError

    from fleet.config import EarlyStopSettings, FleetConfig
    from fleet.research.search_checks import effective_early_stop

    tier = EarlyStopSettings(at=[0.2], margin=0.1)
    assert effective_early_stop(WaveSpec("w"), tier, "screen") == (EarlyStop((0.2,), 0.1), "tiers.screen.early_stop")
    own = EarlyStop((0.3,), 0.2)
    assert effective_early_stop(WaveSpec("w", early_stop=own), tier, "screen") == (own, "early_stop")
    assert effective_early_stop(WaveSpec("w"), None, "screen") == (None, "")
    config = FleetConfig.model_validate({"tiers": {"screen": {"early_stop": {"at": [0.25], "margin": 0.1}}}})
    assert config.tiers["screen"].early_stop.at == [0.25]
    with pytest.raises(ValidationError, match="increasing order"):
        FleetConfig.model_validate({"tiers": {"screen": {"early_stop": {"at": [0.4, 0.2], "margin": 0.1}}}})
