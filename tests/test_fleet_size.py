"""A fleet that keeps its size: the pure replacement decision, the launcher off the cycle, and the
acceptance runs on the fake SkyPilot SDK (2 of 8 clusters lost mid-wave)."""
from __future__ import annotations

import threading
import time

import pytest
from fifo_backend import FifoBackend

from fleet.backends.skypilot import SkyPilotBackend
from fleet.config import FleetConfig, FleetSizeConfig, Tier
from fleet.core.controller import Controller
from fleet.core.fleet_size import (
    LAUNCHES_KEY,
    FleetTarget,
    Launch,
    Replenisher,
    backoff_s,
    fleet_target,
    next_names,
    record_target,
    replacements,
    shrink_target,
)
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ClusterRow, NewExperiment
from fleet.testing import fake_sky
from fleet.types import ClusterState, ExperimentState
from fleet.workspace import Workspace

UP, LOST, DOWN, PROV = ClusterState.UP, ClusterState.LOST, ClusterState.DOWN, ClusterState.PROVISIONING
TARGET = FleetTarget(4, ("H100", "H200"), "sky", "gpu")


def R(name, acc="H100", state=UP, updated=0.0, replaces=None):
    return ClusterRow(name, "sky", acc, state, 0.0, updated, replaces)


# --- the decision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("clusters, kwargs, expected", [
    # at its size: nothing
    ([R("gpu-01"), R("gpu-02", "H200"), R("gpu-03"), R("gpu-04", "H200")], {}, []),
    # two lost: each replaced with its own accelerator, most recently lost first, under new names
    ([R("gpu-01"), R("gpu-02", "H200", LOST, 5.0), R("gpu-03", "H100", LOST, 9.0), R("gpu-04", "H200")], {},
     [Launch("gpu-05", "H100", "gpu-03"), Launch("gpu-06", "H200", "gpu-02")]),
    # a launch under way counts; a lost cluster already replaced is not replaced twice
    ([R("gpu-01"), R("gpu-02", "H200", LOST), R("gpu-05", "H200", PROV, replaces="gpu-02"), R("gpu-03"),
      R("gpu-04", "H200")], {}, []),
    # a replacement that was lost in turn is replaced (the chain goes on)
    ([R("gpu-01"), R("gpu-02", "H200", LOST), R("gpu-05", "H200", LOST, replaces="gpu-02"), R("gpu-03"),
      R("gpu-04", "H200")], {}, [Launch("gpu-06", "H200", "gpu-05")]),
    # short with nothing lost (the target grew): the accelerators the target lacks
    ([R("gpu-01"), R("gpu-02", "H200")], {}, [Launch("gpu-03", "H100"), Launch("gpu-04", "H200")]),
    # no work waiting, the budget cap reached, or the back-off not over: nothing
    ([R("gpu-01"), R("gpu-02", "H200", LOST)], {"work_waiting": False}, []),
    ([R("gpu-01"), R("gpu-02", "H200", LOST)], {"budget_left": False}, []),
    ([R("gpu-01"), R("gpu-02", "H200", LOST)], {"now": 10.0, "next_try_at": 20.0}, []),
])
def test_replacement_table(clusters, kwargs, expected):
    args = {"work_waiting": True, "budget_left": True, "now": 100.0, **kwargs}
    assert replacements(TARGET, clusters, **args)[:len(expected) or None] == expected


def test_no_target_means_no_replacement_and_down_shrinks_the_target(tmp_path):
    ledger = Ledger(Workspace(tmp_path).ensure().ledger_path)
    assert replacements(None, [R("gpu-01", state=LOST)], work_waiting=True, budget_left=True, now=0.0) == []
    record_target(ledger, TARGET)
    shrink_target(ledger, 1)
    assert fleet_target(ledger).count == 3
    shrink_target(ledger, 3)
    assert fleet_target(ledger) is None


