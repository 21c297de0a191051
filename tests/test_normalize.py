"""Calibration, slope estimation, normalization and the leaderboard, on hand-built run tables."""
from __future__ import annotations

import math

import pytest

from fleet.research.normalize import (
    PRIOR_SLOPE,
    NormalizedRecord,
    RunRecord,
    SlopeEstimate,
    calibrate,
    estimate_slope,
    normalize,
    rank,
)

BUDGET = 300.0


def run(config: str, acc: str, seed: int, val: float | None, steps: float | None, secs: float | None = BUDGET) -> RunRecord:
    return RunRecord(f"{config}.{acc}.{seed}", config, acc, seed, val, steps, secs)


def model_runs(table: list[tuple[str, str, int, float]], slope: float = 0.1, quality: dict[str, float] | None = None) -> list[RunRecord]:
    """Runs that follow val_bpb = q - slope * ln(steps) exactly: (config, accelerator, seed, steps)."""
    quality = quality or {}
    return [run(c, a, s, quality.get(c, 1.0) - slope * math.log(steps / 1000), steps) for c, a, s, steps in table]


# ---------------------------------------------------------------- calibration

PAIRED = model_runs([
    ("a", "H100", 0, 1000), ("a", "H200", 0, 1090),
    ("b", "H100", 0, 900), ("b", "H200", 0, 981),
    ("c", "H100", 0, 1100), ("c", "H200", 0, 1199),
    ("d", "H100", 0, 800), ("d", "H200", 0, 1000),  # one outlier pair (a slow H100 node): the median ignores it
])
BASELINE_WAVE = model_runs([
    ("base", "H100", 0, 1000), ("base", "H100", 1, 1010), ("base", "H200", 0, 1090), ("base", "H200", 1, 1100),
    ("x", "H100", 0, 700), ("y", "H200", 0, 1500),  # unshared configs of very different cost
])
NO_PAIRS = model_runs([("x", "H100", 0, 1000), ("x", "H100", 1, 1020), ("y", "H200", 0, 1090), ("y", "H200", 1, 1110)])


@pytest.mark.parametrize(
    "records, baseline, acc, method, factor, n_pairs",
    [
        (PAIRED, None, "H200", "pairs", 1.09, 4),
        (PAIRED, None, "H100", "reference", 1.0, 0),
        (BASELINE_WAVE, "base", "H200", "calibration", math.sqrt(1090 * 1100) / math.sqrt(1000 * 1010), 1),
        (NO_PAIRS, None, "H200", "pooled", math.sqrt(1090 * 1110) / math.sqrt(1000 * 1020), 0),
    ],
)
def test_calibration_methods(records, baseline, acc, method, factor, n_pairs):
    f = calibrate(records, reference="H100", baseline=baseline).factor_for(acc)
    assert f.method == method
    assert f.factor == pytest.approx(factor, rel=2e-3)
    assert f.n_pairs == n_pairs
    if method != "reference":
        assert f.low is not None and f.low <= f.factor <= f.high


def test_needs_calibration_lists_pooled_and_the_reference_without_baseline_runs():
    assert calibrate(PAIRED).needs_calibration == ()
    assert calibrate(NO_PAIRS, baseline="x").needs_calibration == ("H200",)
    assert calibrate(NO_PAIRS, baseline="base").needs_calibration == ("H100", "H200")


@pytest.mark.parametrize(
    "records, acc, note_part",
    [
        (model_runs([("a", "H200", 0, 1090), ("a", "H200", 1, 1090)]), "H200", "reference"),  # one accelerator only
        (PAIRED + [run("a", "unknown", 0, 0.99, 1050)], "unknown", "did not report"),
        (PAIRED + [run("a", "cpu", 0, 1.3, None)], "cpu", "num_steps"),
        (PAIRED, "B200", "no runs"),  # never seen
    ],
)
def test_unknown_accelerators_are_never_guessed(records, acc, note_part):
    cal = calibrate(records, reference="H100")
    f = cal.factor_for(acc)
    assert f.method == "unknown" and f.factor is None
    assert note_part in f.note
    assert "unknown" not in cal.needs_calibration


def test_one_accelerator_only_is_the_reference():
    cal = calibrate(model_runs([("a", "H100", 0, 1000), ("b", "H100", 0, 900)]))
    assert [(f.accelerator, f.method, f.factor) for f in cal.factors] == [("H100", "reference", 1.0)]
    assert cal.needs_calibration == ()


def test_one_accelerator_only_not_the_reference_asks_for_a_calibration_wave():
    cal = calibrate(model_runs([("a", "H200", 0, 1090)]), reference="H100", baseline="a")
    assert cal.needs_calibration == ("H100", "H200")


# ---------------------------------------------------------------- slope


def test_slope_from_pairs_recovers_the_true_slope_and_resists_an_outlier():
    records = model_runs([(c, a, 0, s) for c in "abcde" for a, s in (("H100", 1000), ("H200", 1090))], slope=0.08)
    records.append(run("f", "H100", 0, 1.0, 1000))
    records.append(run("f", "H200", 0, 1.05, 1090))  # a broken run: slope −0.58 on its own
    est = estimate_slope(records)
    assert est.method == "pairs" and est.n_pairs == 6
    assert est.slope == pytest.approx(0.08, abs=1e-9)


