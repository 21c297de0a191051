"""The search benchmark's waves are valid for the real workload (its knobs, bounds and warmdown), so the
benchmark measures searches, not validation errors; and its GPU-seconds-to-target arithmetic."""
from __future__ import annotations

from pathlib import Path

import pytest
from fleet_cli import load_script

from fleet.config import FleetConfig
from fleet.core.expand import expand_wave
from fleet.core.knobs import check_wave_knobs, load_knob_listing
from fleet.core.wave import load_wave
from fleet.research.search_checks import probe_experiments, resolve_space, warmdown_problems

REPO = Path(__file__).resolve().parent.parent
bench = load_script(REPO / "bench" / "search.py", "bench_search")


@pytest.fixture(scope="module")
def listing():
    return load_knob_listing(REPO)


@pytest.mark.parametrize("strategy", bench.STRATEGIES)
def test_every_strategys_wave_is_valid_for_the_real_workload(strategy, listing, tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(bench.wave_file(strategy, 1, 12, 2.0))
    config = FleetConfig()
    spec, problems = resolve_space(load_wave(path, config.tiers.keys()), listing)
    assert problems == [] and warmdown_problems(spec.early_stop, spec, listing, "early_stop") == []
    if spec.search is not None:
        check_wave_knobs(probe_experiments(spec), listing, REPO, "bench")
        assert spec.search.trials == 12 and spec.search.seed == 1
    else:
        check_wave_knobs(expand_wave(spec, 1), listing, REPO, "bench")
        assert len(expand_wave(spec, 1)) == 12  # the grid has the same number of trials as the searches


def test_gpu_seconds_to_target_count_every_run_until_the_first_within_reach():
    runs = [(10.0, 2.5, "done"), (5.0, None, "pruned"), (10.0, 2.31, "done"), (10.0, 2.2, "done")]
    assert bench.seconds_to(runs, 2.31) == 25.0
    assert bench.seconds_to(runs, 2.0) is None
