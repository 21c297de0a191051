"""A fake of the SkyPilot SDK (`import sky`) that runs clusters as local directories and jobs as processes.

It mirrors, by name and keyword, the SDK functions the SkyPilot backend calls (the list is
`fleet.backends.skypilot.SDK_CALLS`; a contract test compares both signatures with the installed
package). Select it with `FLEET_SKY_SDK=fleet.testing.fake_sky`, so background controllers and
CLI processes use it too.

Behaviour that matters to the backend, kept faithful:
- Requests return request-id strings and start at once on a thread pool; `get()` waits and re-raises
  the request's exception (same class names as `sky.exceptions`). `FAKE_SKY_LATENCY_S` adds a
  server-side delay to every request, so concurrency is measurable.
- Each cluster has a FIFO job queue with integer ids (a `SlotQueue`: jobs run one at a time as
  local processes, detached from the caller, and survive it).
- `exec` syncs `task.workdir` into the cluster's one shared `sky_workdir` add-only (new and changed
  files overwrite, nothing is deleted) and queues the run script, which starts in `sky_workdir`
  whenever its turn comes: a queued job sees whatever was synced last, exactly as on a real cluster.
- `launch` runs the task's setup once; capacity per accelerator is finite.

State lives in files under `FAKE_SKY_HOME` (default `<cwd>/.fleet/fake-sky`), so separate
processes see the same clusters. Test helpers at the bottom inject failures.
"""
from __future__ import annotations

import contextlib
import enum
import fcntl
import fnmatch
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import namedtuple
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from fleet.backends.slot_queue import SlotQueue

__version__ = "0.14.1-fake"
DEFAULT_CAPACITY = 64  # per accelerator, when set_capacity() was not called
FAKE_CONTEXT = "fake-k8s"
API_URL = "http://127.0.0.1:46580"
NO_TIMEOUT_S = 10.0 * 365 * 24 * 3600  # SkyPilot jobs have no timeout of their own


# --- the SDK's enums and exceptions (same names and values) --------------------------------------
class JobStatus(enum.Enum):
    INIT = "INIT"
    PENDING = "PENDING"
    SETTING_UP = "SETTING_UP"
    RUNNING = "RUNNING"
    FAILED_DRIVER = "FAILED_DRIVER"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"
    CANCELLED = "CANCELLED"


class ClusterStatus(enum.Enum):
    INIT = "INIT"
    UP = "UP"
    STOPPED = "STOPPED"
    AUTOSTOPPING = "AUTOSTOPPING"
    PENDING = "PENDING"


class StatusRefreshMode(enum.Enum):
    NONE = "NONE"
    AUTO = "AUTO"
    FORCE = "FORCE"


class exceptions:  # noqa: N801 - mirrors the `sky.exceptions` module
    class ResourcesUnavailableError(Exception):
        def __init__(self, message: str, no_failover: bool = False, failover_history: list | None = None) -> None:
            super().__init__(message)
            self.no_failover = no_failover
            self.failover_history = list(failover_history or [])

    class ResourcesMismatchError(Exception):
        pass

    class ClusterNotUpError(Exception):
        def __init__(self, message: str, cluster_status: Any = None, handle: Any = None) -> None:
            super().__init__(message)
            self.cluster_status = cluster_status
            self.handle = handle

    class ClusterDoesNotExist(ValueError):
        pass

    class ClusterSetUpError(Exception):
        pass

    class NotSupportedError(Exception):
        pass

    class CommandError(Exception):
        def __init__(self, returncode: int, command: str, error_msg: str, detailed_reason: str | None,
                     failure: str | None = None) -> None:
            super().__init__(command, failure or f"failed with return code {returncode}", error_msg, detailed_reason)
            self.returncode = returncode
            self.command = command
            self.error_msg = error_msg
            self.detailed_reason = detailed_reason

    class ApiServerConnectionError(RuntimeError):
        def __init__(self, server_url: str) -> None:
            super().__init__(f"Could not connect to SkyPilot API server at {server_url}. "
                             f"Please ensure that the server is running. Try: curl {server_url}/api/health")

    class ApiServerAuthenticationError(RuntimeError):
        def __init__(self, server_url: str) -> None:
            super().__init__(f"Authentication required for SkyPilot API server at {server_url}.")

    class RequestCancelled(Exception):
        pass


