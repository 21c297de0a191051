"""The local backend: each local GPU (or, with none, each CPU slot) is a "cluster".

It runs the same task file as SkyPilot: `setup` once per machine and code snapshot, `run` once
per experiment from `.fleet/workdir` with `FLEET_SNAPSHOT` selecting the experiment's snapshot.
Each slot is a durable FIFO queue (`slot_queue.py`) whose runner and jobs outlive the controller.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.backends.base import (
    Backend,
    BackendError,
    ClusterLost,
    LogIncomplete,
    NoSpaceForJob,
    SetupFailed,
)
from fleet.backends.slot_queue import END_LINE, QueuedJob, SlotQueue
from fleet.config import FleetConfig
from fleet.errors import disk_problem
from fleet.task import TaskSpec, load_task
from fleet.types import ClusterInfo, ClusterState, JobInfo, JobSpec, JobState
from fleet.workspace import Workspace

_STATES = {
    "pending": JobState.PENDING,
    "running": JobState.RUNNING,
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "timeout": JobState.TIMEOUT,
    "cancelled": JobState.CANCELLED,
    "lost": JobState.CLUSTER_FAILED,  # vanished without an exit status: not the experiment's fault
}
SETUP_TIMEOUT_S = 3600
TAIL_LINE_BYTES = 256  # bytes read per line asked for by `log_tails` (loss lines are ~60)
# What a job inherits from the controller's environment: what programs need to run at all, and
# the fleet's own variables. Anything else (tokens, keys) only if fleet.yaml names it in
# `env_passthrough`.
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
            "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "VIRTUAL_ENV", "CONDA_PREFIX")
BASE_ENV_PREFIXES = ("LC_", "XDG_", "FLEET_", "SKYFLEET_")


def allowed_env(environ: dict[str, str], passthrough: Sequence[str]) -> dict[str, str]:
    """The part of `environ` a job may see: BASE_ENV, the fleet's own prefixes, and `passthrough`."""
    named = set(BASE_ENV) | set(passthrough)
    return {k: v for k, v in environ.items() if k in named or k.startswith(BASE_ENV_PREFIXES)}


