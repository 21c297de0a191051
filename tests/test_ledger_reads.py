"""SQL-side selection: the few rows a view shows are the rows the whole computation would show."""
from __future__ import annotations

import math
import random
import statistics

import pytest

from fleet.cli.context import Context
from fleet.cli.output import Sink
from fleet.cli.results_view import leaderboard_payload
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import NewExperiment
from fleet.observe.dashboard import overlap, utilization_spans
from fleet.types import ExperimentState
from fleet.workspace import Workspace


def new(i: int, seed: int = 0) -> NewExperiment:
    return NewExperiment({"LR": str(i)}, f"k{i}", seed, "", f"LR={i}")


def finish(ledger: Ledger, exp_id: str, val_bpb: float | None, accelerator: str = "H100",
           state: ExperimentState = ExperimentState.DONE, gpu_seconds: float | None = 10.0,
           steps: float | None = None) -> None:
    attempt = ledger.start_attempt(exp_id, "c1", accelerator, lambda n: f"/logs/{exp_id}.a{n}")
    ledger.record_result(exp_id, attempt.id, state, outcome=state.value, val_bpb=val_bpb, accelerator=accelerator,
                         reason="" if state == ExperimentState.DONE else "boom", gpu_seconds=gpu_seconds,
                         metrics={} if steps is None else {"num_steps": steps})


def build(root, accelerator: str, rng: random.Random, better_with_steps: float = -1.0) -> Ledger:
    """Two screens (ties, an infinity, a NaN, crashes, experiments not run yet) and a seeded wave whose
    runs' step counts jitter, so their values are corrected for step noise."""
    ledger = Ledger(Workspace(root).ensure().ledger_path)
    for name in ("a", "b"):
        _, rows = ledger.add_wave(name, "screen", {}, f"snap-{name}", [new(i) for i in range(40)])
        for i, row in enumerate(rows[:30]):
            if i % 7 == 3:
                finish(ledger, row.id, None, accelerator, ExperimentState.CRASH)
            else:
                value = {5: math.inf, 6: math.nan}.get(i, round(rng.uniform(0.9, 1.1), 2))  # 2 digits: ties
                finish(ledger, row.id, value, accelerator, steps=1000.0)
    _, rows = ledger.add_wave("seeds", "validate", {}, "snap", [new(i, seed) for i in range(4) for seed in range(3)])
    for row in rows:  # more steps, a better value: a slope the correction finds
        steps = 1000.0 * math.exp(rng.gauss(0, 0.05))
        value = 0.95 + 0.002 * int(row.config["LR"]) + better_with_steps * 0.05 * math.log(steps / 1000.0)
        finish(ledger, row.id, value, accelerator, steps=steps)
    return ledger


@pytest.mark.parametrize("accelerator", ["H100", "cpu"])  # on the reference (normalized = raw), or not
@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_top_rows_are_the_head_of_the_whole_leaderboard(tmp_path, accelerator, direction):
    (tmp_path / "fleet.yaml").write_text(f"metric: {{name: val_bpb, direction: {direction}}}\n")
    build(tmp_path, accelerator, random.Random(3), -1.0 if direction == "minimize" else 1.0).close()
    ctx = Context(Workspace(tmp_path), Sink("human"))
    assert "step noise: slope" in leaderboard_payload(ctx, None)["calibration"]  # the correction is at work
    for wave in (None, "b", "seeds"):
        for sort_by in ("normalized", "raw"):
            whole = leaderboard_payload(ctx, wave, sort_by=sort_by)
            for limit in (1, 7, 55, 100):
                top = leaderboard_payload(ctx, wave, sort_by=sort_by, limit=limit)
                assert top["rows"] == whole["rows"][:limit], (wave, sort_by, limit)
                assert top["configs"] == whole["configs"][:limit], (wave, sort_by, limit)
                assert {k: v for k, v in top.items() if k not in ("rows", "configs")} == \
                    {k: v for k, v in whole.items() if k not in ("rows", "configs")}