def test_names_are_never_reused_and_backoff_doubles_to_a_cap():
    assert next_names("gpu", ["gpu-01", "gpu-09", "other-12"], 2) == ["gpu-10", "gpu-11"]
    assert [backoff_s(n, 60, 1800) for n in (1, 2, 3, 6, 10)] == [60, 120, 240, 1800, 1800]


# --- off the cycle, crash-safe ---------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ledger_with_lost_cluster(tmp_path, clock):
    ledger = Ledger(Workspace(tmp_path).ensure().ledger_path, clock=clock)
    record_target(ledger, FleetTarget(2, ("H100",), "fifo", "gpu"))
    ledger.upsert_cluster("gpu-01", "fifo", "H100", UP)
    ledger.upsert_cluster("gpu-02", "fifo", "H100", LOST)
    ledger.add_wave("w", "screen", {}, "snap", [NewExperiment({}, "k", 0, "", "")])
    return ledger


def test_a_launch_does_not_block_the_cycle_and_its_outcome_is_read_next_cycle(tmp_path):
    clock = Clock()
    ledger = _ledger_with_lost_cluster(tmp_path, clock)
    release = threading.Event()
    backend = FifoBackend(clock)

    class SlowLaunch:
        def up(self, names, accelerators):
            release.wait(30)  # a SkyPilot launch takes minutes
            return backend.up(names, accelerators)

    replenisher = Replenisher(ledger, FleetConfig(), lambda target: SlowLaunch(), clock)
    assert replenisher.step() == ["gpu-03"]  # returns at once
    assert ledger.clusters()[-1] == ledger.clusters()[-1].__class__("gpu-03", "fifo", "H100", PROV, clock.now,
                                                                  clock.now, "gpu-02")
    assert replenisher.step() == []  # under way: not launched twice
    release.set()
    replenisher.wait_idle(30)
    replenisher.step()
    assert {c.name: (c.state, c.replaces) for c in ledger.clusters()}["gpu-03"] == (UP, "gpu-02")
    assert not replenisher.busy()


def test_a_controller_that_died_mid_launch_is_followed_by_one_that_launches_the_same_name(tmp_path):
    clock = Clock()
    ledger = _ledger_with_lost_cluster(tmp_path, clock)
    never = threading.Event()

    class Hangs:
        def up(self, names, accelerators):
            never.wait(30)
            return []

    Replenisher(ledger, FleetConfig(), lambda target: Hangs(), clock).step()  # this controller "dies" now
    assert "gpu-03" in ledger.get_meta(LAUNCHES_KEY)
    backend = FifoBackend(clock)
    again = Replenisher(ledger, FleetConfig(), lambda target: backend, clock)
    assert again.step() == ["gpu-03"]  # resumed under the same name: `up` re-adopts, never a second cluster
    again.wait_idle(30)
    again.step()
    never.set()
    assert backend.up_calls == [(["gpu-03"], ["H100"])]
    assert [c.name for c in ledger.clusters([UP])] == ["gpu-01", "gpu-03"]


def test_a_failed_launch_backs_off_then_tries_again(tmp_path):
    clock = Clock()
    ledger = _ledger_with_lost_cluster(tmp_path, clock)
    calls = []

    class NoCapacity:
        def up(self, names, accelerators):
            calls.append(names[0])
            raise RuntimeError("no capacity for H100")

    config = FleetConfig(fleet_size=FleetSizeConfig(backoff_s=60))
    replenisher = Replenisher(ledger, config, lambda target: NoCapacity(), clock)
    replenisher.step()
    replenisher.wait_idle(30)
    replenisher.step()  # reads the failure: gpu-03 is down, the next try waits 60s
    assert calls == ["gpu-03"] and {c.name: c.state for c in ledger.clusters()}["gpu-03"] == DOWN
    clock.now += 59
    assert replenisher.step() == []
    clock.now += 2
    assert replenisher.step() == ["gpu-04"]


