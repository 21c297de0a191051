"""The SkyPilot backend, driven through the fake SDK (`fleet.testing.fake_sky`), which runs real processes."""
from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from backend_contract import BackendContract, wait_terminal, write_contract_project

from fleet.backends.base import (
    BackendError,
    BackendUnavailable,
    ClusterLost,
    NotSubmitted,
    ProvisionFailed,
    SetupFailed,
)
from fleet.backends.sky_sdk import is_connection_error
from fleet.backends.skypilot import (
    JOB_STATES,
    SkyPilotBackend,
    build_launch_config,
    build_task_config,
    job_info,
)
from fleet.config import FleetConfig
from fleet.testing import fake_sky
from fleet.types import ClusterState, JobSpec, JobState
from fleet.workspace import Workspace

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]

# The shape of the repo's experiment.yaml (a fixture copy, so these tests do not depend on it).
FIXTURE_TASK = """\
name: experiment
resources:
  infra: k8s
  accelerators: {H100: 1, H200: 1}
  image_id: docker:nvcr.io/nvidia/pytorch:25.01-py3
workdir: .
envs:
  EXPERIMENT_ID: ""
  FLEET_SNAPSHOT: ""
  TIME_BUDGET: "300"
setup: |
  echo "setup $SKYPILOT_CLUSTER_NAME $(cat project.txt) $FLEET_BACKEND" >> setup.count
run: |
  cd "snapshots/$FLEET_SNAPSHOT" && bash run.sh
"""
RUN_SH = 'echo "id=$EXPERIMENT_ID snap=$FLEET_SNAPSHOT budget=$TIME_BUDGET lr=$LR code=$(cat version)"\n' \
         'echo "synced=$(ls .. | tr "\\n" " ")"\nsleep "${SLEEP:-0}"\nexit "${EXIT:-0}"\n'


@pytest.fixture
def fake(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_HOME", str(tmp_path_factory.mktemp("fake-sky")))
    monkeypatch.setenv("FAKE_SKY_LATENCY_S", "0")
    yield fake_sky
    fake_sky.reset()


def make_snapshot(workspace: Workspace, snap: str, version: str) -> str:
    d = workspace.snapshot_dir(snap)
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.sh").write_text(RUN_SH)
    (d / "version").write_text(version)
    return snap


@pytest.fixture
def project(tmp_path, fake):
    (tmp_path / "experiment.yaml").write_text(FIXTURE_TASK)
    (tmp_path / "project.txt").write_text("project-file")
    (tmp_path / ".gitignore").write_text(".fleet/\n")
    workspace = Workspace(tmp_path).ensure()
    make_snapshot(workspace, "s1", "v1")
    return workspace


SETUP_POLL_S = 0.02


def make_backend(workspace: Workspace, **kwargs) -> tuple[SkyPilotBackend, list[float]]:
    """A backend whose back-off sleeps are recorded, not slept; waiting for a setup job really waits."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        if seconds <= SETUP_POLL_S:
            time.sleep(seconds)
        else:
            sleeps.append(seconds)

    backend = SkyPilotBackend(workspace, FleetConfig(), sdk=kwargs.pop("sdk", fake_sky), sleep=sleep,
                              setup_poll_s=SETUP_POLL_S, **kwargs)
    return backend, sleeps


def raw_queue(cluster: str) -> dict[int, tuple[str, str]]:
    """The cluster's queue as SkyPilot shows it: job id -> (name, status)."""
    return {r.job_id: (r.job_name, r.status.value) for r in fake_sky.get(fake_sky.queue(cluster))}


def job(exp: str, snap: str = "s1", attempt: int = 1, accelerator: str | None = "H100", timeout_s: float = 60,
        **envs: str) -> JobSpec:
    return JobSpec(exp, attempt, snap, {k: str(v) for k, v in envs.items()}, timeout_s, accelerator)


def setup_count(fake_home: Path, cluster: str) -> int:
    path = fake_home / "clusters" / cluster / "sky_workdir" / "setup.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_running(backend, cluster: str, job_id: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not any(j.job_id == job_id and j.state == JobState.RUNNING for j in backend.queues([cluster])[cluster]):
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.03)