def local_gpus() -> list[str]:
    """Names of local NVIDIA GPUs (via nvidia-smi, so the controller never imports torch)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [_short_gpu_name(line.strip()) for line in out.splitlines() if line.strip()]


def _short_gpu_name(name: str) -> str:
    for short in ("H200", "H100", "A100", "L40S", "L4", "A10G", "T4", "V100"):
        if short in name:
            return short
    return name


def default_slots(config: FleetConfig) -> list[str]:
    """Accelerator label per slot: configured labels, else one per local GPU, else CPU slots."""
    if config.local.accelerators:
        return list(config.local.accelerators)
    gpus = local_gpus()
    if gpus:
        return gpus
    # Two slots at least, so even a 2-core laptop shows the fleet pipelining; threads are split fairly.
    count = config.local.slots or max(2, (os.cpu_count() or 1) // 4)
    return ["cpu"] * count


class LocalBackend(Backend):
    name = "local"
    submission_grace_s = 0.0  # `submit` writes the queue synchronously: absent now means never sent

    def __init__(self, workspace: Workspace, config: FleetConfig) -> None:
        self.workspace = workspace
        self.config = config
        self.root = workspace.local
        self._task_cache: tuple[tuple[int, int], TaskSpec] | None = None
        self._setup_done: set[str] = set()  # setup markers seen: not looked up again for every job

    @property
    def task(self) -> TaskSpec:
        """The task file, parsed again only when it changes (every submission reads it)."""
        path = self.workspace.root / self.config.task
        try:
            stat = path.stat()
        except FileNotFoundError:
            return load_task(path)  # says what is missing
        key = (stat.st_mtime_ns, stat.st_size)
        if self._task_cache is None or self._task_cache[0] != key:
            self._task_cache = (key, load_task(path))
        return self._task_cache[1]

    def _slot_dir(self, name: str) -> Path:
        return self.root / name

    def _meta(self, name: str) -> dict | None:
        try:
            return json.loads((self._slot_dir(name) / "slot.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    # --- clusters ----------------------------------------------------------------------------
    def up(self, names: Sequence[str], accelerators: Sequence[str]) -> list[ClusterInfo]:
        gpus = local_gpus()
        threads = max(1, (os.cpu_count() or 1) // max(1, len(names)))
        for index, (name, accelerator) in enumerate(zip(names, accelerators)):
            meta = self._meta(name)
            if meta and meta.get("state") == ClusterState.UP.value:
                continue
            # FLEET_ACCELERATOR tells the job which label its slot carries (tests and demos of tiers).
            env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "FLEET_ACCELERATOR": accelerator}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(index % len(gpus))
            slot = self._slot_dir(name)
            slot.mkdir(parents=True, exist_ok=True)
            (slot / "slot.json").write_text(
                json.dumps({"accelerator": accelerator, "env": env, "state": ClusterState.UP.value})
            )
        return [c for c in self.clusters() if c.name in set(names)]

    def clusters(self) -> list[ClusterInfo]:
        if not self.root.exists():
            return []
        out = []
        for slot in sorted(p for p in self.root.iterdir() if p.is_dir()):
            meta = self._meta(slot.name)
            if meta:
                out.append(ClusterInfo(slot.name, meta["accelerator"], ClusterState(meta["state"])))
        return out

    def down(self, clusters: Sequence[str]) -> None:
        for name in clusters:
            meta = self._meta(name)
            if meta is None:
                continue
            SlotQueue(self._slot_dir(name)).kill_all()
            meta["state"] = ClusterState.DOWN.value
            (self._slot_dir(name) / "slot.json").write_text(json.dumps(meta))

    # --- setup -------------------------------------------------------------------------------
    def ensure_setup(self, snapshot: str) -> None:
        """Run the task's setup once per machine and code snapshot (it is idempotent and cached)."""
        task = self.task
        if not task.setup.strip():
            return
        key = hashlib.sha256(f"{task.setup}\0{snapshot}".encode()).hexdigest()[:16]
        marker = self.root / f"setup-{key}.done"
        if key in self._setup_done or marker.exists():
            self._setup_done.add(key)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.workspace.logs / f"setup-{key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as fh:
            # Its own session, so a setup that runs too long is killed with everything it started.
            proc = subprocess.Popen(
                ["bash", "-c", task.setup], cwd=self.workspace.workdir, env=self._env(task, {"FLEET_SNAPSHOT": snapshot}),
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                code = proc.wait(timeout=SETUP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise SetupFailed(f"the task's setup ran past {SETUP_TIMEOUT_S}s and was killed; log: {log}") from None
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SetupFailed(f"the task's setup failed (exit {code}); fix it and run `fleet wait` again. "
                              f"Log: {log}\n{tail}")
        marker.touch()

    def _env(self, task: TaskSpec, job_env: dict[str, str]) -> dict[str, str]:
        # The task's envs are defaults: a variable already set in the user's shell wins (a local
        # SKYFLEET_CACHE, say), and the experiment's own knob overrides win over both. Of the
        # shell, only the allow-listed part: a secret reaches a job only when passed through.
        env = {**task.envs, **allowed_env(dict(os.environ), self.config.env_passthrough), **job_env}
        env["FLEET_BACKEND"] = "local"
        # `python` in the task's scripts means the interpreter the fleet runs in (its venv), even
        # when the user called `.venv/bin/fleet` without activating the venv.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        return {k: os.path.expanduser(v) if v.startswith("~") else v for k, v in env.items()}

    # --- jobs --------------------------------------------------------------------------------
    def _queue(self, cluster: str) -> SlotQueue:
        meta = self._meta(cluster)
        if meta is None or meta.get("state") != ClusterState.UP.value:
            raise ClusterLost(cluster, "no such local slot" if meta is None else f"slot is {meta.get('state')}")
        return SlotQueue(self._slot_dir(cluster))

    def submit_many(self, items: Sequence[tuple[str, JobSpec]]) -> list[int | BackendError]:
        """Set up each new code snapshot once, then queue; a failed setup fails only its own jobs."""
        failed: dict[str, SetupFailed] = {}
        for snapshot in dict.fromkeys(job.snapshot for _, job in items):
            try:
                self.ensure_setup(snapshot)
            except SetupFailed as exc:
                failed[snapshot] = exc
        out: list[int | BackendError] = []
        queues: dict[str, SlotQueue] = {}
        for cluster, job in items:
            if job.snapshot in failed:
                out.append(failed[job.snapshot])
                continue
            try:
                out.append(self._submit(cluster, job, start=False))
                queues[cluster] = self._queue(cluster)
            except BackendError as exc:
                out.append(exc)
            except OSError as exc:  # its spec could not be written: it never reached the queue
                problem = disk_problem(exc, self._slot_dir(cluster), f"the job spec of {job.job_name}")
                if problem is None:
                    raise
                out.append(NoSpaceForJob(problem))
        for queue in queues.values():  # each slot's runner started or woken once for the batch
            queue.ensure_runner()
        return out

    def submit(self, cluster: str, job: JobSpec) -> int:
        return self._submit(cluster, job, start=True)

    def _submit(self, cluster: str, job: JobSpec, start: bool) -> int:
        queue = self._queue(cluster)
        self.ensure_setup(job.snapshot)
        task = self.task
        meta = self._meta(cluster) or {}
        env = self._env(task, {**meta.get("env", {}), **job.envs,
                               "FLEET_SNAPSHOT": job.snapshot, "EXPERIMENT_ID": job.experiment_id})
        log = self.workspace.logs / f"{job.job_name}.log"
        return queue.submit(job.job_name, task.run, str(self.workspace.workdir), env, job.timeout_s, str(log),
                            start=start)

    def queues(self, clusters: Sequence[str]) -> dict[str, list[JobInfo] | ClusterLost]:
        out: dict[str, list[JobInfo] | ClusterLost] = {}
        for name in clusters:
            try:
                queue = self._queue(name)
            except ClusterLost as lost:
                out[name] = lost
                continue
            jobs = queue.jobs()
            if any(j.state in ("pending", "running") for j in jobs):
                queue.ensure_runner()  # a runner that died (machine reboot, kill) is restarted
            out[name] = [_job_info(j) for j in jobs]
        return out

    def archived_jobs(self, cluster: str, names: Sequence[str]) -> list[JobInfo]:
        if self._meta(cluster) is None:
            return []
        return [_job_info(j) for j in SlotQueue(self._slot_dir(cluster)).archived(list(names))]

    def logs(self, cluster: str, job_id: int) -> str:
        """The job's log; LogIncomplete if it ended normally but its log lacks the last line its shell
        writes (the disk filled up while it ran, say): what it says cannot be trusted."""
        queue = SlotQueue(self._slot_dir(cluster))
        job = queue.job(job_id)
        if job is None:
            return ""
        try:
            text = Path(job.log).read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        if job.state in ("succeeded", "failed") and not _ends_with(text, END_LINE.format(code=job.exit_code)):
            raise LogIncomplete(f"{job.log} was cut short (it lacks its last line); is the disk holding it full?")
        return text

    def log_tails(self, items: Sequence[tuple[str, int]], lines: int) -> list[str | BackendError]:
        """The end of each log file only: a long run's log is read a little at a time, not whole every cycle."""
        out: list[str | BackendError] = []
        for cluster, job_id in items:
            log = SlotQueue(self._slot_dir(cluster)).log_path(job_id)
            try:
                with open(log or "", "rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - lines * TAIL_LINE_BYTES))
                    text = f.read().decode(errors="replace")
            except OSError:
                text = ""
            out.append("\n".join(text.splitlines()[-lines:]))
        return out

    def cancel(self, cluster: str, job_ids: Sequence[int]) -> None:
        if self._meta(cluster) is not None:
            SlotQueue(self._slot_dir(cluster)).cancel(list(job_ids))


def _job_info(job: QueuedJob) -> JobInfo:
    return JobInfo(job.job_id, job.name, _STATES[job.state], job.started_at, job.ended_at, job.exit_code)


def _ends_with(text: str, line: str) -> bool:
    lines = text.rstrip("\n").rsplit("\n", 1)
    return lines[-1] == line