def test_config_means_rank_configurations_by_their_mean_over_seeds(tmp_path):
    rng = random.Random(11)
    ledger = Ledger(tmp_path / "l.db")
    truth = {i: 1.0 + 0.01 * i for i in range(6)}  # config 0 is best
    _, rows = ledger.add_wave("w", "screen", {}, "snap1", [new(i, seed) for seed in range(4) for i in truth])
    _, other = ledger.add_wave("w2", "screen", {}, "snap2", [new(0, seed) for seed in range(2)])  # other code
    values: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for row in rows + other:
        i = int(row.config["LR"])
        if i == 5 and row.seed == 0:
            finish(ledger, row.id, None, state=ExperimentState.CRASH)  # a crash does not count
            continue
        value = truth[i] + rng.gauss(0, 0.003) + (0.5 if row.snapshot == "snap2" else 0.0)
        finish(ledger, row.id, value)
        values.setdefault((row.config_key, row.snapshot), []).append((value, row.id))

    means = ledger.config_means(limit=10)
    expected = sorted(values.items(), key=lambda kv: statistics.fmean(v for v, _ in kv[1]))
    assert [(m.config_key, m.code) for m in means] == [key for key, _ in expected]
    for m, (_, runs) in zip(means, expected):
        xs = [v for v, _ in runs]
        assert m.n == len(xs) and m.mean == pytest.approx(statistics.fmean(xs), abs=1e-12)
    assert means[0].config_key == "k0" and means[0].code == "snap1"
    assert [m.n for m in means if m.config_key == "k5"] == [3]  # its crash does not count
    assert [m.config_key for m in ledger.config_means(limit=2)] == ["k0", "k1"]
    assert {m.code for m in ledger.config_means(limit=10, wave="w2")} == {"snap2"}
    # a metric where higher is better (accuracy, say): the same groups, best first the other way
    up = ledger.config_means(limit=10, higher_is_better=True)
    assert [(m.config_key, m.code) for m in up] == [(m.config_key, m.code) for m in reversed(means)]


def test_busy_seconds_in_sql_are_the_overlaps_of_the_attempts(tmp_path):
    rng = random.Random(5)
    now = 10_000.0
    ledger = Ledger(tmp_path / "l.db")
    _, rows = ledger.add_wave("w", "screen", {}, "snap", [new(i) for i in range(60)])
    intervals = []
    for row in rows:
        attempt = ledger.start_attempt(row.id, "c1", "H100", lambda n: "/logs/x")
        start = rng.uniform(now - 5000, now)
        end = None if rng.random() < 0.1 else min(now, start + rng.uniform(1, 900))
        if rng.random() < 0.1:
            continue  # queued, never started
        ledger.update_attempt(attempt.id, state="running" if end is None else "succeeded", started_at=start,
                              ended_at=end)
        intervals.append((start, now if end is None else end))
    spans = utilization_spans(now)
    busy = ledger.busy_seconds(spans, now)
    assert busy == pytest.approx([sum(overlap(i, s) for i in intervals) for s in spans])