RealtimeGpuAvailability = namedtuple("RealtimeGpuAvailability", ["gpu", "counts", "capacity", "available"])


class _Record(dict):
    """A response record readable both ways, like SkyPilot's ResponseBaseModel: r['name'] and r.name."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


# --- Task and Resources (only what the backend and the fake read) ---------------------------------
class Resources:
    def __init__(self, cloud: Any = None, instance_type: str | None = None, cpus: Any = None, memory: Any = None,
                 accelerators: str | dict[str, int] | None = None, infra: str | None = None,
                 image_id: Any = None, **_: Any) -> None:
        if isinstance(accelerators, str):
            name, _, count = accelerators.partition(":")
            accelerators = {name: int(count or 1)}
        self.accelerators = dict(accelerators) if accelerators else None
        self.infra = infra
        self.image_id = image_id

    def __repr__(self) -> str:
        return f"Resources(infra={self.infra!r}, accelerators={self.accelerators!r})"


class Task:
    def __init__(self, name: str | None = None, *, setup: str | None = None, run: str | None = None,
                 envs: dict[str, str] | None = None, workdir: str | None = None,
                 resources: Resources | list[Resources] | None = None, **_: Any) -> None:
        self.name = name
        self.setup = setup
        self.run = run
        self.envs = dict(envs or {})
        self.workdir = workdir
        if resources is None:
            resources = [Resources()]
        self.resources = list(resources) if isinstance(resources, (list, set, tuple)) else [resources]

    @classmethod
    def from_yaml_config(cls, config: dict[str, Any], env_overrides: list | None = None,
                         secrets_overrides: list | None = None) -> "Task":
        envs = {str(k): "" if v is None else str(v) for k, v in (config.get("envs") or {}).items()}
        envs.update(dict(env_overrides or []))
        res = dict(config.get("resources") or {})
        accs = res.pop("accelerators", None)
        if isinstance(accs, dict) and len(accs) > 1:
            resources = [Resources(accelerators={k: v}, **res) for k, v in accs.items()]
        elif isinstance(accs, list):
            resources = [Resources(accelerators=a, **res) for a in accs]
        else:
            resources = [Resources(accelerators=accs, **res)]
        return cls(config.get("name"), setup=config.get("setup"), run=config.get("run"), envs=envs,
                   workdir=config.get("workdir"), resources=resources)

    @classmethod
    def from_yaml(cls, yaml_path: str) -> "Task":
        import yaml

        return cls.from_yaml_config(yaml.safe_load(Path(yaml_path).read_text()))

    def accelerator_choices(self) -> list[str]:
        return [name for r in self.resources for name in (r.accelerators or {})]


class _Handle:
    """Stands in for CloudVmRayResourceHandle: the backend reads `launched_resources.accelerators`."""

    def __init__(self, cluster_name: str, accelerator: str) -> None:
        self.cluster_name = cluster_name
        self.launched_resources = Resources(accelerators={accelerator: 1}, infra=f"kubernetes/{FAKE_CONTEXT}")

    def __repr__(self) -> str:
        return f"_Handle({self.cluster_name!r}, {self.launched_resources!r})"


# --- file-backed state --------------------------------------------------------------------------
def home() -> Path:
    root = os.environ.get("FAKE_SKY_HOME")
    return Path(root) if root else Path.cwd() / ".fleet" / "fake-sky"


def _clusters_dir() -> Path:
    return home() / "clusters"


def _cluster_dir(name: str) -> Path:
    return _clusters_dir() / name


def _read(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(name: str = "state"):
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / f"{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _meta(name: str) -> dict | None:
    return _read(_cluster_dir(name) / "meta.json")


def _set_meta(cluster_name: str, **changes: Any) -> dict:
    meta = {**(_meta(cluster_name) or {}), **changes}
    _write(_cluster_dir(cluster_name) / "meta.json", meta)
    return meta


def _queue(name: str) -> SlotQueue:
    return SlotQueue(_cluster_dir(name) / "queue")


def _workdir(name: str) -> Path:
    return _cluster_dir(name) / "sky_workdir"


def _require_up(name: str) -> dict:
    meta = _meta(name)
    if meta is None:
        raise exceptions.ClusterDoesNotExist(f"Cluster {name!r} does not exist.")
    if meta["status"] != "UP":
        raise exceptions.ClusterNotUpError(
            f"Cluster {name!r} is not up (status: {meta['status']}).", cluster_status=ClusterStatus(meta["status"]))
    if meta.get("unreachable"):
        raise exceptions.CommandError(255, "skylet", f"Failed to reach cluster {name!r}: connection refused", None)
    return meta


def _check_api() -> None:
    if (home() / "api_down").exists():
        raise exceptions.ApiServerConnectionError(API_URL)


def _latency() -> None:
    delay = float(os.environ.get("FAKE_SKY_LATENCY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


# --- requests: ids, a thread pool, get() ----------------------------------------------------------
_pool: ThreadPoolExecutor | None = None
_requests: dict[str, Future] = {}
_requests_lock = threading.Lock()


def _submit(name: str, fn, *args: Any, **kwargs: Any) -> str:
    global _pool
    _check_api()
    with _requests_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="fake-sky")
        request_id = f"{uuid.uuid4().hex}-{name}"

        def run() -> Any:
            _latency()
            return fn(*args, **kwargs)

        _requests[request_id] = _pool.submit(run)
    return request_id


def get(request_id: str) -> Any:
    _check_api()
    with _requests_lock:
        future = _requests.pop(request_id, None)
    if future is None:
        raise RuntimeError(f"Failed to get request {request_id}: 404 request not found")
    return future.result()


def stream_and_get(request_id: str | None = None, log_path: str | None = None, tail: int | None = None,
                   follow: bool = True, output_stream: Any = None, relay_rich_status: bool = False) -> Any:
    return None if request_id is None else get(request_id)


def api_info() -> _Record:
    _check_api()
    return _Record(status="healthy", api_version="fake", version=__version__, commit="fake", user=None)


# --- clusters ------------------------------------------------------------------------------------
def _task_accelerator(task: Task) -> str | None:
    choices = task.accelerator_choices()
    return choices[0] if choices else None


def _ignore_rules(src: Path):
    """Like SkyPilot's workdir sync: `.skyignore` if present, else `.gitignore` (simple patterns), never `.git`."""
    patterns = [".git"]
    for name in (".skyignore", ".gitignore"):
        if (src / name).exists():
            patterns += [line.strip() for line in (src / name).read_text().splitlines()
                         if line.strip() and not line.startswith(("#", "!"))]
            break
    own_home = home().resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel_dir = Path(directory).resolve().relative_to(src.resolve())
        skipped = set()
        for entry in names:
            rel = (rel_dir / entry).as_posix()
            if (Path(directory) / entry).resolve() == own_home:
                skipped.add(entry)  # never copy the fake's own state into a cluster
            elif any(fnmatch.fnmatch(entry, p.strip("/")) or fnmatch.fnmatch(rel, p.strip("/")) for p in patterns):
                skipped.add(entry)
        return skipped

    return ignore


