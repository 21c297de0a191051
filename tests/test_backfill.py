"""Backfill through the real controller, on clusters that run FIFO queues on a fake clock.

A screen and its promotion run on two clusters; the promotion keeps its candidate, so there is a
current best to re-check. After the last of that work finishes, backfill (the re-check) must be
running within one cycle; a wave submitted meanwhile must start all of its experiments before any
more backfill starts (backfill queued behind it is taken back, never started); and backfill must
never hold more GPU-hours than its cap, cancelling pairs the sequential re-check adds past it.
"""
from __future__ import annotations

import json
import shutil

import pytest
from fifo_backend import FifoBackend
from fleet_cli import TINYWORK

from fleet.cli.main import main
from fleet.config import load_config
from fleet.core.controller import Controller
from fleet.core.daemon import controller_lock
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ATTEMPT_WITHDRAWN, WaveRow
from fleet.core.schedule import ClusterSlot, PendingExperiment
from fleet.research.backfill import Backfill, Option, Room, backfill_spend, choose, free_rooms, over_cap
from fleet.research.sequential import extend_waves
from fleet.types import ClusterState, ExperimentState, parse_job_name
from fleet.workspace import Workspace

CAP = 0.3  # GPU-hours: the re-check's first 6 runs (0.2 expected) fit, its noisy later pairs do not all fit
FLEET = f"""\
tiers:
  screen: {{accelerators: [H100], seeds: 1}}
  validate: {{accelerators: [H100], seeds: 1, priority: 10}}
backfill: {{max_gpu_hours: {CAP}}}
"""
SCREEN = """\
name: {name}
env: {{TIME_BUDGET: 60}}
experiments:
  - {{description: baseline, MATRIX_LR: 0.01}}
  - {{MATRIX_LR: 0.04}}
"""


