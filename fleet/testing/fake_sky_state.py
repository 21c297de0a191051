"""The fake SkyPilot's clusters, kept in files: what `fleet.testing.fake_sky` reads and changes.

State lives under `FAKE_SKY_HOME` (default `<cwd>/.fleet/fake-sky`), so separate processes
(background controllers, CLI commands) see the same clusters:

    clusters/<name>/meta.json      status, accelerator, autostop; `unreachable` when injected
    clusters/<name>/queue/         the cluster's FIFO job queue (a `SlotQueue`)
    clusters/<name>/setup_queue/   where a launch's detached setup job really runs (see below)
    clusters/<name>/sky_workdir/   the one shared workdir every `exec` syncs into, add-only
    clusters/<name>/logs/          one log per job
    clusters/<name>/inject.json    forced failures for the next jobs; outcomes.json: their statuses
    capacity.json, api_down        capacity per accelerator; the API server is "down" while it exists

Nothing here raises SkyPilot's exceptions or builds its records: `fake_sky` does that on top. The
test helpers at the bottom are the things that happen to real clusters; `fake_sky` re-exports them.
"""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleet.backends.slot_queue import SlotQueue

DEFAULT_CAPACITY = 64  # per accelerator, when set_capacity() was not called


# --- files ----------------------------------------------------------------------------------------
def home() -> Path:
    root = os.environ.get("FAKE_SKY_HOME")
    return Path(root) if root else Path.cwd() / ".fleet" / "fake-sky"


def clusters_dir() -> Path:
    return home() / "clusters"


def cluster_dir(name: str) -> Path:
    return clusters_dir() / name


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(name: str = "state") -> Iterator[None]:
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / f"{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- clusters -------------------------------------------------------------------------------------
def meta(name: str) -> dict | None:
    return read_json(cluster_dir(name) / "meta.json")


def set_meta(cluster_name: str, **changes: Any) -> dict:
    merged = {**(meta(cluster_name) or {}), **changes}
    write_json(cluster_dir(cluster_name) / "meta.json", merged)
    return merged


def cluster_metas() -> list[dict]:
    """Every cluster's meta, by cluster name (a directory without one is being created or removed)."""
    if not clusters_dir().exists():
        return []
    metas = (read_json(d / "meta.json") for d in sorted(clusters_dir().iterdir()))
    return [m for m in metas if m is not None]


def job_queue(name: str) -> SlotQueue:
    return SlotQueue(cluster_dir(name) / "queue")


def setup_queue(name: str) -> SlotQueue:
    return SlotQueue(cluster_dir(name) / "setup_queue")


DETACHED = "detached"  # the state of a job-queue entry that runs elsewhere (in the setup queue)


def add_detached_job(cluster_name: str, job_name: str, script: str, cwd: str, env: dict[str, str],
                     timeout_s: float) -> int:
    """Queue a launch's setup as the cluster's next job id, running at once beside the FIFO queue.

    On a real cluster the setup job asks for no GPU (cloud_vm_ray_backend.py `_execute` resets its
    resources), so the scheduler starts GPU jobs queued after it while it is still SETTING_UP. Here
    the id is reserved in the cluster's queue (an entry its runner skips) and the script runs in
    the cluster's setup queue; `fake_sky` reports it under the reserved id, with its own log.
    """
    queue = job_queue(cluster_name)
    queue.jobs_dir.mkdir(parents=True, exist_ok=True)
    with queue._lock():  # noqa: SLF001 - the queue's own id allocation, as SlotQueue.submit does it
        job_id = queue._allocate_id()  # noqa: SLF001
        log, now = str(cluster_dir(cluster_name) / "logs" / f"{job_id}.log"), time.time()
        write_json(queue._spec(job_id), {"name": job_name, "script": "true", "cwd": cwd, "env": {},  # noqa: SLF001
                                         "timeout_s": timeout_s, "log": log, "submitted_at": now})
        write_json(queue._state(job_id), {"state": DETACHED, "name": job_name, "log": log,  # noqa: SLF001
                                          "submitted_at": now})
    setup_id = setup_queue(cluster_name).submit(job_name, script, cwd, env, timeout_s, log)
    set_meta(cluster_name, setup_jobs={**(meta(cluster_name) or {}).get("setup_jobs", {}), str(job_id): setup_id})
    return job_id


