"""The contract every backend passes (run by test_local_backend.py and the SkyPilot backend's tests).

A subclass provides `backend_setup(tmp_path) -> (backend, workspace, clusters)`: a backend whose
task file is `CONTRACT_TASK`, with `clusters` already up. Jobs run `work/job.sh` from their code
snapshot, so the suite also checks that each job runs the snapshot it was submitted with.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.backends.base import ClusterLost
from fleet.core.snapshot import take_snapshot
from fleet.types import ClusterState, JobSpec, JobState

CONTRACT_TASK = """\
name: contract
resources:
  accelerators: {H100: 1}
workdir: .
envs:
  GREETING: hello
run: |
  cd "snapshots/$FLEET_SNAPSHOT" && bash work/job.sh
"""

JOB_SH = """\
echo "start $EXPERIMENT_ID $GREETING $(date +%s.%N)"
sleep "${SLEEP:-0.05}"
echo "code $(cat work/version)"
echo "end $EXPERIMENT_ID $(date +%s.%N)"
exit "${EXIT:-0}"
"""


def write_contract_project(root: Path) -> None:
    (root / "experiment.yaml").write_text(CONTRACT_TASK)
    (root / "work").mkdir(parents=True, exist_ok=True)
    (root / "work" / "job.sh").write_text(JOB_SH)
    (root / "work" / "version").write_text("v1\n")


def snapshot(workspace, version: str) -> str:
    (workspace.root / "work" / "version").write_text(version + "\n")
    return take_snapshot(workspace.root / "work", workspace.snapshots)


def wait_terminal(backend, cluster: str, job_ids: list[int], timeout: float = 30.0) -> dict[int, object]:
    deadline = time.monotonic() + timeout
    while True:
        queue = backend.queues([cluster])[cluster]
        assert not isinstance(queue, ClusterLost), queue
        jobs = {j.job_id: j for j in queue if j.job_id in job_ids}
        if len(jobs) == len(job_ids) and all(j.state.terminal for j in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, f"jobs did not finish: {jobs}"
        time.sleep(0.05)


class BackendContract:
    def backend_setup(self, tmp_path: Path):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @pytest.fixture
    def env(self, tmp_path):
        backend, workspace, clusters = self.backend_setup(tmp_path)
        yield backend, workspace, clusters
        backend.down(clusters)

    def _job(self, name: str, snap: str, attempt: int = 1, **envs: str) -> JobSpec:
        return JobSpec(name, attempt, snap, {k: str(v) for k, v in envs.items()}, timeout_s=60, accelerator="H100")

    def test_clusters_are_listed_up(self, env):
        backend, _, clusters = env
        listed = {c.name: c for c in backend.clusters()}
        for name in clusters:
            assert listed[name].state == ClusterState.UP
            assert listed[name].accelerator

    def test_fifo_one_at_a_time_with_envs_and_logs(self, env):
        backend, workspace, clusters = env
        snap = snapshot(workspace, "v1")
        ids = [backend.submit(clusters[0], self._job(f"exp-{i}", snap, SLEEP="0.2")) for i in range(3)]
        assert ids == sorted(ids) and len(set(ids)) == 3
        jobs = wait_terminal(backend, clusters[0], ids)
        assert all(jobs[i].state == JobState.SUCCEEDED for i in ids)
        spans = []
        for i, job_id in enumerate(ids):
            text = backend.logs(clusters[0], job_id)
            assert f"start exp-{i} hello" in text and "code v1" in text
            start = float(text.split(f"start exp-{i} hello ")[1].split()[0])
            end = float(text.split(f"end exp-{i} ")[1].split()[0])
            spans.append((start, end))
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end - 0.01, "jobs on one cluster must not overlap"

    def test_log_tails_are_the_last_lines_of_each_log(self, env):
        backend, workspace, clusters = env
        snap = snapshot(workspace, "v1")
        ids = [backend.submit(clusters[0], self._job(f"exp-t{i}", snap)) for i in range(2)]
        wait_terminal(backend, clusters[0], ids)
        tails = backend.log_tails([(clusters[0], job_id) for job_id in ids], 3)
        for i, (job_id, tail) in enumerate(zip(ids, tails)):
            whole = backend.logs(clusters[0], job_id).splitlines()
            assert tail.splitlines() == whole[-3:], (tail, whole)
            assert f"end exp-t{i}" in tail and "start" not in tail

    def test_job_names_carry_experiment_and_attempt(self, env):
        backend, workspace, clusters = env
        job_id = backend.submit(clusters[0], self._job("exp-x", snapshot(workspace, "v1"), attempt=3))
        wait_terminal(backend, clusters[0], [job_id])
        names = {j.job_id: j.name for j in backend.queues([clusters[0]])[clusters[0]]}
        assert names[job_id] == "exp-x.a3"

    def test_failure_is_reported_with_exit_code(self, env):
        backend, workspace, clusters = env
        job_id = backend.submit(clusters[0], self._job("exp-f", snapshot(workspace, "v1"), EXIT="3"))
        job = wait_terminal(backend, clusters[0], [job_id])[job_id]
        assert job.state == JobState.FAILED
        assert job.exit_code in (3, None)  # a remote queue may not report the code, only the failure

    def test_queued_job_runs_its_own_snapshot(self, env):
        backend, workspace, clusters = env
        first = backend.submit(clusters[0], self._job("exp-a", snapshot(workspace, "v1"), SLEEP="0.5"))
        second = backend.submit(clusters[0], self._job("exp-b", snapshot(workspace, "v2")))
        third = backend.submit(clusters[0], self._job("exp-c", snapshot(workspace, "v1")))
        wait_terminal(backend, clusters[0], [first, second, third])
        assert "code v1" in backend.logs(clusters[0], first)
        assert "code v2" in backend.logs(clusters[0], second)
        assert "code v1" in backend.logs(clusters[0], third)

    def test_cancel_running_and_pending(self, env):
        backend, workspace, clusters = env
        snap = snapshot(workspace, "v1")
        running = backend.submit(clusters[0], self._job("exp-r", snap, SLEEP="30"))
        pending = backend.submit(clusters[0], self._job("exp-p", snap))
        deadline = time.monotonic() + 15
        while True:
            states = {j.job_id: j.state for j in backend.queues([clusters[0]])[clusters[0]]}
            if states.get(running) == JobState.RUNNING:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        backend.cancel(clusters[0], [running, pending])
        jobs = wait_terminal(backend, clusters[0], [running, pending], timeout=20)
        assert jobs[running].state == JobState.CANCELLED
        assert jobs[pending].state == JobState.CANCELLED

    def test_down_cluster_is_lost(self, env):
        backend, workspace, clusters = env
        backend.down([clusters[-1]])
        queue = backend.queues([clusters[-1]])[clusters[-1]]
        assert isinstance(queue, ClusterLost)
        with pytest.raises(ClusterLost):
            backend.submit(clusters[-1], self._job("exp-d", snapshot(workspace, "v1")))