def _rsync(src: Path, dest: Path, ignore) -> None:
    """`rsync -a` without --delete: skip files with the same size and mtime; others land atomically.

    Like rsync, a changed file is written beside the old one and renamed over it, so a script a job
    is executing right now keeps reading its old inode instead of a half-written file.
    """
    for directory, dirnames, filenames in os.walk(src):
        skipped = ignore(directory, dirnames + filenames)
        dirnames[:] = [d for d in dirnames if d not in skipped]
        out_dir = dest / Path(directory).relative_to(src)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if name in skipped:
                continue
            source, target = Path(directory) / name, out_dir / name
            st = source.stat()
            with contextlib.suppress(FileNotFoundError):
                old = target.stat()
                if old.st_size == st.st_size and old.st_mtime_ns == st.st_mtime_ns:
                    continue
            tmp = out_dir / f".{name}.{os.getpid()}.{threading.get_ident()}.sync"
            shutil.copy2(source, tmp)
            os.replace(tmp, target)


def _sync_workdir(name: str, task: Task) -> None:
    """Sync task.workdir into the cluster's one shared sky_workdir, add-only, like SkyPilot does."""
    target = _workdir(name)
    target.mkdir(parents=True, exist_ok=True)
    if task.workdir:
        src = Path(task.workdir).expanduser()
        _rsync(src, target, _ignore_rules(src))


def _capacity(accelerator: str) -> int:
    return int(_read(home() / "capacity.json", {}).get(accelerator, DEFAULT_CAPACITY))


def _in_use(accelerator: str) -> int:
    if not _clusters_dir().exists():
        return 0
    return sum(1 for d in _clusters_dir().iterdir() if (_read(d / "meta.json") or {}).get("accelerator") == accelerator)