# --- the controller keeps idle clusters from autodown while work is queued ---------------------------
def test_idle_clusters_are_kept_alive_only_while_work_is_queued(tmp_path):
    clock = Clock()
    workspace = Workspace(tmp_path).ensure()
    ledger = Ledger(workspace.ledger_path, clock=clock)
    backend = FifoBackend(clock, {"h100": "H100", "h200": "H200"})
    for name, acc in (("h100", "H100"), ("h200", "H200")):
        ledger.upsert_cluster(name, backend.name, acc, UP)
    config = FleetConfig(tiers={"screen": Tier(accelerators=["H100"])}, queue_depth=1,
                         fleet_size=FleetSizeConfig(autodown_minutes=30))
    controller = Controller(workspace, ledger, backend, config, clock=clock, launcher=lambda t: backend)
    ledger.add_wave("w", "screen", {}, "snap", [NewExperiment({"TIME_BUDGET": "3000"}, f"k{i}", 0, "", "")
                                                for i in range(3)])
    controller.cycle()
    assert backend.kept_alive == [["h200"]]  # the busy H100 is not idle; the idle H200 must not go down
    clock.now += 60
    controller.cycle()
    assert backend.kept_alive == [["h200"]]  # every 10 minutes (a third of autodown), not every cycle
    clock.now += 600
    controller.cycle()
    assert backend.kept_alive == [["h200"], ["h200"]]
    for exp in ledger.experiments():
        ledger.set_state(exp.id, ExperimentState.CANCELLED)
    for _ in range(3):
        controller.cycle()
    clock.now += 3600
    controller.cycle()
    assert backend.kept_alive == [["h200"], ["h200"]]  # no work left: idle clusters may autodown


