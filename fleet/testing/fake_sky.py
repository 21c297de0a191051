"""A fake of the SkyPilot SDK (`import sky`) that runs clusters as local directories and jobs as processes.

It mirrors, by name and keyword, the SDK functions the SkyPilot backend calls (the list is
`fleet.backends.sky_sdk.SDK_CALLS`; a contract test compares both signatures with the installed
package). Select it with `FLEET_SKY_SDK=fleet.testing.fake_sky`, so background controllers and
CLI processes use it too.

Behaviour that matters to the backend, kept faithful:
- Requests return request-id strings and start at once on a thread pool; `get()` waits and re-raises
  the request's exception (same class names as `sky.exceptions`). `FAKE_SKY_LATENCY_S` adds a
  delay to every request, so concurrency is measurable: on the server for most, but `exec` and
  `queue` make their caller wait before the request id comes back, as the real blocking POSTs do.
  `FAKE_SKY_LATENCIES` (`exec=5,queue=1,job_status=1,tail_logs=1,launch=30`) sets it per call, and
  `FAKE_SKY_START_GAP_S` (`2-3`) is the wait before a cluster starts its next queued job (the job
  stays PENDING meanwhile), as SkyPilot's scheduler and job driver take: `bench/fleet_throughput.py`
  models a real fleet with them.
- `tail_logs(preload_content=False)` never raises for the cluster (the real one never calls get()).
- Each cluster has a FIFO job queue with integer ids (a `SlotQueue`: jobs run one at a time as
  local processes, detached from the caller, and survive it).
- `exec` syncs `task.workdir` into the cluster's one shared `sky_workdir` add-only (new and changed
  files overwrite, nothing is deleted) and queues the run script, which starts in `sky_workdir`
  whenever its turn comes: a queued job sees whatever was synced last, exactly as on a real cluster.
- `launch` returns once the cluster is UP; the task's setup then runs as the cluster's next job
  (detached, beside the GPU queue: SETTING_UP, then SUCCEEDED or FAILED_SETUP, with its own log).
  A launch on an UP cluster skips setup. Capacity per accelerator is finite.
- GPU availability rows are plain lists, as they arrive from an API server.

State lives in files under `FAKE_SKY_HOME` (default `<cwd>/.fleet/fake-sky`), so separate
processes see the same clusters; `fleet.testing.fake_sky_state` keeps it. This module is the SDK's
surface on top: its functions, with its enums, exceptions, Task, Resources and records (defined in
`fleet.testing.fake_sky_types`) re-exported. Test helpers that inject failures (`kill_cluster`, `preempt_cluster`, `fail_next_jobs`, `hold_execs`, ...) are
re-exported here, so tests reach everything through this one module.
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, Iterator

from fleet.testing import fake_sky_state as state
from fleet.testing.fake_sky_state import (  # re-exported: tests drive the fake through this module
    DEFAULT_CAPACITY,
    flap_cluster,
    hold_execs,
    home,
    kill_cluster,
    make_unreachable,
    preempt_cluster,
    release_execs,
    reset,
    set_capacity,
    start_api_server,
    stop_api_server,
)
from fleet.testing.fake_sky_types import (  # re-exported: the SDK's names
    FAKE_CONTEXT,
    ClusterStatus,
    Handle,
    JobStatus,
    RealtimeGpuAvailability,
    Record,
    Resources,
    StatusRefreshMode,
    Task,
    exceptions,
)

__version__ = "0.14.1-fake"
API_URL = "http://127.0.0.1:46580"
NO_TIMEOUT_S = 10.0 * 365 * 24 * 3600  # SkyPilot jobs have no timeout of their own


# --- the cluster checks every call makes ----------------------------------------------------------
def _require_up(name: str) -> dict:
    meta = state.meta(name)
    if meta is None:
        raise exceptions.ClusterDoesNotExist(f"Cluster {name!r} does not exist.")
    if meta["status"] == "UP" and meta.get("flaps") and state.take_flap(name):
        raise exceptions.ClusterNotUpError(f"Cluster {name!r} is not up (status: INIT).",
                                           cluster_status=ClusterStatus.INIT)
    if meta["status"] != "UP":
        raise exceptions.ClusterNotUpError(
            f"Cluster {name!r} is not up (status: {meta['status']}).", cluster_status=ClusterStatus(meta["status"]))
    if meta.get("unreachable"):
        raise exceptions.CommandError(255, "skylet", f"Failed to reach cluster {name!r}: connection refused", None)
    return meta


def _check_api() -> None:
    if state.api_down():
        raise exceptions.ApiServerConnectionError(API_URL)


def latency_of(call: str) -> float:
    """Seconds a request costs: its entry in FAKE_SKY_LATENCIES (`exec=5,queue=1,tail_logs=1`),
    else FAKE_SKY_LATENCY_S (every call), else nothing."""
    for item in os.environ.get("FAKE_SKY_LATENCIES", "").split(","):
        name, _, seconds = item.partition("=")
        if name.strip() == call:
            return float(seconds)
    return float(os.environ.get("FAKE_SKY_LATENCY_S", "0") or 0)


def _latency(call: str) -> None:
    delay = latency_of(call)
    if delay > 0:
        time.sleep(delay)


def _start_gap() -> float:
    """The wait between a cluster's queue reaching a job and the job starting (FAKE_SKY_START_GAP_S,
    seconds or a `low-high` range drawn uniformly): SkyPilot's scheduler and job driver take a couple
    of seconds to start the next queued job."""
    text = os.environ.get("FAKE_SKY_START_GAP_S", "").strip()
    if not text:
        return 0.0
    low, _, high = text.partition("-")
    return random.uniform(float(low), float(high or low))


_BLOCKING_POSTS = ("exec", "queue")


def _blocking_post(call: str) -> None:
    """The part of a request the caller waits for before it gets a request id.

    The real `sky.exec` validates the task (POST /validate), uploads the workdir to a remote API
    server, then POSTs /exec; `sky.queue` POSTs /queue: each blocks its caller for a round-trip
    before returning (sky/client/sdk.py), so only threads make many of them concurrent. Their
    latency is spent here, where the caller waits, instead of on the server.
    """
    _check_api()
    _latency(call)


# --- requests: ids, a thread pool, get() ----------------------------------------------------------
_pool: ThreadPoolExecutor | None = None
_requests: dict[str, Future] = {}
_requests_lock = threading.Lock()


def _submit(name: str, fn, *args: Any, **kwargs: Any) -> str:
    """Start a request; it costs FAKE_SKY_LATENCY_S on the server, unless its caller already paid it."""
    global _pool
    _check_api()
    server_latency = name not in _BLOCKING_POSTS
    with _requests_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="fake-sky")
        request_id = f"{uuid.uuid4().hex}-{name}"

        def run() -> Any:
            if server_latency:
                _latency(name)
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


def api_info() -> Record:
    _check_api()
    return Record(status="healthy", api_version="fake", version=__version__, commit="fake", user=None)


# --- clusters -------------------------------------------------------------------------------------
def _task_accelerator(task: Task) -> str | None:
    choices = task.accelerator_choices()
    return choices[0] if choices else None


def _do_launch(task: Task, cluster_name: str, idle_minutes_to_autostop: int | None, down: bool) -> tuple:
    with state.locked():
        meta = state.meta(cluster_name)
        newly_provisioned = meta is None or meta["status"] != "UP"
        if not newly_provisioned:
            accelerator = meta["accelerator"]
            wanted = task.accelerator_choices()
            if wanted and accelerator not in wanted:
                raise exceptions.ResourcesMismatchError(
                    f"Requested resources {wanted} do not match the existing cluster {cluster_name!r} ({accelerator}).")
        else:
            accelerator = next((a for a in task.accelerator_choices() if state.in_use(a) < state.capacity(a)), None)
            if accelerator is None:
                raise exceptions.ResourcesUnavailableError(
                    f"Failed to provision {cluster_name!r}: no capacity for {task.accelerator_choices()} "
                    f"in Kubernetes context {FAKE_CONTEXT!r}.")
            meta = state.set_meta(cluster_name, name=cluster_name, status="INIT", accelerator=accelerator,
                                  launched_at=int(time.time()), autostop=idle_minutes_to_autostop or -1,
                                  to_down=bool(down))
    state.sync_workdir(cluster_name, task.workdir)
    state.set_meta(cluster_name, status="UP")
    if not newly_provisioned:
        # "Setup will be skipped if provisioning was skipped" (sky/execution.py)
        return (_enqueue(cluster_name, task) if task.run else None), Handle(cluster_name, accelerator)
    if task.setup and not task.run:
        # Detached setup (sky/execution.py `detach_setup`): launch returns once the cluster is UP,
        # and the setup runs as the cluster's next job (SETTING_UP, then SUCCEEDED or FAILED_SETUP).
        env = {**state.cluster_env(), **task.envs, **task.secrets, "SKYPILOT_CLUSTER_NAME": cluster_name,
               "SKYPILOT_SETUP_NODE_RANK": "0"}
        job_id = state.add_detached_job(cluster_name, task.name or "sky-cmd", task.setup,
                                        str(state.workdir(cluster_name)), env, NO_TIMEOUT_S)
        return job_id, Handle(cluster_name, accelerator)
    if task.setup:  # setup and run: one job that runs both (its setup failing shows as FAILED)
        task = Task(task.name, run=f"{task.setup}\n{task.run}", envs=task.envs, workdir=None,
                    resources=task.resources)
    return (_enqueue(cluster_name, task) if task.run else None), Handle(cluster_name, accelerator)


def _enqueue(cluster_name: str, task: Task) -> int:
    with state.locked(f"exec-{cluster_name}"):
        meta = _require_up(cluster_name)
        wanted = task.accelerator_choices()
        if wanted and meta["accelerator"] not in wanted:
            raise exceptions.ResourcesMismatchError(
                f"Task requires {wanted} but cluster {cluster_name!r} has {meta['accelerator']}.")
        state.sync_workdir(cluster_name, task.workdir)
        queue = state.job_queue(cluster_name)
        forced = state.forced_failures(cluster_name)
        script = task.run or "true"
        if forced:
            # The job fails outside the experiment's code (setup or driver), as the injection asked.
            script = f"echo 'injected {forced[0]} on {cluster_name}' >&2; exit 1"
        next_id = queue.peek_next_id()  # no other exec can take it: this cluster's exec lock is held
        env = {**state.cluster_env(), **task.envs, **task.secrets, "SKYPILOT_TASK_ID": f"fake-{cluster_name}-{next_id}",
               "SKYPILOT_NUM_GPUS_PER_NODE": "1", "SKYPILOT_CLUSTER_NAME": cluster_name}
        log = str(state.cluster_dir(cluster_name) / "logs" / f"{next_id}.log")
        job_id = queue.submit(task.name or "sky-cmd", script, str(state.workdir(cluster_name)), env, NO_TIMEOUT_S, log,
                              start_delay_s=_start_gap())
        if forced:
            state.record_forced_outcome(cluster_name, job_id, forced)
        return job_id


def launch(task: Task, cluster_name: str | None = None, retry_until_up: bool = False,
           idle_minutes_to_autostop: int | None = None, wait_for: Any = None, dryrun: bool = False,
           down: bool = False, backend: Any = None, optimize_target: Any = None, no_setup: bool = False,
           clone_disk_from: str | None = None, fast: bool = False, resize: bool = False) -> str:
    name = cluster_name or f"sky-{uuid.uuid4().hex[:4]}"
    return _submit("launch", _do_launch, task, name, idle_minutes_to_autostop, down)


def exec(task: Task, cluster_name: str | None = None, dryrun: bool = False, down: bool = False,  # noqa: A001
         backend: Any = None) -> str:
    _blocking_post("exec")  # validate, upload the workdir, POST /exec: all before the request id comes back
    hold = state.take_hold(cluster_name)

    def run() -> tuple:
        state.wait_while_held(hold)  # hold_execs(): this request sits on the server
        job_id = _enqueue(cluster_name, task)
        return job_id, Handle(cluster_name, state.meta(cluster_name)["accelerator"])

    return _submit("exec", run)


_STATES = {"pending": JobStatus.PENDING, "running": JobStatus.RUNNING, "succeeded": JobStatus.SUCCEEDED,
           "failed": JobStatus.FAILED, "timeout": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED,
           "lost": JobStatus.FAILED_DRIVER}


_SETUP_STATES = {"pending": JobStatus.PENDING, "running": JobStatus.SETTING_UP, "succeeded": JobStatus.SUCCEEDED,
                 "failed": JobStatus.FAILED_SETUP, "timeout": JobStatus.FAILED_SETUP,
                 "cancelled": JobStatus.CANCELLED, "lost": JobStatus.FAILED_SETUP}


def _job_records(cluster_name: str) -> list[Record]:
    _require_up(cluster_name)
    outcomes = state.job_outcomes(cluster_name)
    records = []
    for job in state.job_queue(cluster_name).jobs(archived=True):  # `sky queue` lists finished jobs too
        if job.state == state.DETACHED:
            job_id, setup = job.job_id, state.detached_job(cluster_name, job.job_id)
            job = dataclasses.replace(setup, job_id=job_id) if setup else dataclasses.replace(job, state="failed")
            status = _SETUP_STATES[job.state]
        else:
            status = _STATES[job.state]
        if status == JobStatus.FAILED and str(job.job_id) in outcomes:
            status = JobStatus(outcomes[str(job.job_id)])
        records.append(Record(job_id=job.job_id, job_name=job.name, username="fake", user_hash="fake",
                               submitted_at=job.submitted_at, start_at=job.started_at, end_at=job.ended_at,
                               resources="1x[GPU:1]", status=status, log_path=job.log, metadata={}, links={}))
    return records


def queue(cluster_name: str, skip_finished: bool = False, all_users: bool = False) -> str:
    _blocking_post("queue")

    def run() -> list[Record]:
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


def tail_logs(cluster_name: str, job_id: int | None, follow: bool, tail: int = 0, output_stream: Any = None,
              *, preload_content: bool = True) -> int | Iterator[str | None]:
    # Not a request: the real SDK streams the HTTP response back directly. With preload_content
    # (the default) it then calls get() on the logs request, which raises the request's error;
    # without it, it only decodes the stream, so an error reads as an empty (or cut-short) log.
    if output_stream is not None and not preload_content:
        raise ValueError("output_stream cannot be specified when preload_content is False")
    _check_api()
    _latency("tail_logs")
    try:
        _require_up(cluster_name)
    except Exception:
        if preload_content:
            raise
        return iter([None])
    path = state.log_path(cluster_name, job_id)
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
    _latency("download_logs")
    _require_up(cluster_name)
    out = {}
    ids = [int(j) for j in job_ids] if job_ids else [j.job_id for j in state.job_queue(cluster_name).jobs()[-1:]]
    for job_id in ids:
        src = state.log_path(cluster_name, job_id)
        dest = state.home() / "downloads" / cluster_name / f"{job_id}" / "run.log"
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
        q = state.job_queue(cluster_name)
        ids = q.job_ids() if all or all_users else list(job_ids or [])
        q.cancel([j for j in ids if j in set(q.job_ids())])
        setups = state.meta(cluster_name).get("setup_jobs", {})
        state.setup_queue(cluster_name).cancel([setups[str(j)] for j in ids if str(j) in setups])

    return _submit("cancel", run)


def down(cluster_name: str, purge: bool = False, graceful: bool = False, graceful_timeout: int | None = None) -> str:
    def run() -> None:
        with state.locked():
            if state.meta(cluster_name) is None:
                raise exceptions.ClusterDoesNotExist(f"Cluster {cluster_name!r} does not exist.")
            state.remove_cluster(cluster_name)

    return _submit("down", run)


def autostop(cluster_name: str, idle_minutes: int, wait_for: Any = None, down: bool = False,
             hook: str | None = None, hook_timeout: int | None = None) -> str:
    """Set the autostop again; as on a real cluster, this restarts its idle timer (`last_active`)."""
    def run() -> None:
        with state.locked():
            _require_up(cluster_name)
            state.set_meta(cluster_name, autostop=idle_minutes, to_down=bool(down), last_active=time.time(),
                           autostop_calls=(state.meta(cluster_name).get("autostop_calls") or 0) + 1)

    return _submit("autostop", run)


def status(cluster_names: list[str] | None = None, refresh: StatusRefreshMode = StatusRefreshMode.NONE,
           all_users: bool = False) -> str:
    def run() -> list[Record]:
        records = []
        for meta in state.cluster_metas():
            if cluster_names is not None and meta["name"] not in cluster_names:
                continue
            records.append(Record(
                name=meta["name"], launched_at=meta["launched_at"], status=ClusterStatus(meta["status"]),
                handle=Handle(meta["name"], meta["accelerator"]), autostop=meta["autostop"],
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
        # Lists, as they arrive from a real API server (encode_realtime_gpu_availability), not namedtuples.
        rows = [list(RealtimeGpuAvailability(gpu, [1], cap, max(0, cap - state.in_use(gpu))))
                for gpu, cap in sorted(state.capacities().items())
                if name_filter is None or name_filter.lower() in gpu.lower()]
        return [(FAKE_CONTEXT, rows)]

    return _submit("realtime_kubernetes_gpu_availability", run)


# `sky.client.sdk` for the functions `sky/__init__.py` does not re-export.
client = SimpleNamespace(sdk=SimpleNamespace(
    realtime_kubernetes_gpu_availability=realtime_kubernetes_gpu_availability))


# --- test helpers: the things that happen to real clusters ----------------------------------------
# set_capacity, kill_cluster, preempt_cluster, make_unreachable, stop_api_server, start_api_server and
# reset live with the state in fake_sky_state (imported above); this one checks the status it is given.
def fail_next_jobs(cluster_name: str, status: str = "FAILED_SETUP", count: int = 1) -> None:
    """The next `count` jobs queued on the cluster end in `status` (FAILED_SETUP or FAILED_DRIVER)."""
    JobStatus(status)
    state.force_failures(cluster_name, [status] * count)


__all__ = [  # the SDK's surface, then the failure injectors tests drive it with
    "API_URL", "FAKE_CONTEXT", "ClusterStatus", "Handle", "JobStatus", "RealtimeGpuAvailability", "Record",
    "Resources", "StatusRefreshMode", "Task", "__version__", "api_info", "autostop", "cancel", "client", "download_logs",
    "exceptions", "exec", "get", "job_status", "launch", "queue", "realtime_kubernetes_gpu_availability",
    "status", "stream_and_get", "tail_logs", "down",
    "DEFAULT_CAPACITY", "fail_next_jobs", "flap_cluster", "hold_execs", "home", "kill_cluster", "make_unreachable",
    "preempt_cluster", "release_execs", "reset", "set_capacity", "start_api_server", "stop_api_server",
]
