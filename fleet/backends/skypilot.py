"""The SkyPilot backend: single-GPU SkyPilot clusters (Kubernetes) fed through their `sky exec` queues.

Everything SkyPilot-specific stays in this module and its pure half, `sky_translate.py` (task
configs, status tables, records; its names are re-exported here): request ids and `sky.exceptions`
are translated here into the fleet's own errors, `JobStatus` and `ClusterStatus` there into its own
states. The backend's files in `.fleet/` are kept by `sky_state.py`, and what `up` decides between
its SDK calls (re-adopt, relaunch, wait for setup) is in `sky_setup.py`; neither touches the SDK. The SDK is chosen once: the `sdk` argument, else the module named by `FLEET_SKY_SDK` (the
test seam: `fleet.testing.fake_sky`), else `import sky`, lazily, because importing it costs seconds.

Every SDK call goes through `_call`, which only allows the functions and keywords listed in
`SDK_CALLS`; a contract test checks that list against the installed `skypilot` package.

Why each job selects a snapshot: a cluster has ONE `~/sky_workdir`, re-synced add-only by every
`sky exec`, and a queued job runs whatever was synced last. So each `sky exec` syncs a staging
directory holding only its own immutable, content-addressed `snapshots/<id>/` (never every
snapshot the project ever took), and each job's `FLEET_SNAPSHOT` picks its own.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from fleet.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ClusterLost,
    NotSubmitted,
    ProvisionFailed,
)
from fleet.backends.sky_setup import await_setups, launch_candidates, plan_up, setup_failure, up_error
from fleet.backends.sky_state import SkyState, mark_timeouts
from fleet.backends.sky_translate import (
    CLUSTER_STATES,
    JOB_STATES,
    SETUP_DONE,
    SETUP_JOB_NAME,
    GpuAvailability,
    build_launch_config,
    build_task_config,
    context_of,
    enum_value,
    gpu_row,
    job_info,
    launched_accelerator,
    record_field,
    task_accelerators,
)
from fleet.config import FleetConfig
from fleet.errors import InputError
from fleet.task import read_task_yaml
from fleet.types import ClusterInfo, ClusterState, JobInfo, JobSpec
from fleet.workspace import Workspace

# The SDK surface this module uses: function -> keywords passed. Calls are made by keyword only.
SDK_CALLS: dict[str, tuple[str, ...]] = {
    "launch": ("task", "cluster_name", "idle_minutes_to_autostop", "down", "retry_until_up"),
    "exec": ("task", "cluster_name"),
    "queue": ("cluster_name", "skip_finished", "all_users"),
    "job_status": ("cluster_name", "job_ids"),
    "tail_logs": ("cluster_name", "job_id", "follow", "output_stream"),
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
MAX_UNREACHABLE_POLLS = 3  # consecutive failed polls before a cluster that claims UP counts as lost...
UNREACHABLE_GRACE_S = 120.0  # ...and only once it has failed for this long (a poll takes about a second)
# Concurrent SDK calls per batch: each real `sky exec`/`sky queue` blocks on its POST (and `exec` on
# a validation and a workdir upload) before it returns a request id, so they go out from threads.
MAX_CONCURRENT_REQUESTS = 64
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


class _NotUp(ClusterLost):
    """ClusterNotUpError: on Kubernetes also a passing INIT refresh, so `queues` confirms it first
    and a refused `exec` is only NotSubmitted."""


class SkyPilotBackend(Backend):
    name = "sky"

    def __init__(self, workspace: Workspace, config: FleetConfig, sdk: ModuleType | None = None,
                 infra: str | None = None, *, idle_minutes_to_autodown: int = 30, launch_attempts: int = 4,
                 backoff_s: float = 30.0, fallback_accelerator: bool = True, setup_poll_s: float = 5.0,
                 setup_timeout_s: float = 3600.0, unreachable_grace_s: float = UNREACHABLE_GRACE_S,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> None:
        self.workspace = workspace
        self.config = config
        self.infra = infra
        self.idle_minutes_to_autodown = idle_minutes_to_autodown
        self.launch_attempts = launch_attempts
        self.backoff_s = backoff_s
        self.fallback_accelerator = fallback_accelerator
        self.setup_poll_s = setup_poll_s
        self.setup_timeout_s = setup_timeout_s  # setup may install a framework: generous
        self.unreachable_grace_s = unreachable_grace_s
        self._sleep = sleep
        self._clock = clock
        self._sdk = sdk
        self._files = SkyState(workspace.state)  # known clusters, setup jobs, job timeouts, staged workdirs
        self._task_cache: tuple[float, dict] | None = None
        self._unreachable: dict[str, tuple[int, float]] = {}  # cluster -> (failed polls in a row, since)
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

    @staticmethod
    def _concurrently(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`fn` over `items` from a bounded thread pool, in order; a BackendError is returned, not raised.

        Each real SDK call blocks on its own HTTP round-trip(s) before it even returns a request id,
        so only threads make a batch over many clusters cost about one round-trip.
        """
        def guarded(item: Any) -> Any:
            try:
                return fn(item)
            except BackendError as exc:
                return exc

        if len(items) <= 1:
            return [guarded(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT_REQUESTS, len(items))) as pool:
            return list(pool.map(guarded, items))

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
            return _NotUp(cluster, f"it is not UP (status {state}; preempted or evicted)")
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
        """Known clusters; one whose setup has not succeeded is still PROVISIONING, whatever SkyPilot says."""
        known = self._files.known()
        if not known:
            return []
        records = self._status(sorted(known))
        setups = self._files.setups()
        out = []
        for name, accelerator in sorted(known.items()):
            record = records.get(name)
            info = (ClusterInfo(name, accelerator, ClusterState.LOST) if record is None
                    else self._cluster_info(name, record, accelerator))
            if info.state == ClusterState.UP and setups.get(name, {}).get("status", SETUP_DONE) != SETUP_DONE:
                info = ClusterInfo(name, info.accelerator, ClusterState.PROVISIONING)
            out.append(info)
        return out

    def up(self, names: Sequence[str], accelerators: Sequence[str]) -> list[ClusterInfo]:
        if len(names) != len(accelerators):
            raise ValueError(f"{len(names)} cluster names but {len(accelerators)} accelerators")
        task_yaml = self._task_yaml()
        records = self._status(names)
        existing = {name: self._cluster_info(name, records[name], acc) if name in records else None
                    for name, acc in zip(names, accelerators)}
        plan = plan_up(names, accelerators, existing, self._files.setups())
        ready, setting_up = plan.ready, plan.setting_up
        others = list(accelerators) + task_accelerators(task_yaml)
        todo = {name: launch_candidates(acc, others, self.fallback_accelerator) for name, acc in plan.to_launch.items()}
        self._files.remember({name: ready[name].accelerator for name in ready})
        if plan.broken:
            self.down(plan.broken)
        failures: dict[str, str] = {}
        attempt = 0
        while todo:
            chosen = {name: cands[attempt % len(cands)] for name, cands in todo.items()}
            requests = {name: self._call(
                "launch", name, task=self._sky_task(build_launch_config(
                    task_yaml, name=SETUP_JOB_NAME, workdir=self._project_workdir(task_yaml), accelerator=acc,
                    infra=self.infra, envs={"FLEET_BACKEND": self.name})),
                cluster_name=name, idle_minutes_to_autostop=self.idle_minutes_to_autodown, down=True,
                retry_until_up=False) for name, acc in chosen.items()}
            retry: dict[str, list[str]] = {}
            for name, request_id in requests.items():
                try:
                    job_id, handle = self._get(request_id, name)
                except BackendUnavailable:
                    raise
                except ProvisionFailed as exc:
                    failures[name] = str(exc)
                    retry[name] = todo[name]
                    continue
                except BackendError as exc:  # a mismatch or the like: retrying will not help
                    failures[name] = str(exc)
                    continue
                failures.pop(name, None)
                accelerator = launched_accelerator(handle) or chosen[name]
                self._files.remember({name: accelerator})
                if job_id is None:  # no setup to wait for
                    self._files.record_setup(name, None, SETUP_DONE)
                    ready[name] = ClusterInfo(name, accelerator, ClusterState.UP)
                else:
                    self._files.record_setup(name, int(job_id), "SETTING_UP")
                    setting_up[name] = (int(job_id), accelerator)
            attempt += 1
            if not retry or attempt >= self.launch_attempts:
                break
            self._sleep(self.backoff_s * 2 ** (attempt - 1))
            todo = retry
        setup_failures: dict[str, str] = {}
        outcomes = await_setups({name: job_id for name, (job_id, _) in setting_up.items()},
                                lambda items: self._concurrently(lambda item: self._job_status(*item), items),
                                clock=self._clock, sleep=self._sleep,
                                timeout_s=self.setup_timeout_s, poll_s=self.setup_poll_s)
        for name, outcome in outcomes.items():
            job_id, accelerator = setting_up[name]
            if outcome == SETUP_DONE:
                self._files.record_setup(name, job_id, SETUP_DONE)
                ready[name] = ClusterInfo(name, accelerator, ClusterState.UP)
            elif isinstance(outcome, BackendError):
                failures[name] = f"lost while its setup ran: {outcome}"
            else:
                self._files.record_setup(name, job_id, outcome)
                setup_failures[name] = setup_failure(name, job_id, outcome, self.setup_timeout_s)
        result = [ready[n] for n in names if n in ready]
        error = up_error(names, result, failures, setup_failures, attempt, self.config.task)
        if error is not None:
            raise error
        return result

    def _job_status(self, cluster: str, job_id: int) -> str:
        statuses = self._get(self._call("job_status", cluster, cluster_name=cluster, job_ids=[job_id]), cluster)
        status = statuses.get(job_id, statuses.get(str(job_id)))
        return "FAILED_SETUP" if status is None else enum_value(status)  # None: the job is gone

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
        self._files.forget([n for n in clusters if n not in failed])
        if failed:
            raise BackendError("; ".join(failed.values()) + ". Run `fleet down` again, or `sky down <name>`.")

    def _down_in_background(self, clusters: Sequence[str]) -> None:
        """Tear down lost clusters that still exist: their queued jobs would otherwise run as duplicates
        of the requeued work, and they would go on billing. Best effort; the cycle does not wait."""
        def request_downs() -> None:
            for name in clusters:
                with contextlib.suppress(BackendError):
                    self._call("down", name, cluster_name=name)  # the server acts without our get()

        if clusters:
            threading.Thread(target=request_downs, name="fleet-down-lost", daemon=True).start()

    # --- job timeouts: SkyPilot has none, so the backend cancels overdue jobs when it polls ------
    def _enforce_timeouts(self, out: dict[str, list[JobInfo] | ClusterLost]) -> None:
        """Cancel running jobs past their timeout and report them (now and later) as TIMEOUT."""
        timeouts = self._files.timeouts()
        if not timeouts:
            return
        overdue = mark_timeouts(out, timeouts, self._clock())
        if overdue:
            self._files.save_timeouts(timeouts)
            requests = {c: self._call("cancel", c, cluster_name=c, job_ids=ids) for c, ids in overdue.items()}
            for cluster, request_id in requests.items():
                with contextlib.suppress(ClusterLost):
                    self._get(request_id, cluster)

    # --- jobs --------------------------------------------------------------------------------
    def _accelerator_for(self, cluster: str, job: JobSpec) -> str:
        accelerator = job.accelerator or self._files.known().get(cluster)
        if not accelerator:
            raise BackendError(f"cluster {cluster!r} is not one of this fleet's clusters; run `fleet up` first")
        return accelerator

    def _job_workdir(self, snapshot: str) -> str:
        return self._files.stage_snapshot(snapshot, self.workspace.snapshot_dir(snapshot))

    def job_config(self, cluster: str, job: JobSpec) -> dict:
        envs = {**job.envs, "FLEET_BACKEND": self.name, "FLEET_SNAPSHOT": job.snapshot,
                "EXPERIMENT_ID": job.experiment_id}
        return build_task_config(self._task_yaml(), name=job.job_name, envs=envs,
                                 workdir=self._job_workdir(job.snapshot),
                                 accelerator=self._accelerator_for(cluster, job), infra=self.infra)

    def submit_many(self, items: Sequence[tuple[str, JobSpec]]) -> list[int | BackendError]:
        """Every `sky exec` goes out from its own thread, then all are collected: one round-trip for many."""
        if not items:
            return []
        self._task_yaml()  # read once here, not by every thread
        staged: dict[str, BackendError | None] = {}
        for _, job in items:  # each snapshot staged once, before the threads race for it
            if job.snapshot not in staged:
                try:
                    self._job_workdir(job.snapshot)
                    staged[job.snapshot] = None
                except BackendError as exc:
                    staged[job.snapshot] = exc

        def submit_one(item: tuple[str, JobSpec]) -> int:
            cluster, job = item
            problem = staged[job.snapshot]
            if problem is not None:
                raise problem
            request = self._call("exec", cluster, task=self._sky_task(self.job_config(cluster, job)), cluster_name=cluster)
            job_id, _ = self._get(request, cluster)
            return int(job_id)

        results: list[int | BackendError] = [
            NotSubmitted(str(r)) if isinstance(r, _NotUp) else r for r in self._concurrently(submit_one, items)]
        submitted = {f"{c}/{r}": {"name": j.job_name, "timeout_s": j.timeout_s}
                     for (c, j), r in zip(items, results) if not isinstance(r, BackendError)}
        self._files.add_timeouts(submitted)
        unavailable = next((r for r in results if isinstance(r, BackendUnavailable)), None)
        if unavailable is not None:
            raise unavailable
        return results

    def submit(self, cluster: str, job: JobSpec) -> int:
        result = self.submit_many([(cluster, job)])[0]
        if isinstance(result, BackendError):
            raise result
        return result

    def queues(self, clusters: Sequence[str]) -> dict[str, list[JobInfo] | ClusterLost]:
        """Every `sky queue` goes out from its own thread, then all are collected (one round-trip, not N).

        A cluster is lost when SkyPilot says it does not exist or is not UP *and* `sky status`
        agrees (one call for all suspects), or when it fails to answer for several polls over a
        couple of minutes; meanwhile it keeps its last known queue. A lost cluster that still
        exists is torn down. When no cluster answers at all, the control plane is at fault, not
        the clusters: BackendUnavailable, and nobody is counted as lost.
        """
        def poll(cluster: str) -> list[Any]:
            return self._get(self._call("queue", cluster, cluster_name=cluster, skip_finished=False, all_users=False),
                             cluster)

        polled = dict(zip(clusters, self._concurrently(poll, list(clusters))))
        unavailable = next((v for v in polled.values() if isinstance(v, BackendUnavailable)), None)
        if unavailable is not None:
            raise unavailable
        failed = {c: v for c, v in polled.items() if isinstance(v, BackendError) and not isinstance(v, ClusterLost)}
        gone, to_down = self._confirm_lost({c: v for c, v in polled.items() if isinstance(v, ClusterLost)}, failed)
        alive = [c for c in clusters if c not in gone]
        if len(alive) > 1 and all(c in failed for c in alive):
            example = next(iter(failed.values()))
            raise BackendUnavailable(
                f"none of the {len(alive)} clusters answered `sky queue` (e.g. {example}); the SkyPilot API server "
                "or Kubernetes is failing, not the clusters. Check `sky api info` and `sky status`.")
        now = self._clock()
        setups = self._files.setups()
        out: dict[str, list[JobInfo] | ClusterLost] = dict(gone)
        for cluster in alive:
            if cluster in failed:
                strikes, since = self._unreachable.get(cluster, (0, now))
                self._unreachable[cluster] = (strikes + 1, since)
                if strikes + 1 >= MAX_UNREACHABLE_POLLS and now - since >= self.unreachable_grace_s:
                    out[cluster] = ClusterLost(cluster, f"unreachable for {strikes + 1} polls over {now - since:.0f}s "
                                                        f"({failed[cluster]}); it is being torn down")
                    to_down.append(cluster)
                elif cluster in self._last_queue:
                    out[cluster] = self._last_queue[cluster]
                continue
            self._unreachable.pop(cluster, None)
            setup_ids = setups.get(cluster, {}).get("job_ids", [])
            jobs = sorted((job_info(r) for r in polled[cluster]), key=lambda j: j.job_id)
            jobs = [j for j in jobs if not (j.name == SETUP_JOB_NAME and j.job_id in setup_ids)]
            self._last_queue[cluster] = jobs
            out[cluster] = jobs
        for cluster, value in out.items():
            if isinstance(value, ClusterLost):
                self._last_queue.pop(cluster, None)
                self._unreachable.pop(cluster, None)
        self._down_in_background(to_down)
        self._enforce_timeouts(out)
        return {c: out[c] for c in clusters if c in out}

    def _confirm_lost(self, suspects: dict[str, ClusterLost],
                      failed: dict[str, BackendError]) -> tuple[dict[str, ClusterLost], list[str]]:
        """Which suspects `sky status` agrees are gone or not UP; the others join `failed` (a strike).

        Returns the lost clusters and those of them that still exist (to tear down).
        """
        if not suspects:
            return {}, []
        try:
            records = self._status(sorted(suspects))
        except BackendUnavailable:
            raise
        except BackendError:
            failed.update(suspects)  # could not confirm: a strike, not a loss
            return {}, []
        gone: dict[str, ClusterLost] = {}
        existing: list[str] = []
        for cluster, lost in suspects.items():
            record = records.get(cluster)
            if record is not None and self._cluster_info(cluster, record, "").state == ClusterState.UP:
                failed[cluster] = lost  # e.g. a passing INIT refresh on Kubernetes: UP again by now
                continue
            gone[cluster] = ClusterLost(cluster, lost.reason + ("; it is being torn down" if record is not None else ""))
            if record is not None:
                existing.append(cluster)
        return gone, existing

    def logs(self, cluster: str, job_id: int) -> str:
        """The job's output, from `tail_logs` (no follow) into a buffer; downloaded if that is unsupported.

        `preload_content` stays True: with False the SDK only decodes the stream and never calls
        get(), so a lost cluster or a kubectl failure would read as an empty or partial log
        (sky/client/sdk.py, tail_logs).
        """
        buffer = io.StringIO()
        try:
            self._call("tail_logs", cluster, cluster_name=cluster, job_id=job_id, follow=False, output_stream=buffer)
            text = buffer.getvalue()
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
        results: list[str | BackendError] = self._concurrently(lambda item: self.logs(*item), items)
        unavailable = next((r for r in results if isinstance(r, BackendUnavailable)), None)
        if unavailable is not None:
            raise unavailable
        return results

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
        out = [GpuAvailability(str(context), *gpu_row(row)) for context, rows in per_context or [] for row in rows]
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