# --- acceptance on the fake SkyPilot SDK -----------------------------------------------------------
@pytest.fixture
def project(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_HOME", str(tmp_path_factory.mktemp("fake-sky")))
    monkeypatch.setenv("FAKE_SKY_LATENCY_S", "0")
    (tmp_path / "experiment.yaml").write_text(
        "name: experiment\nresources:\n  infra: k8s\n  accelerators: {H100: 1, H200: 1}\nworkdir: .\n"
        "setup: |\n  true\nrun: |\n  cd \"snapshots/$FLEET_SNAPSHOT\" && bash run.sh\n")
    (tmp_path / ".gitignore").write_text(".fleet/\n")
    workspace = Workspace(tmp_path).ensure()
    snap = workspace.snapshot_dir("s1")
    snap.mkdir(parents=True)
    (snap / "run.sh").write_text('sleep 0.3\nprintf -- "---\\nval_bpb: 1.0\\nnum_steps: 1\\n"\n')
    yield workspace
    fake_sky.reset()


def _fleet_of_eight(workspace, config):
    def backend():
        return SkyPilotBackend(workspace, config, sdk=fake_sky, sleep=time.sleep, setup_poll_s=0.02)

    names = [f"gpu-{i:02d}" for i in range(1, 9)]
    ledger = Ledger(workspace.ledger_path)
    record_target(ledger, FleetTarget(8, ("H100", "H200"), "sky", "gpu", "k8s"))
    for info in backend().up(names, ["H100", "H200"] * 4):
        ledger.upsert_cluster(info.name, "sky", info.accelerator, info.state)
    return ledger, backend


def _run_losing_two(workspace, ledger, backend, config, n, until=lambda ledger: True):
    """Run the wave, lose gpu-02 and gpu-07 once both are busy, and cycle until the work and `until` are done."""
    ledger.add_wave("w", "any", {"timeout_s": 120}, "s1",
                    [NewExperiment({"K": str(i)}, f"k{i}", 0, "", "") for i in range(n)])
    controller = Controller(workspace, ledger, backend(), config, launcher=lambda target: backend())
    killed = False
    deadline = time.monotonic() + 120
    while ledger.has_unfinished_work() or not until(ledger) or controller.replenisher.busy():
        assert time.monotonic() < deadline, (ledger.counts(), [(c.name, c.state) for c in ledger.clusters()])
        controller.cycle()
        busy = {a.cluster for a in ledger.attempts(active=True)}
        if not killed and {"gpu-02", "gpu-07"} <= busy:
            fake_sky.kill_cluster("gpu-02")
            fake_sky.kill_cluster("gpu-07")
            killed = True
        time.sleep(0.05)
    assert killed
    controller.replenisher.wait_idle(30)
    return controller


def _exactly_once(ledger, states=(ExperimentState.DONE,)):
    per_experiment: dict[str, list[str]] = {}
    for attempt in ledger.attempts():
        per_experiment.setdefault(attempt.experiment_id, []).append(attempt.state)
    done = [e for e in ledger.experiments() if e.state == ExperimentState.DONE]
    assert all(per_experiment[e.id].count("succeeded") == 1 for e in done), per_experiment
    assert len(ledger.results()) == len(done)
    return done


def test_two_of_eight_clusters_lost_mid_wave_are_replaced_and_every_experiment_runs_once(project):
    config = FleetConfig(tiers={"any": Tier(accelerators=[], seeds=1)})
    ledger, backend = _fleet_of_eight(project, config)

    def replaced(ledger):
        return {c.replaces for c in ledger.clusters([UP]) if c.replaces} == {"gpu-02", "gpu-07"}

    _run_losing_two(project, ledger, backend, config, 60, until=replaced)
    clusters = {c.name: c for c in ledger.clusters()}
    assert {n for n, c in clusters.items() if c.state == LOST} == {"gpu-02", "gpu-07"}
    new = {n: c for n, c in clusters.items() if c.replaces}
    assert sorted(new) == ["gpu-09", "gpu-10"] and all(c.state == UP for c in new.values())
    # the same accelerator as the lost cluster (gpu-02 and gpu-07 had H200 and H100)
    assert {c.replaces: c.accelerator for c in new.values()} == {"gpu-02": "H200", "gpu-07": "H100"}
    assert fake_sky.get(fake_sky.status(["gpu-09", "gpu-10"]))  # really launched on the "cluster"
    done = _exactly_once(ledger)
    assert len(done) == 60 == len(ledger.experiments())


def test_with_the_budget_cap_reached_no_replacement_is_launched(project):
    # 300 s of expected GPU time per experiment: the cap admits 20 of the 40, the rest are held
    config = FleetConfig(tiers={"any": Tier(accelerators=[], seeds=1)}, max_gpu_hours=20 * 300 / 3600)
    ledger, backend = _fleet_of_eight(project, config)
    controller = _run_losing_two(project, ledger, backend, config, 40)
    assert controller.replenisher.busy() is False
    assert not any(c.replaces for c in ledger.clusters())
    assert len(ledger.clusters()) == 8
    done = _exactly_once(ledger)
    assert len(done) == 20 and ledger.counts().get("held") == 20


def test_a_cluster_torn_down_while_it_launched_stays_down_and_is_torn_down_again(tmp_path):
    clock = Clock()
    ledger = _ledger_with_lost_cluster(tmp_path, clock)
    release = threading.Event()
    backend = FifoBackend(clock)
    downs = []

    class SlowLaunch:
        def up(self, names, accelerators):
            release.wait(30)
            return backend.up(names, accelerators)

        def down(self, names):
            downs.append(list(names))

    replenisher = Replenisher(ledger, FleetConfig(), lambda target: SlowLaunch(), clock)
    assert replenisher.step() == ["gpu-03"]
    ledger.upsert_cluster("gpu-03", "fifo", "H100", DOWN)  # `fleet down gpu-03` meanwhile
    release.set()
    replenisher.wait_idle(30)
    replenisher.step()
    deadline = time.monotonic() + 30
    while not downs:
        assert time.monotonic() < deadline, "the late cluster was not torn down"
        time.sleep(0.01)
    assert {c.name: c.state for c in ledger.clusters()}["gpu-03"] == DOWN and downs == [["gpu-03"]]