# --- the shared backend contract --------------------------------------------------------------
class TestSkyPilotContract(BackendContract):
    @pytest.fixture(autouse=True)
    def _fake_home(self, fake):
        yield

    def backend_setup(self, tmp_path):
        write_contract_project(tmp_path)
        workspace = Workspace(tmp_path).ensure()
        backend = SkyPilotBackend(workspace, FleetConfig(), sdk=fake_sky, sleep=lambda s: None)
        names = ["gpu-01", "gpu-02"]
        backend.up(names, ["H100", "H100"])
        return backend, workspace, names


# --- choosing the SDK -------------------------------------------------------------------------
def test_sdk_comes_from_env_and_sky_is_not_imported(tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fleet.backends.skypilot import SkyPilotBackend\n"
        "from fleet.config import FleetConfig\nfrom fleet.workspace import Workspace\n"
        "b = SkyPilotBackend(Workspace(Path('.')), FleetConfig())\n"
        "assert 'sky' not in sys.modules, 'constructing the backend imported sky'\n"
        "print(b.sdk.__name__, b.clusters(), 'sky' in sys.modules)\n"
    )
    env = {**os.environ, "FLEET_SKY_SDK": "fleet.testing.fake_sky", "FAKE_SKY_HOME": str(tmp_path / "fs"),
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fleet.testing.fake_sky", "[]", "False"]


# --- up: parallel, re-adopting, recording the real accelerator, retrying ----------------------
def test_up_launches_in_parallel_runs_setup_once_and_readopts(project, fake, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_LATENCY_S", "0.3")
    backend, _ = make_backend(project)
    names = ["gpu-01", "gpu-02", "gpu-03", "gpu-04"]
    started = time.monotonic()
    infos = backend.up(names, ["H100", "H200", "H100", "H200"])
    # status, launch, then a few setup-job polls, all overlapping: ~1.3 s; launching and waiting for
    # one cluster after another would take 4 x (launch + poll) > 3.6 s
    assert time.monotonic() - started < 2.5
    assert [(c.name, c.accelerator, c.state) for c in infos] == [
        ("gpu-01", "H100", ClusterState.UP), ("gpu-02", "H200", ClusterState.UP),
        ("gpu-03", "H100", ClusterState.UP), ("gpu-04", "H200", ClusterState.UP)]
    home = fake.home()
    assert [setup_count(home, n) for n in names] == [1, 1, 1, 1]
    # setup ran in the project's own workdir (its files, not the snapshots), knowing the backend
    assert (home / "clusters/gpu-01/sky_workdir/setup.count").read_text() == "setup gpu-01 project-file sky\n"
    assert not (home / "clusters/gpu-01/sky_workdir/.fleet").exists()  # git-ignored, as SkyPilot skips it
    # A restarted `fleet up` (a new backend object) re-adopts them: no second setup, real accelerator kept.
    again, _ = make_backend(project)
    infos = again.up(["gpu-02", "gpu-05"], ["H100", "H100"])
    assert [(c.name, c.accelerator) for c in infos] == [("gpu-02", "H200"), ("gpu-05", "H100")]
    assert setup_count(home, "gpu-02") == 1
    assert {c.name: c.accelerator for c in again.clusters()} == {
        "gpu-01": "H100", "gpu-02": "H200", "gpu-03": "H100", "gpu-04": "H200", "gpu-05": "H100"}


def test_launch_task_sets_autodown_and_one_accelerator(project, fake):
    calls = []

    class Recording:
        def __getattr__(self, name):
            return getattr(fake, name)

        def launch(self, task, **kwargs):
            calls.append((task, kwargs))
            return fake.launch(task, **kwargs)

    backend, _ = make_backend(project, sdk=Recording(), idle_minutes_to_autodown=15, infra="k8s/ctx-a")
    backend.up(["gpu-01"], ["H200"])
    task, kwargs = calls[0]
    assert kwargs == {"cluster_name": "gpu-01", "idle_minutes_to_autostop": 15, "down": True, "retry_until_up": False}
    assert task.run is None and "setup" in task.setup
    assert [(r.accelerators, r.infra) for r in task.resources] == [({"H200": 1}, "k8s/ctx-a")]


def test_no_capacity_retries_with_backoff_on_the_other_accelerator(project, fake):
    fake.set_capacity("H100", 0)
    backend, sleeps = make_backend(project)
    infos = backend.up(["gpu-01"], ["H100"])
    assert [(c.name, c.accelerator) for c in infos] == [("gpu-01", "H200")]  # recorded as what it really got
    assert sleeps == [30.0]


def test_no_capacity_anywhere_raises_provision_failed_after_the_others_are_up(project, fake):
    fake.set_capacity("H100", 1)
    backend, sleeps = make_backend(project, fallback_accelerator=False)
    with pytest.raises(ProvisionFailed) as err:
        backend.up(["gpu-01", "gpu-02"], ["H100", "H100"])
    assert sleeps == [30.0, 60.0, 120.0]  # 4 attempts, exponential backoff between them
    [up] = [c.name for c in err.value.clusters]  # the launches race for the one GPU: either may win
    [starved] = {"gpu-01", "gpu-02"} - {up}
    assert starved in str(err.value) and "fleet gpus" in str(err.value)
    assert [c.name for c in backend.clusters()] == [up]


def test_up_waits_for_the_detached_setup_job_and_hides_it(project, fake):
    """`sky launch` returns while setup still runs as job 1; experiments must not start before it ends."""
    slow_setup = FIXTURE_TASK.replace("setup: |\n", "setup: |\n  sleep 0.5\n")
    (project.root / "experiment.yaml").write_text(slow_setup)
    backend, _ = make_backend(project)
    assert [c.state for c in backend.up(["gpu-01"], ["H100"])] == [ClusterState.UP]
    assert setup_count(fake.home(), "gpu-01") == 1  # setup had finished when up() returned
    assert raw_queue("gpu-01") == {1: ("fleet-setup", "SUCCEEDED")}
    assert backend.queues(["gpu-01"]) == {"gpu-01": []}  # the setup job is not an experiment
    job_id = backend.submit("gpu-01", job("exp-1"))
    assert job_id == 2 and [j.name for j in backend.queues(["gpu-01"])["gpu-01"]] == ["exp-1.a1"]
    assert "setup gpu-01" not in backend.logs("gpu-01", job_id)


def test_setup_failure_is_reported_not_retried_and_fixed_by_up(project, fake):
    (project.root / "experiment.yaml").write_text(
        FIXTURE_TASK.replace("setup: |\n", "setup: |\n  echo pip says no; exit 3\n"))
    backend, sleeps = make_backend(project)
    with pytest.raises(SetupFailed) as err:
        backend.up(["gpu-01", "gpu-02"], ["H100", "H100"])
    message = str(err.value)
    assert "FAILED_SETUP" in message and "`sky logs gpu-01 1`" in message and "`setup:`" in message
    assert err.value.clusters == [] and sorted(err.value.failed) == ["gpu-01", "gpu-02"]
    assert sleeps == []
    assert "pip says no" in backend.logs("gpu-01", 1)  # the log the message points to
    # SkyPilot says UP, but nothing may run there: the controller only feeds UP clusters
    assert {c.name: c.state for c in backend.clusters()} == {"gpu-01": ClusterState.PROVISIONING,
                                                            "gpu-02": ClusterState.PROVISIONING}
    (project.root / "experiment.yaml").write_text(FIXTURE_TASK)  # the user fixes setup
    assert [c.state for c in backend.up(["gpu-01", "gpu-02"], ["H100", "H100"])] == [ClusterState.UP] * 2
    assert setup_count(fake.home(), "gpu-01") == 1  # relaunched afresh, so the fixed setup ran
    assert {c.state for c in backend.clusters()} == {ClusterState.UP}


# --- jobs -------------------------------------------------------------------------------------
def test_submit_queue_logs_round_trip(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01", "gpu-02"], ["H100", "H200"])
    ids = [backend.submit("gpu-01", job(f"exp-{i}", LR="0.02")) for i in range(2)]
    other = backend.submit("gpu-02", job("exp-9", attempt=2, accelerator=None))  # accelerator from the cluster
    assert ids == [2, 3] and other == 2  # job 1 was each cluster's setup
    jobs = wait_terminal(backend, "gpu-01", ids)
    assert [(j.name, j.state) for j in jobs.values()] == [("exp-0.a1", JobState.SUCCEEDED),
                                                          ("exp-1.a1", JobState.SUCCEEDED)]
    assert jobs[ids[1]].started_at and jobs[ids[1]].ended_at >= jobs[ids[1]].started_at
    text = backend.logs("gpu-01", ids[1])
    assert "id=exp-1 snap=s1 budget=300 lr=0.02 code=v1" in text  # task envs + job envs + fleet envs
    assert wait_terminal(backend, "gpu-02", [other])[other].name == "exp-9.a2"


def test_jobs_declare_the_accelerator_and_a_mismatch_is_an_error(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    config = backend.job_config("gpu-01", job("exp-1", accelerator=None))
    assert config["resources"]["accelerators"] == {"H100": 1}
    with pytest.raises(BackendError) as err:
        backend.submit("gpu-01", job("exp-2", accelerator="H200"))
    assert not isinstance(err.value, ClusterLost)


def test_submit_many_and_queues_cost_one_round_trip(project, fake, monkeypatch):
    backend, _ = make_backend(project)
    names = [f"gpu-{i:02d}" for i in range(1, 17)]
    backend.up(names, ["H100"] * 16)
    monkeypatch.setenv("FAKE_SKY_LATENCY_S", "0.5")
    started = time.monotonic()
    ids = backend.submit_many([(n, job(f"exp-{n}")) for n in names])
    queues = backend.queues(names)
    elapsed = time.monotonic() - started
    assert ids == [2] * 16 and sorted(queues) == names
    # exec and queue each block their caller 0.5 s before the request id comes back (the real
    # blocking POSTs): about 1 s in all when the calls overlap; one after another would take 16 s
    assert elapsed < 3.0, f"{elapsed:.2f}s: calls are not concurrent (sequential would be ~16 s)"


def test_shared_workdir_hazard_queued_job_runs_its_own_snapshot(project, fake):
    """Every job runs from one shared sky_workdir, re-synced at each exec; only the snapshot dir protects it."""
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    blocker = backend.submit("gpu-01", job("exp-blocker", SLEEP="0.6"))
    job_a = backend.submit("gpu-01", job("exp-a", snap="s1"))  # queued behind the blocker
    wait_running(backend, "gpu-01", blocker)
    # Before A starts: B's code is synced into the same workdir.
    make_snapshot(project, "s2", "v2")
    job_b = backend.submit("gpu-01", job("exp-b", snap="s2"))
    jobs = wait_terminal(backend, "gpu-01", [blocker, job_a, job_b])
    assert jobs[blocker].ended_at <= jobs[job_a].started_at  # A really was queued when B was synced
    log_a = backend.logs("gpu-01", job_a)
    assert "synced=s1 s2 " in log_a  # the hazard is real: A sees files synced for B...
    assert "snap=s1" in log_a and "code=v1" in log_a  # ...but runs its own immutable snapshot
    assert "code=v2" in backend.logs("gpu-01", job_b)


def test_each_exec_syncs_only_its_own_snapshot(project, fake):
    """The add-only sync never deletes, so a job's workdir must not carry every older snapshot along."""
    for n in range(2, 5):
        make_snapshot(project, f"s{n}", f"v{n}")
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    workdir = Path(backend.job_config("gpu-01", job("exp-1", snap="s3"))["workdir"])
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")) == [
        "snapshots", "snapshots/s3", "snapshots/s3/run.sh", "snapshots/s3/version"]
    job_id = backend.submit("gpu-01", job("exp-1", snap="s3"))
    wait_terminal(backend, "gpu-01", [job_id])
    assert "synced=s3 " in backend.logs("gpu-01", job_id)
    assert sorted(p.name for p in (fake.home() / "clusters/gpu-01/sky_workdir/snapshots").iterdir()) == ["s3"]


def test_logs_fall_back_to_download_and_strip_colour(project, fake):
    class NoStreaming:
        def __getattr__(self, name):
            return getattr(fake, name)

        def tail_logs(self, *args, **kwargs):
            raise fake.exceptions.NotSupportedError("streaming is not supported here")

    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    job_id = backend.submit("gpu-01", job("exp-1"))
    wait_terminal(backend, "gpu-01", [job_id])
    (fake.home() / "clusters" / "gpu-01" / "logs" / f"{job_id}.log").write_text("\x1b[32mval_bpb: 1.5\x1b[0m\n")
    downloading, _ = make_backend(project, sdk=NoStreaming())
    assert downloading.logs("gpu-01", job_id) == "val_bpb: 1.5\n"
    assert backend.logs("gpu-01", job_id) == "val_bpb: 1.5\n"


def test_overdue_job_is_cancelled_and_reported_as_timeout(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    slow = backend.submit("gpu-01", job("exp-slow", timeout_s=0.3, SLEEP="30"))
    after = backend.submit("gpu-01", job("exp-next"))
    jobs = wait_terminal(backend, "gpu-01", [slow, after], timeout=20)
    assert jobs[slow].state == JobState.TIMEOUT
    assert jobs[after].state == JobState.SUCCEEDED  # the queue moved on
    restarted, _ = make_backend(project)  # a new controller still knows why it was cancelled
    assert {j.job_id: j.state for j in restarted.queues(["gpu-01"])["gpu-01"]}[slow] == JobState.TIMEOUT
    kept = json.loads((project.state / "sky_timeouts.json").read_text())
    assert list(kept) == [f"gpu-01/{slow}"]  # the job that ended in time needs no entry any more


def test_cancel_ignores_empty_lists_and_lost_clusters(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    job_id = backend.submit("gpu-01", job("exp-1", SLEEP="0.3"))
    backend.cancel("gpu-01", [])  # must not cancel "the latest job", as an empty SkyPilot request would
    assert wait_terminal(backend, "gpu-01", [job_id])[job_id].state == JobState.SUCCEEDED
    fake.kill_cluster("gpu-01")
    backend.cancel("gpu-01", [job_id])


# --- failures, each mapped to the fleet's words ----------------------------------------------
@pytest.mark.parametrize("status, expected", [
    ("FAILED_SETUP", JobState.CLUSTER_FAILED),
    ("FAILED_DRIVER", JobState.CLUSTER_FAILED),
])
def test_setup_and_driver_failures_are_cluster_failures(project, fake, status, expected):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    fake.fail_next_jobs("gpu-01", status)
    broken = backend.submit("gpu-01", job("exp-1"))
    fine = backend.submit("gpu-01", job("exp-2"))
    jobs = wait_terminal(backend, "gpu-01", [broken, fine])
    assert (jobs[broken].state, jobs[fine].state) == (expected, JobState.SUCCEEDED)


def test_experiment_crash_is_failed_not_cluster_failed(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    job_id = backend.submit("gpu-01", job("exp-1", EXIT="3"))
    assert wait_terminal(backend, "gpu-01", [job_id])[job_id].state == JobState.FAILED


def test_vanished_cluster_is_lost_everywhere(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01", "gpu-02"], ["H100", "H200"])
    running = backend.submit("gpu-01", job("exp-1", SLEEP="30"))
    wait_running(backend, "gpu-01", running)
    fake.kill_cluster("gpu-01")  # ClusterDoesNotExist from now on
    queues = backend.queues(["gpu-01", "gpu-02"])
    assert isinstance(queues["gpu-01"], ClusterLost) and queues["gpu-02"] == []
    assert "no longer exists" in queues["gpu-01"].reason
    with pytest.raises(ClusterLost):
        backend.submit("gpu-01", job("exp-2"))
    with pytest.raises(ClusterLost):
        backend.logs("gpu-01", running)
    assert {c.name: c.state for c in backend.clusters()} == {"gpu-01": ClusterState.LOST, "gpu-02": ClusterState.UP}


def wait_gone(fake, cluster: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while fake.get(fake.status([cluster])):
        assert time.monotonic() < deadline, f"{cluster} was never torn down"
        time.sleep(0.02)


def test_preempted_cluster_is_lost_and_torn_down(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    running = backend.submit("gpu-01", job("exp-1", SLEEP="30"))
    wait_running(backend, "gpu-01", running)
    fake.preempt_cluster("gpu-01")  # evicted pod: ClusterNotUpError from now on, and `sky status` says INIT
    lost = backend.queues(["gpu-01"])["gpu-01"]
    assert isinstance(lost, ClusterLost) and "not UP" in lost.reason
    with pytest.raises(ClusterLost):
        backend.logs("gpu-01", running)  # an error, not an empty log
    wait_gone(fake, "gpu-01")  # torn down, so nothing queued there can run again as a duplicate
    assert backend.clusters()[0].state == ClusterState.LOST
    assert backend.up(["gpu-01"], ["H100"])[0].state == ClusterState.UP  # `fleet up` relaunches it


def test_a_passing_not_up_is_confirmed_with_status_before_the_cluster_is_lost(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01", "gpu-02"], ["H100", "H100"])
    job_id = backend.submit("gpu-01", job("exp-1"))
    last = wait_terminal(backend, "gpu-01", [job_id])
    fake.flap_cluster("gpu-01")  # one ClusterNotUpError while `sky status` still says UP
    queues = backend.queues(["gpu-01", "gpu-02"])
    assert [j.job_id for j in queues["gpu-01"]] == list(last)  # its last known queue, not lost
    assert [j.job_id for j in backend.queues(["gpu-01"])["gpu-01"]] == list(last)
    assert fake.get(fake.status(["gpu-01"]))[0].status.value == "UP"


def test_an_exec_refused_by_a_passing_not_up_is_not_submitted_not_a_loss(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    fake.flap_cluster("gpu-01")  # the exec sees ClusterNotUpError; `sky status` still says UP
    [refused] = backend.submit_many([("gpu-01", job("exp-1"))])
    assert isinstance(refused, NotSubmitted) and not isinstance(refused, ClusterLost)
    assert "'gpu-01' refused the job: it is not UP" in str(refused)
    assert backend.queues(["gpu-01"])["gpu-01"] == []  # the job never reached the queue
    backend.submit("gpu-01", job("exp-1"))  # and the cluster takes the retry
    assert [j.name for j in backend.queues(["gpu-01"])["gpu-01"]] == [job("exp-1").job_name]


def test_unreachable_cluster_keeps_its_last_queue_then_is_lost_and_torn_down(project, fake):
    now = [1000.0]
    backend, _ = make_backend(project, clock=lambda: now[0])
    backend.up(["gpu-01", "gpu-02"], ["H100", "H100"])
    job_id = backend.submit("gpu-01", job("exp-1"))
    last = wait_terminal(backend, "gpu-01", [job_id])
    fake.make_unreachable("gpu-01")
    for _ in range(4):  # failing polls within the grace period keep the last queue
        assert [j.job_id for j in backend.queues(["gpu-01", "gpu-02"])["gpu-01"]] == list(last)
        now[0] += 10
    now[0] += 120
    lost = backend.queues(["gpu-01", "gpu-02"])["gpu-01"]
    assert isinstance(lost, ClusterLost) and "unreachable for 5 polls" in lost.reason
    wait_gone(fake, "gpu-01")  # it still existed, so it is torn down (its queue would run duplicates)


def test_when_no_cluster_answers_the_control_plane_is_blamed_not_the_clusters(project, fake):
    now = [1000.0]
    backend, _ = make_backend(project, clock=lambda: now[0])
    backend.up(["gpu-01", "gpu-02"], ["H100", "H100"])
    assert backend.queues(["gpu-01", "gpu-02"]) == {"gpu-01": [], "gpu-02": []}
    for name in ("gpu-01", "gpu-02"):
        fake.make_unreachable(name)
    for _ in range(5):
        with pytest.raises(BackendUnavailable, match="none of the 2 clusters answered"):
            backend.queues(["gpu-01", "gpu-02"])
        now[0] += 100
    fake.make_unreachable("gpu-02", False)  # no strikes were collected meanwhile
    assert backend.queues(["gpu-01", "gpu-02"])["gpu-01"] == []
    assert {c.state for c in backend.clusters()} == {ClusterState.UP}


def test_api_server_down_says_how_to_fix_it(project, fake):
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    fake.stop_api_server()
    for call in (backend.clusters, lambda: backend.queues(["gpu-01"]), lambda: backend.submit("gpu-01", job("e")),
                 lambda: backend.logs("gpu-01", 1), lambda: backend.up(["gpu-02"], ["H100"]), backend.health,
                 lambda: backend.down(["gpu-01"]), backend.gpu_availability):
        with pytest.raises(BackendUnavailable) as err:
            call()
        assert "sky api start" in str(err.value) and "sky api info" in str(err.value)
    fake.start_api_server()
    assert "healthy" in backend.health()


def test_connection_errors_from_requests_count_as_unreachable():
    requests_error = type("ConnectionError", (OSError,), {"__module__": "requests.exceptions"})
    assert is_connection_error(requests_error("refused"))
    assert is_connection_error(ConnectionRefusedError())
    assert not is_connection_error(ValueError("bad"))


def test_gpu_availability_per_context(project, fake):
    fake.set_capacity("H100", 4)
    backend, _ = make_backend(project)
    backend.up(["gpu-01"], ["H100"])
    rows = {(g.context, g.accelerator): (g.capacity, g.available) for g in backend.gpu_availability("k8s")}
    assert rows[("fake-k8s", "H100")] == (4, 3)
    with pytest.raises(BackendError, match="sky check kubernetes"):
        backend.gpu_availability("k8s/no-such-context")


# --- pure pieces ------------------------------------------------------------------------------
@pytest.mark.parametrize("status, expected", sorted(JOB_STATES.items()))
def test_job_status_table(status, expected):
    record = {"job_id": 7, "job_name": "exp-1.a2", "status": SimpleNamespace(value=status), "start_at": 1.0,
              "end_at": None}
    assert job_info(record).state == expected
    assert job_info(SimpleNamespace(**record)).name == "exp-1.a2"


class _GoldenDumper(yaml.SafeDumper):
    """Multi-line scripts as `|` blocks, so a golden file reads like the task file it came from."""


_GoldenDumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def check_golden(name: str, data: dict) -> None:
    text = yaml.dump(data, Dumper=_GoldenDumper, sort_keys=False, default_flow_style=False)
    path = GOLDEN / name
    if os.environ.get("FLEET_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    expected = path.read_text() if path.exists() else ""
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"{path} (golden)", f"{name} (generated)"))
        pytest.fail(f"generated task differs from its golden file; if intended, rerun with "
                    f"FLEET_UPDATE_GOLDEN=1\n{diff}")


def test_job_task_golden():
    config = build_task_config(yaml.safe_load(FIXTURE_TASK), name="exp-0007.a2",
                               envs={"LR": "0.02", "FLEET_SNAPSHOT": "0123456789abcdef", "EXPERIMENT_ID": "exp-0007"},
                               workdir="/project/.fleet/workdir", accelerator="H200", infra="k8s/gpu-pool")
    check_golden("skypilot_job_task.yaml", config)


def test_launch_task_golden():
    config = build_launch_config(yaml.safe_load(FIXTURE_TASK), name="fleet-setup", workdir="/project",
                                 accelerator="H100", envs={"FLEET_BACKEND": "sky"})
    check_golden("skypilot_launch_task.yaml", config)


# --- end to end: the real controller over the fake SDK ----------------------------------------
def test_wave_survives_two_clusters_dying(project, fake):
    """40 experiments on 8 clusters (H100 + H200); 2 clusters vanish mid-wave; each experiment finishes once."""
    from fleet.config import Tier
    from fleet.core.controller import Controller
    from fleet.core.ledger import Ledger
    from fleet.core.ledger_rows import ATTEMPT_LOST, NewExperiment
    from fleet.types import ExperimentState

    snap_dir = project.snapshot_dir("s1")
    (snap_dir / "run.sh").write_text('sleep 0.3\nprintf -- "---\\nval_bpb: 1.0\\nnum_steps: 1\\n"\n')
    config = FleetConfig(tiers={"any": Tier(accelerators=[], seeds=1)})
    backend = SkyPilotBackend(project, config, sdk=fake_sky, sleep=time.sleep, setup_poll_s=SETUP_POLL_S)
    names = [f"gpu-{i:02d}" for i in range(1, 9)]
    infos = backend.up(names, ["H100", "H200"] * 4)
    ledger = Ledger(project.ledger_path)
    for info in infos:
        ledger.upsert_cluster(info.name, backend.name, info.accelerator, info.state)
    ledger.add_wave("w", "any", {"timeout_s": 120}, "s1",
                    [NewExperiment({"K": str(i)}, f"k{i}", 0, "", "") for i in range(40)])
    controller = Controller(project, ledger, backend, config)
    killed = False
    deadline = time.monotonic() + 60
    while ledger.has_unfinished_work():
        assert time.monotonic() < deadline, ledger.counts()
        controller.cycle()
        busy = {a.cluster for a in ledger.attempts(active=True)}
        done = sum(1 for a in ledger.attempts() if a.state == "succeeded")
        if not killed and done >= 2 and {"gpu-02", "gpu-07"} <= busy:
            fake.kill_cluster("gpu-02")
            fake.kill_cluster("gpu-07")
            killed = True
        time.sleep(0.05)
    assert killed
    experiments = ledger.experiments()
    assert len(experiments) == 40 and all(e.state == ExperimentState.DONE for e in experiments), [
        (e.id, e.state, e.reason, ledger.result(e.id)) for e in experiments if e.state != ExperimentState.DONE]
    assert len(ledger.results()) == 40
    assert {c.name for c in ledger.clusters([ClusterState.LOST])} == {"gpu-02", "gpu-07"}
    per_experiment = {}
    for attempt in ledger.attempts():
        per_experiment.setdefault(attempt.experiment_id, []).append(attempt.state)
    assert all(states.count("succeeded") == 1 for states in per_experiment.values()), per_experiment
    assert any(ATTEMPT_LOST in states for states in per_experiment.values())  # work really was requeued
