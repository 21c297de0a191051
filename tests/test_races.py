"""Races that used to run an experiment twice or leave a job unsupervised, forced deterministically.

Each test interleaves two actors at the exact point where the race bites (a hook inside one
actor runs the other), then lets the controller finish and counts what really ran.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from fleet_cli import make_project, teardown

from fleet.backends.local import LocalBackend
from fleet.backends.slot_queue import END_LINE, SlotQueue
from fleet.config import FleetConfig, Tier, load_config
from fleet.core.controller import Controller
from fleet.core.daemon import controller_lock
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import NewExperiment
from fleet.core.transitions import Transitions
from fleet.types import ClusterState, ExperimentState, JobSpec, JobState, parse_job_name
from fleet.workspace import Workspace


@pytest.fixture
def fleet(tmp_path, monkeypatch, capsys):
    runner = make_project(tmp_path, monkeypatch, capsys)
    yield runner
    teardown(runner)


def ran_to_the_end(root: Path) -> dict[str, list[str]]:
    """experiment -> names of its jobs that ran to their end on any local slot: their log ends with
    the line the job's shell writes after the job (a killed or cancelled job's does not)."""
    out: dict[str, list[str]] = {}
    for slot in sorted((root / ".fleet" / "local").iterdir()):
        for job in SlotQueue(slot).jobs():
            log = Path(job.log)
            last = log.read_text().rstrip("\n").rsplit("\n", 1)[-1] if log.exists() else ""
            if last.startswith(END_LINE.format(code="")):
                out.setdefault(parse_job_name(job.name)[0], []).append(job.name)
    return out


def drive(controller: Controller, ledger: Ledger, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while ledger.has_unfinished_work():
        assert time.monotonic() < deadline, ledger.counts()
        controller.cycle()
        time.sleep(0.05)


def started_wave(fleet) -> tuple[Ledger, Controller]:
    """Two 1.5-second experiments, each running on its own slot, under an in-process controller."""
    fleet.write("two.yaml", "name: two\nenv: {TIME_BUDGET: 1.5}\ngrid:\n  DEPTH: [1, 2]\n")
    fleet.json("wave", "two.yaml")  # the held lock keeps `fleet` from starting a controller of its own
    workspace = Workspace(fleet.root)
    ledger = Ledger(workspace.ledger_path)
    config = load_config(fleet.root)
    controller = Controller(workspace, ledger, LocalBackend(workspace, config), config)
    deadline = time.monotonic() + 60
    while ledger.counts("two").get("running", 0) < 2:
        assert time.monotonic() < deadline, ledger.counts()
        controller.cycle()
        time.sleep(0.05)
    assert {a.cluster for a in ledger.attempts(active=True)} == {"local-01", "local-02"}
    return ledger, controller


def test_down_between_its_read_and_its_requeue_runs_nothing_twice(fleet, monkeypatch):
    """`fleet down local-01` reads the active attempts; the controller requeues and resubmits that
    work before `fleet down` requeues it from its (now stale) list."""
    with controller_lock(Workspace(fleet.root)) as got:
        assert got
        ledger, controller = started_wave(fleet)
        real, fired = Transitions.requeue, []

        def racing(self, attempt, reason, *args, **kwargs):
            if "torn down" in reason and not fired:  # `fleet down`, between its read and its requeue
                fired.append(controller.cycle())
            return real(self, attempt, reason, *args, **kwargs)

        monkeypatch.setattr(Transitions, "requeue", racing)
        fleet.json("down", "local-01", "-y")
        assert fired and fired[0].submitted == 1  # the controller did resubmit it meanwhile
        drive(controller, ledger)
    assert ledger.counts("two") == {"done": 2}
    assert all(len(jobs) == 1 for jobs in ran_to_the_end(fleet.root).values()), ran_to_the_end(fleet.root)
    assert {c.name: c.state for c in ledger.clusters()}["local-01"] == ClusterState.DOWN


def test_down_while_the_controller_polls_stays_down(fleet):
    """`fleet down local-01` lands between the controller's cluster read and its queue read: the
    controller sees the slot lost, but must not overwrite DOWN with LOST nor requeue twice."""
    with controller_lock(Workspace(fleet.root)) as got:
        assert got
        ledger, controller = started_wave(fleet)
        backend = controller.backend
        real_queues, fired = backend.queues, []

        def racing_queues(clusters):
            if not fired:
                fired.append(fleet.json("down", "local-01", "-y"))
            return real_queues(clusters)

        backend.queues = racing_queues
        report = controller.cycle()
        assert fired and report.lost_clusters == []  # seen lost, but DOWN is what the user did
        drive(controller, ledger)
    assert {c.name: c.state for c in ledger.clusters()}["local-01"] == ClusterState.DOWN
    assert ledger.counts("two") == {"done": 2}
    assert all(len(jobs) == 1 for jobs in ran_to_the_end(fleet.root).values())
    assert [a.state for a in ledger.attempts("two-001")] == ["lost", "succeeded"]


# --- a `sky exec` that lands after its attempt was given up ---------------------------------------
GO_RUN = 'while [ ! -f "$GO" ]; do sleep 0.02; done\nprintf -- "---\\nval_bpb: 1.5\\nnum_steps: 3\\n"\n'


def test_a_late_landing_sky_exec_is_cancelled_as_an_orphan(tmp_path, monkeypatch):
    """A controller died while its `sky exec` sat on the API server; the next one gave the attempt
    up after the grace period and ran attempt 2. Then attempt 1 lands: it must never run."""
    from fleet.backends.skypilot import SkyPilotBackend
    from fleet.testing import fake_sky

    monkeypatch.setenv("FAKE_SKY_HOME", str(tmp_path / "fake-sky"))
    monkeypatch.setenv("FAKE_SKY_LATENCY_S", "0")
    (tmp_path / "experiment.yaml").write_text("name: e\nresources: {accelerators: {H100: 1}}\nworkdir: .\n"
                                              "run: cd snapshots/$FLEET_SNAPSHOT && bash run.sh\n")
    workspace = Workspace(tmp_path).ensure()
    (workspace.snapshot_dir("s1")).mkdir(parents=True)
    (workspace.snapshot_dir("s1") / "run.sh").write_text(GO_RUN)
    go = tmp_path / "go"
    now = [1000.0]
    config = FleetConfig(tiers={"any": Tier(accelerators=[], seeds=1)})
    backend = SkyPilotBackend(workspace, config, sdk=fake_sky, sleep=lambda s: None)
    try:
        backend.up(["gpu-01"], ["H100"])
        ledger = Ledger(workspace.ledger_path, clock=lambda: now[0])
        ledger.upsert_cluster("gpu-01", "sky", "H100", ClusterState.UP)
        ledger.add_wave("w", "any", {"timeout_s": 600}, "s1", [NewExperiment({"GO": str(go)}, "k", 0, "", "")])
        # What the dead controller left: attempt 1 recorded, its exec sent but still on the server.
        first = ledger.start_attempt("w-001", "gpu-01", "H100", lambda n: f".fleet/logs/w-001.a{n}.log")
        fake_sky.hold_execs("gpu-01")
        late = JobSpec("w-001", first.n, "s1", {"GO": str(go)}, 600.0, "H100")
        fake_sky.exec(fake_sky.Task.from_yaml_config(backend.job_config("gpu-01", late)), cluster_name="gpu-01")

        controller = Controller(workspace, ledger, backend, config, clock=lambda: now[0])
        controller.cycle()  # within the grace period: attempt 1 may still land
        assert ledger.experiment("w-001").state == ExperimentState.QUEUED and ledger.attempts("w-001")[0].n == 1
        now[0] += backend.submission_grace_s + 1
        controller.cycle()  # given up; attempt 2 submitted
        deadline = time.monotonic() + 20
        while [a.state for a in ledger.attempts("w-001")] != ["lost", "running"]:
            assert time.monotonic() < deadline, ledger.attempts("w-001")
            controller.cycle()
            time.sleep(0.02)

        fake_sky.release_execs("gpu-01")  # attempt 1 lands now, queued behind attempt 2
        deadline = time.monotonic() + 20
        while "w-001.a1" not in {r.job_name for r in fake_sky.get(fake_sky.queue("gpu-01"))}:
            assert time.monotonic() < deadline, "the held exec never landed"
            time.sleep(0.02)
        report = controller.cycle()
        assert report.orphans == 1
        go.touch()  # attempt 2 may finish now
        drive(controller, ledger)
        records = {r.job_name: r.status.value for r in fake_sky.get(fake_sky.queue("gpu-01"))}
        assert records["w-001.a1"] == "CANCELLED" and records["w-001.a2"] == "SUCCEEDED"
        late_record = next(r for r in fake_sky.get(fake_sky.queue("gpu-01")) if r.job_name == "w-001.a1")
        assert late_record.start_at is None  # cancelled before it ever started
        assert ledger.result("w-001").val_bpb == 1.5 and ledger.experiment("w-001").state == ExperimentState.DONE
    finally:
        fake_sky.release_execs("gpu-01")
        fake_sky.reset()


def test_a_cancel_before_the_job_appears_still_stops_it(fleet):
    """The user cancels an experiment whose attempt has no job id yet; the job appears later (a
    late exec): the cancel must not have been a no-op."""
    with controller_lock(Workspace(fleet.root)) as got:
        assert got
        fleet.write("one.yaml", "name: one\nenv: {TIME_BUDGET: 30}\nexperiments:\n  - {DEPTH: 1}\n")
        fleet.json("wave", "one.yaml")
        workspace = Workspace(fleet.root)
        ledger = Ledger(workspace.ledger_path)
        config = load_config(fleet.root)
        backend = LocalBackend(workspace, config)
        attempt = ledger.start_attempt("one-001", "local-01", "cpu", lambda n: f".fleet/logs/one-001.a{n}.log")
        fleet.json("cancel", "one-001")
        controller = Controller(workspace, ledger, backend, config)
        controller.cycle()  # no job yet: the attempt is closed as cancelled
        assert ledger.attempt(attempt.id).state in ("cancelled", "lost")
        job = JobSpec("one-001", attempt.n, ledger.experiment("one-001").snapshot, {"TIME_BUDGET": "30"}, 600.0)
        job_id = backend.submit("local-01", job)  # ...and then its submission lands after all
        report = controller.cycle()
        assert report.orphans == 1
        queue = SlotQueue(fleet.root / ".fleet" / "local" / "local-01")
        deadline = time.monotonic() + 20
        while queue.job(job_id).state not in ("cancelled",):
            assert time.monotonic() < deadline, queue.job(job_id)
            time.sleep(0.05)
    assert ledger.counts("one") == {"cancelled": 1}
    assert JobState.CANCELLED.value == queue.job(job_id).state