def value(envs: dict) -> float:
    """val_bpb on the fake clusters: MATRIX_LR=0.04 is better by 0.036 on every seed up to 3 (the
    promotion keeps it); from seed 4 on (the re-check's fresh seeds) its runs are very noisy, so the
    sequential re-check keeps asking for pairs."""
    lr, seed = float(envs.get("MATRIX_LR", "0.04")), int(envs.get("SEED", "0"))
    noise = 0.05 * ((seed * 37) % 7 - 3) if seed >= 4 and lr == 0.04 else 0.0
    return 1.0 + 40 * (lr - 0.04) ** 2 + ((seed * 7919) % 13 - 6) * 1e-4 + noise


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    root = tmp_path / "project"
    shutil.copytree(TINYWORK, root)
    (root / "fleet.yaml").write_text(FLEET)
    monkeypatch.chdir(root)
    monkeypatch.setenv("FLEET_ROOT", str(root))
    monkeypatch.delenv("FLEET_BACKEND", raising=False)
    workspace = Workspace(root).ensure()
    clock = Clock()
    ledger = Ledger(workspace.ledger_path, clock=clock)
    backend = FifoBackend(clock, {"c1": "H100", "c2": "H100"}, value=value)
    for name in ("c1", "c2"):
        ledger.upsert_cluster(name, backend.name, "H100", ClusterState.UP)
    controller = Controller(workspace, ledger, backend, load_config(root), clock=clock,
                            launcher=lambda target: backend, hooks=[extend_waves, Backfill()])

    def cli(*args: str) -> dict:
        capsys.readouterr()
        assert main([*args, "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    with controller_lock(workspace) as got:  # the test drives the controller; the CLI must not start one
        assert got
        yield clock, ledger, backend, controller, cli, root


def real_unfinished(ledger: Ledger) -> int:
    counts = ledger.counts(backfill=False)
    return sum(counts.get(s, 0) for s in ("pending", "queued", "running"))


def backfill_experiments(ledger: Ledger):
    ids = set(ledger.backfill_waves())
    return [e for e in ledger.experiments() if e.wave_id in ids]


def job_starts(backend) -> dict[str, float]:
    """experiment id -> when a job of it started (jobs that never started are absent)."""
    return {parse_job_name(j.name)[0]: j.started_at for c in backend.clusters_.values() for j in c.jobs
            if j.started_at is not None}


def test_backfill_starts_within_a_cycle_yields_to_new_waves_and_keeps_to_its_cap(fleet):
    clock, ledger, backend, controller, cli, root = fleet
    (root / "screen.yaml").write_text(SCREEN.format(name="screen"))
    cli("wave", "screen.yaml")
    for _ in range(200):
        controller.cycle()
        if real_unfinished(ledger) == 0:
            break
        clock.now += 5
    assert not backfill_experiments(ledger), "nothing to backfill yet: no verdict, no best"
    cli("promote", "screen", "--top", "1")

    # 1. the cycle that records the last real result has backfill queued; the next has it running
    for _ in range(400):
        controller.cycle()
        if real_unfinished(ledger) == 0:
            break
        clock.now += 5
    else:
        pytest.fail(f"the promotion never finished: {ledger.counts()}")
    report = cli("verdict", "screen-promote")
    assert report["candidates"][0]["verdict"] == "keep"
    waiting = [e for e in backfill_experiments(ledger) if e.state in (ExperimentState.QUEUED, ExperimentState.RUNNING)]
    assert waiting, "backfill must be on the clusters in the cycle the last real result is recorded"
    recheck = ledger.wave(waiting[0].wave_id)
    assert recheck.backfill and recheck.spec["recheck"] and recheck.priority == -1000
    assert recheck.id.startswith("backfill-") and recheck.spec["backfill"]["kind"] == "recheck"
    last_real_end = max(j.ended_at for c in backend.clusters_.values() for j in c.jobs
                        if j.ended_at is not None and not ledger.wave(
                            ledger.experiment(parse_job_name(j.name)[0]).wave_id).backfill)
    # a controller that dies now is replaced by one with fresh memory: it queues the same backfill again? never
    controller = Controller(controller.workspace, ledger, backend, controller.config, clock=clock,
                            launcher=lambda target: backend, hooks=[extend_waves, Backfill()])
    clock.now += 5
    controller.cycle()
    assert [w.id for w in ledger.waves() if w.backfill] == [recheck.id]
    started = [e for e in backfill_experiments(ledger) if e.id in job_starts(backend)]
    assert started and min(job_starts(backend)[e.id] for e in started) <= last_real_end + 1e-9, \
        "a cluster waited for backfill after its last real job ended"

    # 2. a wave arriving now starts all of its experiments before any more backfill starts
    while not any(e.state == ExperimentState.QUEUED for e in backfill_experiments(ledger)):
        controller.cycle()  # wait until backfill sits in a queue behind a running job
        clock.now += 5
    (root / "later.yaml").write_text(SCREEN.format(name="later"))
    submitted_at = clock.now
    started_before = set(job_starts(backend))
    cli("wave", "later.yaml", "--track", "agent-b")  # another track: only backfill yields across tracks
    for _ in range(2000):
        controller.cycle()
        if not ledger.has_unfinished_work():
            break
        clock.now += 5
    else:
        pytest.fail(f"never finished: {ledger.counts()}")
    starts = job_starts(backend)
    later = [e.id for e in ledger.experiments(wave="later")]
    last_later_start = max(starts[e] for e in later)
    late_backfill = [e.id for e in backfill_experiments(ledger) if e.id in starts and e.id not in started_before
                     and submitted_at <= starts[e.id] < last_later_start]
    assert not late_backfill, f"backfill started while the new wave waited: {late_backfill}"
    withdrawn = [a for a in ledger.attempts() if a.state == ATTEMPT_WITHDRAWN]
    assert withdrawn and all(ledger.wave(ledger.experiment(a.experiment_id).wave_id).backfill for a in withdrawn)
    assert all(e.state == ExperimentState.DONE for e in ledger.experiments(wave="later"))

    # 3. the cap: what backfill spent stays under it, and the pairs past it were cancelled, never run
    spend = backfill_spend(ledger)
    assert spend.spent <= CAP and spend.committed == 0
    over = [e for e in backfill_experiments(ledger) if e.state == ExperimentState.CANCELLED]
    assert over and all("backfill cap" in e.reason for e in over)
    assert not {e.id for e in over} & set(starts), "a cancelled backfill run started"
    ran = [parse_job_name(j.name)[0] for c in backend.clusters_.values() for j in c.jobs if j.ended_at is not None
           and j.state.value == "succeeded"]
    assert len(ran) == len(set(ran)), "an experiment ran twice"


def test_backfill_off_queues_nothing(fleet):
    clock, ledger, backend, controller, cli, root = fleet
    (root / "fleet.yaml").write_text(FLEET.replace(f"max_gpu_hours: {CAP}", "enabled: false"))
    controller.config = load_config(root)
    (root / "screen.yaml").write_text(SCREEN.format(name="screen"))
    cli("wave", "screen.yaml")
    for _ in range(100):
        controller.cycle()
        if real_unfinished(ledger) == 0:
            break
        clock.now += 5
    cli("promote", "screen", "--top", "1")
    for _ in range(400):
        controller.cycle()
        if not ledger.has_unfinished_work():
            break
        clock.now += 5
    assert cli("verdict", "screen-promote")["best_keep"] is not None
    assert not backfill_experiments(ledger)


# ---- the pure rules, as tables --------------------------------------------------------------------

TIERS = {"screen": ["H100"], "validate": ["H200"]}
SLOTS = [ClusterSlot("a", "H100", 1), ClusterSlot("b", "H200", 0), ClusterSlot("c", "H200", 2)]


def option(key: str, tier: str = "validate", runs: int = 2, hours: float = 0.1) -> Option:
    return Option(key, "pairs", tier, runs, hours, "")


def test_free_rooms_are_what_pending_work_leaves():
    assert free_rooms(SLOTS, [], 2, TIERS) == [Room("a", "H100", 1), Room("b", "H200", 2)]
    # a pending validation takes a slot on b; a pending screen fills a
    pending = [PendingExperiment("v", "validate"), PendingExperiment("s", "screen")]
    assert free_rooms(SLOTS, pending, 2, TIERS) == [Room("b", "H200", 1)]
    # pending backfill counts as taking room too (it is placed after the rest)
    pending.append(PendingExperiment("f", "validate", backfill=True))
    assert free_rooms(SLOTS, pending, 2, TIERS) == []
    # a resting cluster offers no room
    assert free_rooms([ClusterSlot("a", "H100", 0, accepting=False)], [], 2, TIERS) == []


@pytest.mark.parametrize("rooms, options, made, cap, chosen", [
    ([Room("b", "H200", 2)], [option("x"), option("y")], set(), 1.0, ["x"]),  # x fills b's two slots
    ([Room("b", "H200", 3)], [option("x"), option("y")], set(), 1.0, ["x", "y"]),
    ([Room("b", "H200", 3)], [option("x"), option("y")], {"x"}, 1.0, ["y"]),  # made once
    ([Room("b", "H200", 3)], [option("x", hours=0.5), option("y", hours=0.2)], set(), 0.3, ["y"]),  # the cap
    ([Room("a", "H100", 1)], [option("x"), option("s", tier="screen")], set(), 1.0, ["s"]),  # x waits for an H200
    ([], [option("x")], set(), 1.0, []),
])
def test_choose(rooms, options, made, cap, chosen):
    assert [o.key for o in choose(SLOTS, rooms, options, TIERS, made, cap)] == chosen


@pytest.mark.parametrize("pending, spent, committed, cap, cancelled", [
    ([("a", 0.1), ("b", 0.1)], 0.0, 0.2, 0.3, []),
    ([("a", 0.1), ("b", 0.1)], 0.15, 0.2, 0.3, ["b"]),  # newest first
    ([("a", 0.1), ("b", 0.1)], 0.3, 0.2, 0.3, ["b", "a"]),
    ([], 0.5, 0.1, 0.3, []),  # over, but nothing pending to take back (queued and running finish)
])
def test_over_cap(pending, spent, committed, cap, cancelled):
    assert over_cap(pending, spent, committed, cap) == cancelled


def test_a_place_a_search_will_take_is_not_room_for_backfill(tmp_path):
    """A search wave makes its trials when the scheduler gives it a slot: its planned trials count as
    work, so backfill does not queue on the places they will take, and does on places left over."""
    from fleet.core.ledger_rows import NewExperiment

    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path)
    ledger.upsert_cluster("c1", "fifo", "H100", ClusterState.UP)
    config = load_config(tmp_path)  # defaults: queue depth 2
    trials = [NewExperiment({}, f"t{i}", 0, "", f"trial {i}", trial=i) for i in range(2)]
    ledger.add_wave("search", "screen", {}, "s", trials, kind="search")
    assert {e.state for e in ledger.experiments()} == {ExperimentState.PLANNED}
    _, rooms, _ = Backfill._rooms(ledger, config)
    assert rooms == []  # the search takes both places
    ledger.upsert_cluster("c2", "fifo", "H100", ClusterState.UP)
    _, rooms, _ = Backfill._rooms(ledger, config)
    assert sum(r.free for r in rooms) == 2  # a second cluster: the two places the search's two trials leave


def _promote_wave(wave_id: str) -> WaveRow:
    spec = {"name": wave_id, "source_wave": "s", "seeds": 3, "pooled": True,
            "rule": {"alpha": 0.05, "min_effect": 0.0005, "max_seeds": 16, "first_look": 3, "design": "sequential"},
            "baseline": {"config": {"A": "1"}, "config_key": "base", "source": "s"},
            "candidates": [{"config_key": "k-a", "config": {"A": "2"}, "label": "A=2", "description": ""},
                           {"config_key": "k-b", "config": {"A": "3"}, "label": "A=3", "description": ""}]}
    return WaveRow(wave_id, wave_id, "validate", "promote", spec, {}, "snap", "s", None, 1.0)


@pytest.mark.parametrize("a, b, continued", [
    ((16, 40), None, True),  # 24 more pairs give 80% power: affordable
    ((16, 35459), None, False),  # the verdict said move on: no affordable number of pairs settles it
    ((16, 40), (16, 73692), False),  # one of the wave's promising candidates cannot be settled: move on (`fleet next` too)
    ((16, 40), (16, -1), True),  # the other one has a negative gain: not a reason to stop
])
def test_more_pairs_only_where_an_affordable_number_can_settle_it(a, b, continued):
    """Backfill's more pairs follow the rule `fleet next`'s continue action and the verdict's hint follow
    (`pairs_to_settle`): never for a wave whose inconclusive candidates no affordable number of pairs settles."""
    from fleet.core.ledger_rows import ExperimentRow
    from fleet.research.backfill import pair_options

    wave = _promote_wave("w-promote")
    cands = [{"experiment": "w-promote-002", "config_key": "k-a", "label": "A=2", "verdict": "inconclusive",
              "gain": 0.002, "n": a[0], "pairs_for_power": a[1]}]
    if b is not None:
        cands.append({"experiment": "w-promote-003", "config_key": "k-b", "label": "A=3", "verdict": "inconclusive",
                      "gain": 0.001 if b[1] > 0 else -0.001, "n": b[0], "pairs_for_power": abs(b[1])})
    runs = [ExperimentRow(c["experiment"], wave.id, i, {}, c["config_key"], 0, "", "", "snap", "validate",
                          ExperimentState.DONE, 1, "", 1.0, 2.0, 2.0) for i, c in enumerate(cands)]
    report = {"wave": wave.id, "complete": True, "recheck": False, "candidates": cands}
    options = pair_options([wave], runs, {wave.id: report}, None)
    assert [o.option.key for o in options] == (["pairs:snap:k-a"] if continued else [])