def test_the_selective_reads_use_their_indexes(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    plans = {
        "ranked": "SELECT r.experiment_id FROM results r JOIN experiments e ON e.id = r.experiment_id"
                  " WHERE r.val_bpb IS NOT NULL AND r.val_bpb BETWEEN -1e308 AND 1e308"
                  " ORDER BY r.val_bpb, r.experiment_id LIMIT 10",
        "crashes": "SELECT * FROM experiments WHERE state IN ('crash', 'timeout') ORDER BY finished_at DESC LIMIT 10",
        "counts": "SELECT wave_id, state, COUNT(*) FROM experiments GROUP BY wave_id, state",
        "active": "SELECT * FROM attempts WHERE state IN ('submitting', 'pending', 'running')",
        "pending": "SELECT e.* FROM experiments e JOIN waves w ON w.id = e.wave_id WHERE e.state IN ('pending')"
                   " ORDER BY w.created_at, w.rowid, e.seq LIMIT 64",
    }
    used = {name: " ".join(r[3] for r in ledger._query("EXPLAIN QUERY PLAN " + sql)) for name, sql in plans.items()}
    assert "results_val_bpb" in used["ranked"]
    assert "SEARCH experiments USING INDEX experiments_state" in used["crashes"]  # the crashes only, then sorted
    assert "experiments_wave_state" in used["counts"]
    assert "attempts_state" in used["active"]
    assert "experiments_state" in used["pending"]


def test_the_pending_head_is_each_tracks_first_rows_in_priority_order(tmp_path):
    from fleet.core.demand import pending_work

    ledger = Ledger(tmp_path / "l.db")
    for name, priority, track, n in (("a", 0, "main", 30), ("b", 5, "main", 4), ("c", 0, "side", 30), ("d", 1, "", 2)):
        ledger.add_wave(name, "screen", {"default_budget": 100}, "snap", [new(i) for i in range(n)],
                        priority=priority, track=track)
    whole = pending_work(ledger)
    for k in (1, 3, 10, 100):
        head = pending_work(ledger, per_track=k)
        expected = [r for r in whole if [x for x in whole if x.track == r.track].index(r) < k]
        assert head == expected, k
    assert [r.experiment.id for r in pending_work(ledger, per_track=5) if r.track == "main"] == \
        ["b-001", "b-002", "b-003", "b-004", "a-001"]  # the higher priority first
    assert {r.expected_s for r in whole} == {160.0}  # each wave's default budget, read once per wave


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_efficiency_from_the_lean_rows_is_the_accounting_over_every_record(tmp_path, direction):
    """`fleet status` and `fleet watch` account GPU time from one lean join; it must be what the
    accounting over the decoded records (and the research layer's values) gives."""
    from fleet.cli.results_view import efficiency_for
    from fleet.observe.efficiency import efficiency, runs_from
    from fleet.research.normalize_view import comparable_values

    (tmp_path / "fleet.yaml").write_text(f"metric: {{name: val_bpb, direction: {direction}}}\n")
    ledger = build(tmp_path, "H100", random.Random(5))
    _, rows = ledger.add_wave("more", "screen", {}, "snap", [new(i) for i in range(3)])
    finish(ledger, rows[0].id, None, state=ExperimentState.PRUNED, gpu_seconds=4.0)
    ledger.set_state(rows[1].id, ExperimentState.CANCELLED, "user")
    ctx = Context(Workspace(tmp_path), Sink("human"))
    sign = -1.0 if direction == "maximize" else 1.0
    for wave in (None, "b", "more"):
        values = comparable_values(ledger, ctx.config.reference_accelerator, direction == "maximize")
        whole = efficiency(runs_from(ledger.experiments(wave=wave), ledger.results(wave=wave), values),
                           ctx.config.prices, sign=sign)
        assert efficiency_for(ctx, wave) == whole
        assert whole.waste.get("pruned", 0.0) > 0 or wave == "b"


def test_reads_inside_a_reading_block_are_decoded_once_and_forgotten_on_a_write(tmp_path):
    ledger = Ledger(Workspace(tmp_path).ensure().ledger_path)
    _, rows = ledger.add_wave("a", "screen", {}, "s", [new(i) for i in range(3)])
    finish(ledger, rows[0].id, 1.0)
    outside = (ledger.experiments(), ledger.results())
    with ledger.reading():
        first = ledger.experiments()
        assert ledger.experiments() == first and ledger.experiments()[0] is first[0]  # decoded once
        first.clear()  # a caller's list is its own
        assert ledger.experiments() == outside[0] and ledger.results() == outside[1]
        assert ledger.experiments(wave="a", states=[ExperimentState.DONE]) == [outside[0][0]]  # its own query
        finish(ledger, rows[1].id, 0.9)  # a write: what was decoded is forgotten
        assert set(ledger.results()) == {rows[0].id, rows[1].id}
        assert [e.state for e in ledger.experiments()][:2] == [ExperimentState.DONE, ExperimentState.DONE]
    assert ledger._memo is None
