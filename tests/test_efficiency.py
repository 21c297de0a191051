"""Efficiency accounting: the frontier (GPU-hours until each new best), the cost of each 0.001 of
improvement, and the share of GPU time that went to pruned, crashed and duplicate runs."""
from __future__ import annotations

import pytest

from fleet.core.ledger_rows import ExperimentRow, ResultRow
from fleet.observe.efficiency import Run, describe, efficiency, runs_from
from fleet.observe.plot import plot_data
from fleet.types import ExperimentState

DONE, CRASH, PRUNED, TIMEOUT = ExperimentState.DONE, ExperimentState.CRASH, ExperimentState.PRUNED, ExperimentState.TIMEOUT
PRICES = {"H100": 2.0, "cpu": 0.0}


def run(i: int, state, value, hours: float, key=None, acc="H100") -> Run:
    return Run(f"e{i}", float(i), state, value, hours * 3600, acc, key, f"cfg{i}")


def test_the_frontier_counts_every_run_until_each_new_best():
    runs = [run(1, DONE, 1.10, 1.0), run(2, CRASH, None, 0.5), run(3, DONE, 1.12, 1.0),
            run(4, DONE, 1.05, 1.0), run(5, PRUNED, None, 0.25), run(6, DONE, 1.06, 1.0), run(7, DONE, 1.02, 0.25)]
    eff = efficiency(runs, PRICES)
    assert [(p.experiment, p.value) for p in eff.frontier] == [("e1", 1.10), ("e4", 1.05), ("e7", 1.02)]
    assert [p.gpu_hours for p in eff.frontier] == pytest.approx([1.0, 3.5, 5.0])
    assert [p.dollars for p in eff.frontier] == pytest.approx([2.0, 7.0, 10.0])
    assert eff.gpu_hours == pytest.approx(5.0) and eff.improvement == pytest.approx(0.08)
    # 5 GPU-hours bought 0.08 = 80 steps of 0.001
    assert eff.gpu_hours_per_unit == pytest.approx(5.0 / 80) and eff.dollars_per_unit == pytest.approx(10.0 / 80)
    assert eff.waste == pytest.approx({"pruned": 0.05, "crashed": 0.1, "duplicate": 0.0})


def test_the_order_is_by_finish_time_not_by_listing():
    runs = [run(2, DONE, 1.0, 1.0), run(1, DONE, 1.2, 1.0)]
    eff = efficiency(runs, PRICES)
    assert [p.experiment for p in eff.frontier] == ["e1", "e2"]


def test_duplicates_repeat_a_finished_measurement_replicates_and_retries_do_not():
    a, b = ("code", "cfg-a", 0), ("code", "cfg-b", 0)
    runs = [run(1, CRASH, None, 1.0, a),   # a crash measured nothing: the retry is not a duplicate
            run(2, DONE, 1.1, 1.0, a),
            run(3, DONE, 1.1, 1.0, a),     # the same configuration, seed and code again: a duplicate
            run(4, TIMEOUT, None, 1.0, a),  # a timeout is counted as crashed, not twice
            run(5, DONE, 1.2, 1.0, b),
            run(6, DONE, 1.2, 1.0, None),  # a replicate (no SEED knob): a new sample
            run(7, DONE, 1.2, 1.0, None)]
    eff = efficiency(runs, PRICES)
    assert eff.waste_gpu_hours == pytest.approx({"pruned": 0.0, "crashed": 2.0, "duplicate": 1.0})
    assert eff.waste["duplicate"] == pytest.approx(1 / 7)


def test_no_improvement_and_no_results_give_no_cost():
    assert efficiency([run(1, DONE, 1.0, 1.0), run(2, DONE, 1.3, 1.0)], PRICES).gpu_hours_per_unit is None
    empty = efficiency([run(1, CRASH, None, 1.0)], PRICES)
    assert empty.frontier == () and empty.improvement is None and empty.waste["crashed"] == 1.0
    assert "no result yet" in describe(empty)
    assert efficiency([], PRICES).waste == {"pruned": 0.0, "crashed": 0.0, "duplicate": 0.0}


def test_a_higher_is_better_metric_is_shown_in_its_own_direction():
    eff = efficiency([run(1, DONE, -0.80, 1.0), run(2, DONE, -0.85, 1.0)], PRICES, sign=-1.0)
    assert [p.value for p in eff.frontier] == [0.80, 0.85] and eff.improvement == pytest.approx(0.05)


def _exp(i: int, state, seeding="seed", config_key="k", finished=None) -> ExperimentRow:
    return ExperimentRow(f"e{i}", "w", i, {}, config_key, 0, "", f"cfg{i}", "snap", "screen", state, 1, "", 0.0, 0.0,
                         finished if finished is not None else float(i), seeding=seeding)


def _res(i: int, outcome: str, value, gpu_s: float) -> ResultRow:
    return ResultRow(f"e{i}", 1, outcome, value, 10, 1.0, None, None, "H100", {}, "", "", gpu_s, float(i))


def test_runs_from_the_ledger_rows():
    experiments = [_exp(1, DONE), _exp(2, PRUNED, config_key="p"), _exp(3, ExperimentState.CANCELLED),
                   _exp(4, ExperimentState.RUNNING), _exp(5, DONE, seeding="replicate")]
    results = {"e1": _res(1, "done", 1.1, 3600), "e2": _res(2, "pruned", None, 900), "e5": _res(5, "done", 1.0, 60)}
    runs = runs_from(experiments, results, {"e1": 1.1, "e5": 1.0})
    assert [(r.experiment, r.value, r.gpu_seconds) for r in runs] == [("e1", 1.1, 3600), ("e2", None, 900),
                                                                      ("e5", 1.0, 60)]
    assert runs[0].repeat_of == ("snap", "k", 0) and runs[2].repeat_of is None


def test_the_plot_on_gpu_hours_is_the_frontier():
    experiments = [_exp(1, DONE, config_key="a"), _exp(2, CRASH, config_key="b"), _exp(3, DONE, config_key="c"),
                   _exp(4, DONE, config_key="d")]
    results = {"e1": _res(1, "done", 1.2, 1800), "e2": _res(2, "crash", None, 3600),
               "e3": _res(3, "done", 1.1, 1800), "e4": _res(4, "done", 1.3, 1800)}
    data = plot_data(experiments, results, x="gpu_hours")
    assert [(b[0], b[1]) for b in data.best] == [(0.5, 1.2), (2.0, 1.1)]
    assert data.crashes == ((1.5, "e2"),) and data.x_end == pytest.approx(2.5)
    assert data.xlabel.startswith("GPU-hours")