def _do_launch(task: Task, cluster_name: str, idle_minutes_to_autostop: int | None, down: bool) -> tuple:
    with _locked():
        meta = _meta(cluster_name)
        if meta is not None and meta["status"] == "UP":
            accelerator = meta["accelerator"]
            wanted = task.accelerator_choices()
            if wanted and accelerator not in wanted:
                raise exceptions.ResourcesMismatchError(
                    f"Requested resources {wanted} do not match the existing cluster {cluster_name!r} ({accelerator}).")
        else:
            accelerator = next((a for a in task.accelerator_choices() if _in_use(a) < _capacity(a)), None)
            if accelerator is None:
                raise exceptions.ResourcesUnavailableError(
                    f"Failed to provision {cluster_name!r}: no capacity for {task.accelerator_choices()} "
                    f"in Kubernetes context {FAKE_CONTEXT!r}.")
            meta = _set_meta(cluster_name, name=cluster_name, status="INIT", accelerator=accelerator,
                             launched_at=int(time.time()), autostop=idle_minutes_to_autostop or -1,
                             to_down=bool(down))
    _sync_workdir(cluster_name, task)
    if task.setup:
        env = {**os.environ, **task.envs, "SKYPILOT_CLUSTER_NAME": cluster_name}
        log = _cluster_dir(cluster_name) / "setup.log"
        with open(log, "ab") as fh:
            code = subprocess.run(["bash", "-c", task.setup], cwd=_workdir(cluster_name), env=env,
                                  stdout=fh, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise exceptions.CommandError(code, "setup", f"Failed to setup with return code {code}. "
                                          f"Check the details in log: {log}", None)
    _set_meta(cluster_name, status="UP")
    job_id = _enqueue(cluster_name, task) if task.run else None
    return job_id, _Handle(cluster_name, accelerator)


def _enqueue(cluster_name: str, task: Task) -> int:
    with _locked(f"exec-{cluster_name}"):
        meta = _require_up(cluster_name)
        wanted = task.accelerator_choices()
        if wanted and meta["accelerator"] not in wanted:
            raise exceptions.ResourcesMismatchError(
                f"Task requires {wanted} but cluster {cluster_name!r} has {meta['accelerator']}.")
        _sync_workdir(cluster_name, task)
        queue = _queue(cluster_name)
        forced = _read(_cluster_dir(cluster_name) / "inject.json", [])
        script = task.run or "true"
        if forced:
            # The job fails outside the experiment's code (setup or driver), as the injection asked.
            script = f"echo 'injected {forced[0]} on {cluster_name}' >&2; exit 1"
        next_id = (queue.job_ids() or [0])[-1] + 1
        env = {**task.envs, "SKYPILOT_TASK_ID": f"fake-{cluster_name}-{next_id}",
               "SKYPILOT_NUM_GPUS_PER_NODE": "1", "SKYPILOT_CLUSTER_NAME": cluster_name}
        log = str(_cluster_dir(cluster_name) / "logs" / f"{next_id}.log")
        job_id = queue.submit(task.name or "sky-cmd", script, str(_workdir(cluster_name)), env, NO_TIMEOUT_S, log)
        if forced:
            outcomes = _read(_cluster_dir(cluster_name) / "outcomes.json", {})
            outcomes[str(job_id)] = forced[0]
            _write(_cluster_dir(cluster_name) / "outcomes.json", outcomes)
            _write(_cluster_dir(cluster_name) / "inject.json", forced[1:])
        return job_id


def launch(task: Task, cluster_name: str | None = None, retry_until_up: bool = False,
           idle_minutes_to_autostop: int | None = None, wait_for: Any = None, dryrun: bool = False,
           down: bool = False, backend: Any = None, optimize_target: Any = None, no_setup: bool = False,
           clone_disk_from: str | None = None, fast: bool = False, resize: bool = False) -> str:
    name = cluster_name or f"sky-{uuid.uuid4().hex[:4]}"
    return _submit("launch", _do_launch, task, name, idle_minutes_to_autostop, down)


def exec(task: Task, cluster_name: str | None = None, dryrun: bool = False, down: bool = False,  # noqa: A001
         backend: Any = None) -> str:
    def run() -> tuple:
        job_id = _enqueue(cluster_name, task)
        return job_id, _Handle(cluster_name, _meta(cluster_name)["accelerator"])

    return _submit("exec", run)


_STATES = {"pending": JobStatus.PENDING, "running": JobStatus.RUNNING, "succeeded": JobStatus.SUCCEEDED,
           "failed": JobStatus.FAILED, "timeout": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED}


def _job_records(cluster_name: str) -> list[_Record]:
    _require_up(cluster_name)
    outcomes = _read(_cluster_dir(cluster_name) / "outcomes.json", {})
    records = []
    for job in _queue(cluster_name).jobs():
        status = _STATES[job.state]
        if status == JobStatus.FAILED and str(job.job_id) in outcomes:
            status = JobStatus(outcomes[str(job.job_id)])
        records.append(_Record(job_id=job.job_id, job_name=job.name, username="fake", user_hash="fake",
                               submitted_at=job.submitted_at, start_at=job.started_at, end_at=job.ended_at,
                               resources="1x[GPU:1]", status=status, log_path=job.log, metadata={}, links={}))
    return records


def queue(cluster_name: str, skip_finished: bool = False, all_users: bool = False) -> str:
    def run() -> list[_Record]:
        records = _job_records(cluster_name)
        if skip_finished:
            records = [r for r in records if r.status in (JobStatus.INIT, JobStatus.PENDING,
                                                          JobStatus.SETTING_UP, JobStatus.RUNNING)]
        return list(reversed(records))  # newest first, as `sky queue` shows them

    return _submit("queue", run)


def job_status(cluster_name: str, job_ids: list[int] | None = None) -> str:
    def run() -> dict:
        records = {r.job_id: r.status for r in _job_records(cluster_name)}
        if job_ids is None:
            last = max(records, default=None)
            return {last: records.get(last)}
        return {j: records.get(j) for j in job_ids}

    return _submit("job_status", run)


def _log_path(cluster_name: str, job_id: int | None) -> Path | None:
    jobs = _queue(cluster_name).jobs()
    if job_id is None and jobs:
        job_id = jobs[-1].job_id
    for job in jobs:
        if job.job_id == job_id:
            return Path(job.log)
    return None


def tail_logs(cluster_name: str, job_id: int | None, follow: bool, tail: int = 0, output_stream: Any = None,
              *, preload_content: bool = True) -> int | Iterator[str | None]:
    # Not a request: the real SDK streams the HTTP response back directly.
    if output_stream is not None and not preload_content:
        raise ValueError("output_stream cannot be specified when preload_content is False")
    _check_api()
    _latency()
    _require_up(cluster_name)
    path = _log_path(cluster_name, job_id)
    lines = path.read_text(errors="replace").splitlines(keepends=True) if path and path.exists() else []
    if tail > 0:
        lines = lines[-tail:]
    if preload_content:
        (output_stream.write if output_stream else print)("".join(lines))
        return 0

    def stream() -> Iterator[str | None]:
        yield from lines
        yield None

    return stream()


def download_logs(cluster_name: str, job_ids: list[str] | None) -> dict[str, str]:
    _check_api()
    _latency()
    _require_up(cluster_name)
    out = {}
    ids = [int(j) for j in job_ids] if job_ids else [j.job_id for j in _queue(cluster_name).jobs()[-1:]]
    for job_id in ids:
        src = _log_path(cluster_name, job_id)
        dest = home() / "downloads" / cluster_name / f"{job_id}" / "run.log"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src and src.exists():
            shutil.copyfile(src, dest)
        else:
            dest.write_text("")
        out[str(job_id)] = str(dest.parent)
    return out


def cancel(cluster_name: str, all: bool = False, all_users: bool = False,  # noqa: A002
           job_ids: list[int] | None = None) -> str:
    def run() -> None:
        _require_up(cluster_name)
        q = _queue(cluster_name)
        ids = q.job_ids() if all or all_users else list(job_ids or [])
        q.cancel([j for j in ids if j in set(q.job_ids())])

    return _submit("cancel", run)


def _remove(name: str) -> None:
    d = _cluster_dir(name)
    if not d.exists():
        return
    _queue(name).kill_all()
    grave = home() / "graveyard" / f"{name}-{uuid.uuid4().hex[:6]}"
    grave.parent.mkdir(parents=True, exist_ok=True)
    os.replace(d, grave)
    shutil.rmtree(grave, ignore_errors=True)


def down(cluster_name: str, purge: bool = False, graceful: bool = False, graceful_timeout: int | None = None) -> str:
    def run() -> None:
        with _locked():
            if _meta(cluster_name) is None:
                raise exceptions.ClusterDoesNotExist(f"Cluster {cluster_name!r} does not exist.")
            _remove(cluster_name)

    return _submit("down", run)


def status(cluster_names: list[str] | None = None, refresh: StatusRefreshMode = StatusRefreshMode.NONE,
           all_users: bool = False) -> str:
    def run() -> list[_Record]:
        if not _clusters_dir().exists():
            return []
        records = []
        for d in sorted(_clusters_dir().iterdir()):
            meta = _read(d / "meta.json")
            if meta is None or (cluster_names is not None and meta["name"] not in cluster_names):
                continue
            records.append(_Record(
                name=meta["name"], launched_at=meta["launched_at"], status=ClusterStatus(meta["status"]),
                handle=_Handle(meta["name"], meta["accelerator"]), autostop=meta["autostop"],
                to_down=meta["to_down"], cluster_hash=meta["name"], cluster_ever_up=True, user_hash="fake",
                user_name="fake", workspace="default", is_managed=False,
                resources_str=f"1x Kubernetes({meta['accelerator']}:1)"))
        return records

    return _submit("status", run)


def realtime_kubernetes_gpu_availability(context: str | None = None, name_filter: str | None = None,
                                         quantity_filter: int | None = None, is_ssh: bool | None = None) -> str:
    def run() -> list:
        if context not in (None, FAKE_CONTEXT):
            raise ValueError(f"Kubernetes context {context!r} not found.")
        caps = {"H100": DEFAULT_CAPACITY, "H200": DEFAULT_CAPACITY, **_read(home() / "capacity.json", {})}
        rows = [RealtimeGpuAvailability(gpu, [1], cap, max(0, cap - _in_use(gpu)))
                for gpu, cap in sorted(caps.items())
                if name_filter is None or name_filter.lower() in gpu.lower()]
        return [(FAKE_CONTEXT, rows)]

    return _submit("realtime_kubernetes_gpu_availability", run)


# `sky.client.sdk` for the functions `sky/__init__.py` does not re-export.
client = SimpleNamespace(sdk=SimpleNamespace(
    realtime_kubernetes_gpu_availability=realtime_kubernetes_gpu_availability))


# --- test helpers: the things that happen to real clusters ----------------------------------------
def set_capacity(accelerator: str, n: int) -> None:
    """At most `n` clusters may hold `accelerator`; launching more raises ResourcesUnavailableError."""
    with _locked():
        caps = _read(home() / "capacity.json", {})
        caps[accelerator] = n
        _write(home() / "capacity.json", caps)


def kill_cluster(name: str) -> None:
    """The cluster vanishes (node gone, pod deleted): its jobs die, later calls raise ClusterDoesNotExist."""
    with _locked():
        _remove(name)


def preempt_cluster(name: str) -> None:
    """The pod is evicted: jobs die and the cluster drops to INIT, so calls raise ClusterNotUpError."""
    _queue(name).kill_all()
    _set_meta(name, status="INIT")


def make_unreachable(name: str, unreachable: bool = True) -> None:
    """Status says UP but every call to the cluster fails (the skylet cannot be reached)."""
    _set_meta(name, unreachable=unreachable)


def fail_next_jobs(cluster_name: str, status: str = "FAILED_SETUP", count: int = 1) -> None:
    """The next `count` jobs queued on the cluster end in `status` (FAILED_SETUP or FAILED_DRIVER)."""
    JobStatus(status)
    forced = _read(_cluster_dir(cluster_name) / "inject.json", [])
    _write(_cluster_dir(cluster_name) / "inject.json", forced + [status] * count)


def stop_api_server() -> None:
    """Every call raises ApiServerConnectionError until start_api_server()."""
    home().mkdir(parents=True, exist_ok=True)
    (home() / "api_down").touch()


def start_api_server() -> None:
    (home() / "api_down").unlink(missing_ok=True)


def reset() -> None:
    """Kill every fake cluster's jobs and forget all state (test teardown)."""
    if _clusters_dir().exists():
        for d in list(_clusters_dir().iterdir()):
            with contextlib.suppress(Exception):
                _remove(d.name)
    shutil.rmtree(home(), ignore_errors=True)