def test_slope_from_a_steps_budget_sweep_on_one_accelerator():
    records = model_runs([(c, "H100", 0, 1000) for c in "abc"] + [(c, "H100", 0, 500) for c in "abc"], slope=0.12)
    records = [r if r.num_steps == 1000 else RunRecord(r.experiment_id + "h", r.config_key, "H100", 0, r.val_bpb, 500, 150.0) for r in records]
    est = estimate_slope(records)
    assert est.method == "pairs" and est.n_pairs == 3 and est.slope == pytest.approx(0.12)


def test_slope_from_one_calibration_wave_uses_seed_scatter():
    noise = [0.001, -0.001, 0.0005, -0.0005]
    records = [
        run("base", acc, i, 1.0 - 0.09 * math.log(steps / 1000) + noise[i], steps)
        for acc, steps in (("H100", 1000), ("H200", 1090)) for i in range(4)
    ]
    est = estimate_slope(records)
    assert est.method == "pairs" and est.n_pairs == 1
    assert est.slope == pytest.approx(0.09, abs=1e-9) and est.se is not None and est.se > 0


@pytest.mark.parametrize(
    "records",
    [
        [],
        model_runs([("a", "H100", 0, 1000), ("b", "H200", 0, 1090)]),  # no config on two step counts
        model_runs([("a", "H100", 0, 1000), ("a", "H200", 0, 1090)]),  # one pair, no seed scatter
        model_runs([("a", "unknown", 0, 1000), ("a", "H200", 0, 1090)]),  # unknown hardware is not a group
    ],
)
def test_slope_falls_back_to_the_prior_and_says_so(records):
    est = estimate_slope(records, prior=PRIOR_SLOPE)
    assert est.method == "prior" and est.slope == PRIOR_SLOPE and "prior" in est.note


def test_negative_slope_estimate_is_clamped():
    records = model_runs([(c, a, 0, s) for c in "abc" for a, s in (("H100", 1000), ("H200", 1090))], slope=-0.05)
    est = estimate_slope(records)
    assert est.slope == 0.0 and "clamped" in est.note


# ---------------------------------------------------------------- normalization and leaderboard


def test_normalization_direction_and_recovery():
    records = model_runs([("a", "H100", 0, 1000), ("a", "H200", 0, 1090), ("b", "H100", 0, 1000), ("b", "H200", 0, 1090)])
    cal = calibrate(records)
    out = normalize(records, cal, SlopeEstimate(0.1, None, 0, "prior"))
    h200 = [n for n in out if n.record.accelerator == "H200"]
    h100 = [n for n in out if n.record.accelerator == "H100"]
    assert all(n.normalized > n.raw for n in h200)  # faster GPU: normalized is worse than raw
    assert all(n.normalized == n.raw and n.adjustment == 0.0 for n in h100)
    # The model holds exactly, so each H200 run lands on its H100 twin.
    assert [n.normalized for n in h200] == pytest.approx([n.normalized for n in h100])


def test_normalization_withholds_unknown_and_crashed_runs():
    records = PAIRED + [run("a", "unknown", 0, 0.9, 1000), run("a", "H100", 1, None, None)]
    out = normalize(records, calibrate(records), 0.1)
    unknown, crashed = out[-2], out[-1]
    assert unknown.normalized is None and "speed unknown" in unknown.note
    assert crashed.normalized is None and "no val_bpb" in crashed.note


def test_leaderboard_shows_raw_and_normalized_and_which_it_sorts_by():
    # "fast" looks best raw only because both its runs were on H200s.
    records = model_runs(
        [("good", "H100", 0, 1000), ("good", "H200", 1, 1090), ("fast", "H200", 0, 1090), ("fast", "H200", 1, 1090),
         ("ref", "H100", 0, 1000), ("ref", "H200", 0, 1090)],
        quality={"good": 0.995, "fast": 0.997, "ref": 1.0},
    )
    normalized = normalize(records, calibrate(records), 0.1)
    by_norm = rank(normalized, by="normalized")
    by_raw = rank(normalized, by="raw")
    assert [r.config_key for r in by_norm] == ["good", "fast", "ref"]
    assert [r.config_key for r in by_raw] == ["fast", "good", "ref"]
    assert {r.sorted_by for r in by_norm} == {"normalized"} and [r.position for r in by_norm] == [1, 2, 3]
    top = by_norm[0]
    assert top.raw_mean is not None and top.normalized_mean is not None and top.n_runs == 2
    assert top.accelerators == ("H100", "H200")


def test_leaderboard_puts_configs_without_a_normalized_value_last():
    records = PAIRED + [run("z", "unknown", 0, 0.5, 1000)]
    rows = rank(normalize(records, calibrate(records), 0.1))
    assert rows[-1].config_key == "z" and rows[-1].normalized_mean is None and rows[-1].raw_mean == 0.5
    assert isinstance(normalize(records, calibrate(records), 0.1)[0], NormalizedRecord)


def test_rank_rejects_unknown_sort_key():
    with pytest.raises(ValueError, match="normalized"):
        rank([], by="speed")  # type: ignore[arg-type]
