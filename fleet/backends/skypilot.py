"""The SkyPilot backend: single-GPU SkyPilot clusters (Kubernetes) fed through their `sky exec` queues.

Everything SkyPilot-specific stays in this module and its pure half, `sky_translate.py` (task
configs, status tables, records; its names are re-exported here): request ids and `sky.exceptions`
are translated here into the fleet's own errors, `JobStatus` and `ClusterStatus` there into its own
states. The SDK is chosen once: the `sdk` argument, else the module named by `FLEET_SKY_SDK` (the
test seam: `fleet.testing.fake_sky`), else `import sky`, lazily, because importing it costs seconds.

Every SDK call goes through `_call`, which only allows the functions and keywords listed in
`SDK_CALLS`; a contract test checks that list against the installed `skypilot` package.

Why each job selects a snapshot: a cluster has ONE `~/sky_workdir`, re-synced add-only by every
`sky exec`, and a queued job runs whatever was synced last. So the synced workdir holds immutable,
content-addressed `snapshots/<id>/`, and each job's `FLEET_SNAPSHOT` picks its own.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from fleet.backends.base import Backend, BackendError, BackendUnavailable, ClusterLost, ProvisionFailed
from fleet.backends.sky_translate import (
    CLUSTER_STATES,
    JOB_STATES,
    GpuAvailability,
    build_launch_config,
    build_task_config,
    context_of,
    enum_value,
    job_info,
    launched_accelerator,
    record_field,
    task_accelerators,
)
from fleet.config import FleetConfig
from fleet.errors import InputError
from fleet.task import read_task_yaml
from fleet.types import ClusterInfo, ClusterState, JobInfo, JobSpec, JobState
from fleet.workspace import Workspace

# The SDK surface this module uses: function -> keywords passed. Calls are made by keyword only.
SDK_CALLS: dict[str, tuple[str, ...]] = {
    "launch": ("task", "cluster_name", "idle_minutes_to_autostop", "down", "retry_until_up"),
    "exec": ("task", "cluster_name"),
    "queue": ("cluster_name", "skip_finished", "all_users"),
    "tail_logs": ("cluster_name", "job_id", "follow", "preload_content"),
    "download_logs": ("cluster_name", "job_ids"),
    "cancel": ("cluster_name", "job_ids"),
    "down": ("cluster_name",),
    "status": ("cluster_names", "refresh"),
    "get": ("request_id",),
    "api_info": (),
    # not re-exported by `sky/__init__.py` in 0.14; the CLI's `sky show-gpus` reaches it the same way
    "client.sdk.realtime_kubernetes_gpu_availability": ("context", "name_filter"),
    "Task.from_yaml_config": ("config",),
}
SDK_EXCEPTIONS = (
    "ApiServerConnectionError", "ApiServerAuthenticationError", "ClusterDoesNotExist", "ClusterNotUpError",
    "ResourcesUnavailableError",
)
SDK_ATTRIBUTES = ("StatusRefreshMode.AUTO",)

UNREACHABLE_FIX = (
    "Start a local API server with `sky api start`, or see which server the SDK talks to with "
    "`sky api info` (a remote one needs `sky api login -e <URL>`)."
)
MAX_UNREACHABLE_POLLS = 3  # consecutive failed polls before a cluster that claims UP counts as lost
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def load_sdk(sdk: ModuleType | None = None) -> ModuleType:
    if sdk is not None:
        return sdk
    name = os.environ.get("FLEET_SKY_SDK")
    if name:
        return importlib.import_module(name)
    try:
        import sky  # noqa: PLC0415 - seconds to import; only commands that talk to clusters pay
    except ImportError:
        raise BackendUnavailable("SkyPilot is not installed: `pip install 'skyfleet[sky]'`, then `sky check kubernetes`") from None
    return sky


class SkyPilotBackend(Backend):
    name = "sky"

    def __init__(self, workspace: Workspace, config: FleetConfig, sdk: ModuleType | None = None,
                 infra: str | None = None, *, idle_minutes_to_autodown: int = 30, launch_attempts: int = 4,
                 backoff_s: float = 30.0, fallback_accelerator: bool = True,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> None:
        self.workspace = workspace
        self.config = config
        self.infra = infra
        self.idle_minutes_to_autodown = idle_minutes_to_autodown
        self.launch_attempts = launch_attempts
        self.backoff_s = backoff_s
        self.fallback_accelerator = fallback_accelerator
        self._sleep = sleep
        self._clock = clock
        self._sdk = sdk
        self._task_cache: tuple[float, dict] | None = None
        self._unreachable: dict[str, int] = {}
        self._last_queue: dict[str, list[JobInfo]] = {}

    # --- the one place that calls the SDK ----------------------------------------------------
    @property
    def sdk(self) -> ModuleType:
        if self._sdk is None:
            self._sdk = load_sdk()
        return self._sdk

    def _call(self, fn: str, cluster: str | None = None, **kwargs: Any) -> Any:
        unknown = set(kwargs) - set(SDK_CALLS[fn])
        if unknown:  # keeps SDK_CALLS (and so the contract test) complete
            raise TypeError(f"{fn}() keywords {sorted(unknown)} are missing from SDK_CALLS")
        target: Any = self.sdk
        for part in fn.split("."):
            target = getattr(target, part)
        try:
            return target(**kwargs)
        except Exception as exc:  # noqa: BLE001 - translated; SkyPilot's types never leave this module
            raise self._translate(exc, cluster) from exc

    def _get(self, request_id: str, cluster: str | None = None) -> Any:
        return self._call("get", cluster, request_id=request_id)

    def _is(self, exc: BaseException, *names: str) -> bool:
        classes = tuple(c for c in (getattr(self.sdk.exceptions, n, None) for n in names) if isinstance(c, type))
        return bool(classes) and isinstance(exc, classes)

    def _translate(self, exc: Exception, cluster: str | None) -> BackendError:
        if isinstance(exc, BackendError):
            return exc
        where = f" on cluster {cluster!r}" if cluster else ""
        if self._is(exc, "ApiServerConnectionError") or _is_connection_error(exc):
            return BackendUnavailable(f"The SkyPilot API server cannot be reached ({_first_line(exc)}). {UNREACHABLE_FIX}")
        if self._is(exc, "ApiServerAuthenticationError"):
            return BackendUnavailable(f"The SkyPilot API server needs a login ({_first_line(exc)}): run `sky api login`.")
        if cluster and self._is(exc, "ClusterDoesNotExist"):
            return ClusterLost(cluster, "it no longer exists (deleted, evicted or autodowned)")
        if cluster and self._is(exc, "ClusterNotUpError"):
            state = enum_value(getattr(exc, "cluster_status", None) or "unknown")
            return ClusterLost(cluster, f"it is not UP (status {state}; preempted or evicted)")
        if self._is(exc, "ResourcesUnavailableError"):
            return ProvisionFailed(f"no capacity{where}: {_first_line(exc)}")
        return BackendError(f"SkyPilot {type(exc).__name__}{where}: {_first_line(exc)}")

    # --- the task file -----------------------------------------------------------------------
    def _task_yaml(self) -> dict:
        path = self.workspace.root / self.config.task
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise InputError(f"task file {path} does not exist; set `task:` in fleet.yaml or create experiment.yaml") from None
        if self._task_cache is None or self._task_cache[0] != mtime:
            self._task_cache = (mtime, read_task_yaml(path))
        return self._task_cache[1]

    def _project_workdir(self, task_yaml: dict) -> str | None:
        workdir = task_yaml.get("workdir")
        return str((self.workspace.root / workdir).resolve()) if isinstance(workdir, str) and workdir else None

    def _sky_task(self, config: dict) -> Any:
        return self._call("Task.from_yaml_config", config=config)

    # --- known clusters: the fleet never touches clusters it did not create ------------------
    @property
    def _known_path(self) -> Path:
        return self.workspace.state / "sky_clusters.json"

    def _known(self) -> dict[str, str]:
        try:
            return json.loads(self._known_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _remember(self, add: dict[str, str] | None = None, forget: Iterable[str] = ()) -> None:
        known = {**self._known(), **(add or {})}
        for name in forget:
            known.pop(name, None)
        self._known_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._known_path.with_name(f".{self._known_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, self._known_path)

    # --- clusters ----------------------------------------------------------------------------
    def _status(self, names: Sequence[str]) -> dict[str, Any]:
        refresh = self.sdk.StatusRefreshMode.AUTO
        records = self._get(self._call("status", cluster_names=list(names), refresh=refresh))
        return {record_field(r, "name"): r for r in records}

    def _cluster_info(self, name: str, record: Any, fallback_accelerator: str) -> ClusterInfo:
        state = CLUSTER_STATES.get(enum_value(record_field(record, "status")), ClusterState.LOST)
        if state == ClusterState.PROVISIONING and record_field(record, "init_kind") == "unhealthy":
            state = ClusterState.LOST
        accelerator = launched_accelerator(record_field(record, "handle")) or fallback_accelerator
        return ClusterInfo(name, accelerator, state)

    def clusters(self) -> list[ClusterInfo]:
        known = self._known()
        if not known:
            return []
        records = self._status(sorted(known))
        out = []
        for name, accelerator in sorted(known.items()):
            record = records.get(name)
            out.append(ClusterInfo(name, accelerator, ClusterState.LOST) if record is None
                       else self._cluster_info(name, record, accelerator))
        return out

    def up(self, names: Sequence[str], accelerators: Sequence[str]) -> list[ClusterInfo]:
        if len(names) != len(accelerators):
            raise ValueError(f"{len(names)} cluster names but {len(accelerators)} accelerators")
        task_yaml = self._task_yaml()
        existing = self._status(names)
        ready: dict[str, ClusterInfo] = {}
        todo: dict[str, list[str]] = {}
        for name, accelerator in zip(names, accelerators):
            record = existing.get(name)
            info = self._cluster_info(name, record, accelerator) if record is not None else None
            if info is not None and info.state == ClusterState.UP:
                ready[name] = info  # re-adopted as it is, with the accelerator it really has
            else:
                todo[name] = self._candidates(accelerator, list(accelerators) + task_accelerators(task_yaml))
        self._remember({name: ready[name].accelerator for name in ready})
        failures: dict[str, str] = {}
        attempt = 0
        while todo:
            chosen = {name: cands[attempt % len(cands)] for name, cands in todo.items()}
            requests = {name: self._call(
                "launch", name, task=self._sky_task(build_launch_config(
                    task_yaml, name="fleet-setup", workdir=self._project_workdir(task_yaml), accelerator=acc,
                    infra=self.infra, envs={"FLEET_BACKEND": self.name})),
                cluster_name=name, idle_minutes_to_autostop=self.idle_minutes_to_autodown, down=True,
                retry_until_up=False) for name, acc in chosen.items()}
            retry: dict[str, list[str]] = {}
            for name, request_id in requests.items():
                try:
                    _, handle = self._get(request_id, name)
                except BackendUnavailable:
                    raise
                except ProvisionFailed as exc:
                    failures[name] = str(exc)
                    retry[name] = todo[name]
                    continue
                except BackendError as exc:  # setup failed, or a mismatch: retrying will not help
                    failures[name] = str(exc)
                    continue
                failures.pop(name, None)
                ready[name] = ClusterInfo(name, launched_accelerator(handle) or chosen[name], ClusterState.UP)
                self._remember({name: ready[name].accelerator})
            attempt += 1
            if not retry or attempt >= self.launch_attempts:
                break
            self._sleep(self.backoff_s * 2 ** (attempt - 1))
            todo = retry
        result = [ready[n] for n in names if n in ready]
        if failures:
            error = ProvisionFailed(
                f"{len(failures)} of {len(names)} clusters could not be provisioned after {attempt} attempt(s): "
                + "; ".join(f"{n}: {why}" for n, why in failures.items())
                + ". Check free GPUs with `fleet gpus`, then run `fleet up` again (running clusters are re-adopted).")
            error.clusters = result  # type: ignore[attr-defined]
            error.failed = dict(failures)  # type: ignore[attr-defined]
            raise error
        return result

    def _candidates(self, accelerator: str, others: Iterable[str]) -> list[str]:
        if not self.fallback_accelerator:
            return [accelerator]
        return list(dict.fromkeys([accelerator, *(a for a in others if a and a != "cpu")]))

    def down(self, clusters: Sequence[str]) -> None:
        requests = {name: self._call("down", name, cluster_name=name) for name in clusters}
        failed: dict[str, str] = {}
        for name, request_id in requests.items():
            try:
                self._get(request_id, name)
            except ClusterLost:
                pass  # already gone
            except BackendUnavailable:
                raise
            except BackendError as exc:
                failed[name] = str(exc)
        gone = [n for n in clusters if n not in failed]
        self._remember(forget=gone)
        timeouts = self._timeouts()
        if timeouts:
            self._save_timeouts({k: v for k, v in timeouts.items() if k.rpartition("/")[0] not in gone})
        if failed:
            raise BackendError("; ".join(failed.values()) + ". Run `fleet down` again, or `sky down <name>`.")

    # --- job timeouts: SkyPilot has none, so the backend cancels overdue jobs when it polls ------
    @property
    def _timeouts_path(self) -> Path:
        return self.workspace.state / "sky_timeouts.json"

    def _timeouts(self) -> dict[str, dict]:
        try:
            return json.loads(self._timeouts_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_timeouts(self, data: dict[str, dict]) -> None:
        self._timeouts_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._timeouts_path.with_name(f".{self._timeouts_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._timeouts_path)

    def _enforce_timeouts(self, out: dict[str, list[JobInfo] | ClusterLost]) -> None:
        """Cancel running jobs past their timeout and report them (now and later) as TIMEOUT."""
        timeouts = self._timeouts()
        if not timeouts:
            return
        overdue: dict[str, list[int]] = {}
        now = self._clock()
        for cluster, jobs in out.items():
            if isinstance(jobs, ClusterLost):
                continue
            for i, job in enumerate(jobs):
                entry = timeouts.get(f"{cluster}/{job.job_id}")
                if entry is None or entry.get("name") != job.name:
                    continue
                if job.state == JobState.RUNNING and job.started_at and now - job.started_at > entry["timeout_s"]:
                    entry["expired"] = True
                    overdue.setdefault(cluster, []).append(job.job_id)
                if entry.get("expired") and job.state in (JobState.RUNNING, JobState.CANCELLED):
                    jobs[i] = JobInfo(job.job_id, job.name, JobState.TIMEOUT, job.started_at, job.ended_at)
        if overdue:
            self._save_timeouts(timeouts)
            requests = {c: self._call("cancel", c, cluster_name=c, job_ids=ids) for c, ids in overdue.items()}
            for cluster, request_id in requests.items():
                with contextlib.suppress(ClusterLost):
                    self._get(request_id, cluster)

    # --- jobs --------------------------------------------------------------------------------
    def _accelerator_for(self, cluster: str, job: JobSpec) -> str:
        accelerator = job.accelerator or self._known().get(cluster)
        if not accelerator:
            raise BackendError(f"cluster {cluster!r} is not one of this fleet's clusters; run `fleet up` first")
        return accelerator

    def job_config(self, cluster: str, job: JobSpec) -> dict:
        envs = {**job.envs, "FLEET_BACKEND": self.name, "FLEET_SNAPSHOT": job.snapshot,
                "EXPERIMENT_ID": job.experiment_id}
        return build_task_config(self._task_yaml(), name=job.job_name, envs=envs, workdir=str(self.workspace.workdir),
                                 accelerator=self._accelerator_for(cluster, job), infra=self.infra)

    def submit_many(self, items: Sequence[tuple[str, JobSpec]]) -> list[int | BackendError]:
        """Submit every `sky exec` first, then collect: one round-trip for many clusters."""
        requests: list[Any] = []
        for cluster, job in items:
            try:
                requests.append(self._call("exec", cluster, task=self._sky_task(self.job_config(cluster, job)),
                                           cluster_name=cluster))
            except BackendUnavailable:
                raise
            except BackendError as exc:
                requests.append(exc)
        results: list[int | BackendError] = []
        for (cluster, job), request in zip(items, requests):
            if isinstance(request, BackendError):
                results.append(request)
                continue
            try:
                job_id, _ = self._get(request, cluster)
            except BackendUnavailable:
                raise
            except BackendError as exc:
                results.append(exc)
                continue
            results.append(int(job_id))
        submitted = {f"{c}/{r}": {"name": j.job_name, "timeout_s": j.timeout_s}
                     for (c, j), r in zip(items, results) if not isinstance(r, BackendError)}
        if submitted:
            self._save_timeouts({**self._timeouts(), **submitted})
        return results

    def submit(self, cluster: str, job: JobSpec) -> int:
        result = self.submit_many([(cluster, job)])[0]
        if isinstance(result, BackendError):
            raise result
        return result

    def queues(self, clusters: Sequence[str]) -> dict[str, list[JobInfo] | ClusterLost]:
        """All `sky queue` requests go out first, then are collected (one round-trip, not N).

        A cluster that fails to answer for a reason other than being gone keeps its last known
        queue for a couple of polls (or is left out), then counts as lost.
        """
        requests: dict[str, Any] = {}
        out: dict[str, list[JobInfo] | ClusterLost] = {}
        for cluster in clusters:
            try:
                requests[cluster] = self._call("queue", cluster, cluster_name=cluster, skip_finished=False,
                                               all_users=False)
            except BackendUnavailable:
                raise
            except BackendError as exc:
                requests[cluster] = exc
        for cluster, request in requests.items():
            try:
                if isinstance(request, BackendError):
                    raise request
                records = self._get(request, cluster)
            except BackendUnavailable:
                raise
            except ClusterLost as lost:
                out[cluster] = lost
                continue
            except BackendError as exc:
                strikes = self._unreachable[cluster] = self._unreachable.get(cluster, 0) + 1
                if strikes >= MAX_UNREACHABLE_POLLS:
                    out[cluster] = ClusterLost(cluster, f"unreachable for {strikes} polls ({exc})")
                elif cluster in self._last_queue:
                    out[cluster] = self._last_queue[cluster]
                continue
            self._unreachable.pop(cluster, None)
            jobs = sorted((job_info(r) for r in records), key=lambda j: j.job_id)
            self._last_queue[cluster] = jobs
            out[cluster] = jobs
        for cluster, value in out.items():
            if isinstance(value, ClusterLost):
                self._last_queue.pop(cluster, None)
                self._unreachable.pop(cluster, None)
        self._enforce_timeouts(out)
        return {c: out[c] for c in clusters if c in out}

    def logs(self, cluster: str, job_id: int) -> str:
        """The job's output: streamed with `tail_logs` (no follow), else downloaded."""
        try:
            stream = self._call("tail_logs", cluster, cluster_name=cluster, job_id=job_id, follow=False,
                                preload_content=False)
            try:
                text = "".join(chunk for chunk in stream if chunk)
            except Exception as exc:  # noqa: BLE001 - the stream broke mid-way
                raise self._translate(exc, cluster) from exc
        except (ClusterLost, BackendUnavailable):
            raise
        except BackendError:
            text = self._downloaded_log(cluster, job_id)
        return _ANSI.sub("", text)

    def _downloaded_log(self, cluster: str, job_id: int) -> str:
        paths = self._call("download_logs", cluster, cluster_name=cluster, job_ids=[str(job_id)])
        path = Path(next(iter(paths.values()), "")).expanduser()
        path = path / "run.log" if path.is_dir() else path
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs_many(self, items: Sequence[tuple[str, int]]) -> list[str | BackendError]:
        """Logs of many jobs at once (each fetch is a blocking stream, so they run on threads)."""

        def fetch(item: tuple[str, int]) -> str | BackendError:
            try:
                return self.logs(*item)
            except BackendUnavailable:
                raise
            except BackendError as exc:
                return exc

        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(64, len(items))) as pool:
            return list(pool.map(fetch, items))

    def cancel(self, cluster: str, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return  # never send an empty list: SkyPilot would cancel the cluster's latest job
        try:
            self._get(self._call("cancel", cluster, cluster_name=cluster, job_ids=[int(j) for j in job_ids]), cluster)
        except ClusterLost:
            pass  # its jobs died with it

    # --- capacity and health -----------------------------------------------------------------
    def gpu_availability(self, infra: str | None = None) -> list[GpuAvailability]:
        """GPUs per Kubernetes context (capacity and free now), to size the fleet before `fleet up`."""
        try:
            per_context = self._get(self._call("client.sdk.realtime_kubernetes_gpu_availability",
                                               context=context_of(infra or self.infra), name_filter=None))
        except BackendUnavailable:
            raise
        except BackendError as exc:
            raise BackendError(f"{exc}. Is Kubernetes enabled? Run `sky check kubernetes`.") from exc
        out = []
        for context, rows in per_context or []:
            for row in rows:
                out.append(GpuAvailability(str(context), str(record_field(row, "gpu")),
                                           int(record_field(row, "capacity")), int(record_field(row, "available"))))
        return sorted(out, key=lambda g: (g.context, g.accelerator))

    def health(self) -> str:
        """The API server's version; BackendUnavailable (with the fix) when it cannot be reached."""
        info = self._call("api_info")
        version, status = record_field(info, "version", "?"), enum_value(record_field(info, "status", "?"))
        return f"SkyPilot API server {version} ({status})"


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_connection_error(exc: BaseException) -> bool:
    """Connection refused / DNS / timeouts from `requests` before SkyPilot wraps them."""
    if isinstance(exc, ConnectionError):
        return True
    return any(c.__name__ in ("ConnectionError", "ConnectTimeout") and c.__module__.startswith(("requests", "urllib3"))
               for c in type(exc).__mro__)


__all__ = [
    "CLUSTER_STATES",
    "JOB_STATES",
    "SDK_ATTRIBUTES",
    "SDK_CALLS",
    "SDK_EXCEPTIONS",
    "GpuAvailability",
    "SkyPilotBackend",
    "build_launch_config",
    "build_task_config",
    "context_of",
    "job_info",
    "load_sdk",
]