def detached_job(cluster_name: str, job_id: int) -> Any:
    """The setup-queue job behind a detached entry of the cluster's queue (a QueuedJob), or None."""
    setup_id = (meta(cluster_name) or {}).get("setup_jobs", {}).get(str(job_id))
    return None if setup_id is None else setup_queue(cluster_name).job(setup_id)


# A cluster's own login environment: what its jobs see besides the task's envs and secrets. Taken
# from this machine (the fake cluster runs here), but only what programs need, like a fresh pod:
# nothing else of the caller's environment reaches a job on a real cluster either.
CLUSTER_ENV = ("PATH", "HOME", "LANG", "TMPDIR")


def cluster_env() -> dict[str, str]:
    return {k: os.environ[k] for k in CLUSTER_ENV if k in os.environ}


def workdir(name: str) -> Path:
    return cluster_dir(name) / "sky_workdir"


def log_path(cluster_name: str, job_id: int | None) -> Path | None:
    """The log of a job (None: the latest one)."""
    queue = job_queue(cluster_name)
    if job_id is None:
        live = queue.jobs()  # the latest job is never compacted away
        job_id = live[-1].job_id if live else None
    job = None if job_id is None else queue.job(job_id)
    return None if job is None else Path(job.log)


def capacity(accelerator: str) -> int:
    return int(read_json(home() / "capacity.json", {}).get(accelerator, DEFAULT_CAPACITY))


def capacities() -> dict[str, int]:
    """Capacity per accelerator: H100 and H200 by default, and whatever set_capacity() named."""
    return {"H100": DEFAULT_CAPACITY, "H200": DEFAULT_CAPACITY, **read_json(home() / "capacity.json", {})}


def in_use(accelerator: str) -> int:
    if not clusters_dir().exists():
        return 0
    metas = (read_json(d / "meta.json") or {} for d in clusters_dir().iterdir())
    return sum(1 for m in metas if m.get("accelerator") == accelerator)


def remove_cluster(name: str) -> None:
    d = cluster_dir(name)
    if not d.exists():
        return
    job_queue(name).kill_all()
    setup_queue(name).kill_all()
    grave = home() / "graveyard" / f"{name}-{uuid.uuid4().hex[:6]}"
    grave.parent.mkdir(parents=True, exist_ok=True)
    os.replace(d, grave)
    shutil.rmtree(grave, ignore_errors=True)


def api_down() -> bool:
    return (home() / "api_down").exists()


# --- forced job failures: the next jobs queued on a cluster end in a given status -----------------
def forced_failures(cluster_name: str) -> list[str]:
    return read_json(cluster_dir(cluster_name) / "inject.json", [])


def force_failures(cluster_name: str, statuses: list[str]) -> None:
    write_json(cluster_dir(cluster_name) / "inject.json", forced_failures(cluster_name) + statuses)


def record_forced_outcome(cluster_name: str, job_id: int, forced: list[str]) -> None:
    """Job `job_id` took the first of `forced`; the rest wait for the next jobs."""
    outcomes = job_outcomes(cluster_name)
    outcomes[str(job_id)] = forced[0]
    write_json(cluster_dir(cluster_name) / "outcomes.json", outcomes)
    write_json(cluster_dir(cluster_name) / "inject.json", forced[1:])


def job_outcomes(cluster_name: str) -> dict[str, str]:
    """Job id -> the status forced on it, for jobs that failed on purpose."""
    return read_json(cluster_dir(cluster_name) / "outcomes.json", {})


