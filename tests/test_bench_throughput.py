"""The throughput benchmark's accounting: every cluster-second lands in exactly one part."""
from __future__ import annotations

from pathlib import Path

import pytest
from fleet_cli import load_script

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fleet_throughput.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "bench_fleet_throughput")


def test_a_timeline_splits_into_its_parts(bench):
    J = bench.JobTimes
    run = 300.0
    jobs = [
        # cluster a: ready at 60; first exec took 5 s after a 1 s reaction; a 2 s start gap; the
        # second job was queued long before; its log was in 1.5 s after it ended at 672.5 + 1
        J("a", submitted=61, queued=66, started=68, ended=368.5, recorded=370),
        J("a", submitted=62, queued=67, started=371, ended=671, recorded=672),
        # cluster b: its second job reached the queue 4 s after the first ended (the queue ran dry)
        J("b", submitted=61, queued=66, started=69, ended=369, recorded=371),
        J("b", submitted=368, queued=373, started=376, ended=676, recorded=680),
    ]
    end = 680.0
    parts = bench.account(jobs, ready=60.0, end=end, run_s=run)
    assert sum(parts.values()) == pytest.approx(2 * end)
    assert parts["run"] == pytest.approx(4 * run)
    assert parts["setup"] == pytest.approx(2 * 60)
    assert parts["first_submission"] == pytest.approx(6 + 6)
    assert parts["start_gaps"] == pytest.approx((2 + 2.5) + (3 + 3))
    assert parts["queue_dry"] == pytest.approx(4)
    assert parts["job_overhead"] == pytest.approx(0.5)
    assert parts["result_collection"] == pytest.approx(1 + 4)
    assert parts["idle_at_end"] == pytest.approx(8 + 0)