# --- syncing a workdir like SkyPilot does ---------------------------------------------------------
def sync_workdir(name: str, task_workdir: str | None) -> None:
    """Sync a task's workdir into the cluster's one shared sky_workdir, add-only, like SkyPilot does."""
    target = workdir(name)
    target.mkdir(parents=True, exist_ok=True)
    if task_workdir:
        src = Path(task_workdir).expanduser()
        _rsync(src, target, _ignore_rules(src))


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
            try:
                st = source.stat()
            except FileNotFoundError:
                continue  # vanished since the walk listed it (a temp file): rsync skips it too
            with contextlib.suppress(FileNotFoundError):
                old = target.stat()
                if old.st_size == st.st_size and old.st_mtime_ns == st.st_mtime_ns:
                    continue
            tmp = out_dir / f".{name}.{os.getpid()}.{threading.get_ident()}.sync"
            try:
                shutil.copy2(source, tmp)
            except FileNotFoundError:
                continue
            os.replace(tmp, target)


# --- test helpers: the things that happen to real clusters ----------------------------------------
def set_capacity(accelerator: str, n: int) -> None:
    """At most `n` clusters may hold `accelerator`; launching more raises ResourcesUnavailableError."""
    with locked():
        caps = read_json(home() / "capacity.json", {})
        caps[accelerator] = n
        write_json(home() / "capacity.json", caps)


def kill_cluster(name: str) -> None:
    """The cluster vanishes (node gone, pod deleted): its jobs die, later calls raise ClusterDoesNotExist."""
    with locked():
        remove_cluster(name)


def preempt_cluster(name: str) -> None:
    """The pod is evicted: jobs die and the cluster drops to INIT, so calls raise ClusterNotUpError."""
    job_queue(name).kill_all()
    setup_queue(name).kill_all()
    set_meta(name, status="INIT")


def make_unreachable(name: str, unreachable: bool = True) -> None:
    """Status says UP but every call to the cluster fails (the skylet cannot be reached)."""
    set_meta(name, unreachable=unreachable)


def hold_execs(name: str, count: int = 1) -> None:
    """The next `count` `sky exec` requests to the cluster are accepted (a request id comes back)
    but sit on the API server until release_execs(): a submission still in flight when its caller
    dies or gives up on it. Later requests go through."""
    write_json(cluster_dir(name) / "hold.json", {"count": count})


def take_hold(name: str) -> Path | None:
    """For an exec request being created: a token it waits on while held, or None."""
    with locked(f"hold-{name}"):
        count = (read_json(cluster_dir(name) / "hold.json") or {}).get("count", 0)
        if count <= 0:
            return None
        write_json(cluster_dir(name) / "hold.json", {"count": count - 1})
        token = cluster_dir(name) / "held" / uuid.uuid4().hex
        token.parent.mkdir(parents=True, exist_ok=True)
        token.touch()
        return token


def release_execs(name: str) -> None:
    (cluster_dir(name) / "hold.json").unlink(missing_ok=True)
    shutil.rmtree(cluster_dir(name) / "held", ignore_errors=True)


def wait_while_held(token: Path | None, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while token is not None and token.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def flap_cluster(name: str, calls: int = 1) -> None:
    """The next `calls` calls to the cluster raise ClusterNotUpError while `sky status` still says UP
    (on Kubernetes, a status refresh that saw the pod mid-restart)."""
    set_meta(name, flaps=calls)


def take_flap(name: str) -> bool:
    """Whether this call to the cluster is one that `flap_cluster` made fail."""
    with locked(f"flap-{name}"):
        flaps = (meta(name) or {}).get("flaps", 0)
        if flaps > 0:
            set_meta(name, flaps=flaps - 1)
        return flaps > 0


def stop_api_server() -> None:
    """Every call raises ApiServerConnectionError until start_api_server()."""
    home().mkdir(parents=True, exist_ok=True)
    (home() / "api_down").touch()


def start_api_server() -> None:
    (home() / "api_down").unlink(missing_ok=True)


def reset() -> None:
    """Kill every fake cluster's jobs and forget all state (test teardown)."""
    if clusters_dir().exists():
        for d in list(clusters_dir().iterdir()):
            with contextlib.suppress(Exception):
                remove_cluster(d.name)
    shutil.rmtree(home(), ignore_errors=True)
