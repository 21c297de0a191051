"""The SkyPilot backend: single-GPU SkyPilot clusters (Kubernetes) fed through their `sky exec` queues.

SkyPilot-specific code lives in this module and its helpers, none of which the rest of the fleet
sees: `sky_sdk.py` is the one place that calls the SDK (only the calls in `SDK_CALLS`, exceptions
translated into the fleet's own errors); `sky_translate.py` is pure (task configs, status tables,
records; `JobStatus` and `ClusterStatus` become the fleet's states); `sky_state.py` keeps the
backend's files in `.fleet/`; `sky_clusters.py` is the cluster half of the backend (status, launch,
setup, teardown), which this module's jobs half inherits; `sky_setup.py` decides what `up` does
between its SDK calls (re-adopt, relaunch, wait for setup). Their public names are re-exported here.

Why each job selects a snapshot: a cluster has ONE `~/sky_workdir`, re-synced add-only by every
`sky exec`, and a queued job runs whatever was synced last. So each `sky exec` syncs a staging
directory holding only its own immutable, content-addressed `snapshots/<id>/` (never every
snapshot the project ever took), and each job's `FLEET_SNAPSHOT` picks its own.
"""
from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from fleet.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ClusterLost,
    NoSpaceForJob,
    NotSubmitted,
)
from fleet.backends.sky_clusters import SkyClusters
from fleet.backends.sky_sdk import (
    SDK_ATTRIBUTES,
    SDK_CALLS,
    SDK_EXCEPTIONS,
    NotUp,
    SkySdk,
    concurrently,
    load_sdk,
    raise_unavailable,
    strip_colour,
)
from fleet.backends.sky_state import SkyState, mark_timeouts, settled_timeouts
from fleet.backends.sky_translate import (
    CLUSTER_STATES,
    JOB_STATES,
    SETUP_JOB_NAME,
    GpuAvailability,
    build_launch_config,
    build_task_config,
    context_of,
    enum_value,
    gpu_row,
    job_info,
    record_field,
)
from fleet.config import FleetConfig
from fleet.errors import disk_problem
from fleet.types import ClusterState, JobInfo, JobSpec
from fleet.workspace import Workspace

MAX_UNREACHABLE_POLLS = 3  # consecutive failed polls before a cluster that claims UP counts as lost...
UNREACHABLE_GRACE_S = 120.0  # ...and only once it has failed for this long (a poll takes about a second)


class SkyPilotBackend(SkyClusters, Backend):
    name = "sky"

    def __init__(self, workspace: Workspace, config: FleetConfig, sdk: ModuleType | None = None,
                 infra: str | None = None, *, idle_minutes_to_autodown: int | None = None, launch_attempts: int = 4,
                 backoff_s: float = 30.0, fallback_accelerator: bool = True, setup_poll_s: float = 5.0,
                 setup_timeout_s: float = 3600.0, unreachable_grace_s: float = UNREACHABLE_GRACE_S,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> None:
        self.workspace = workspace
        self.config = config
        self.infra = infra
        # Autodown is the safety net of a fleet whose controller is gone; the controller keeps idle
        # clusters up while the ledger has work (`keep_alive`).
        self.idle_minutes_to_autodown = (config.fleet_size.autodown_minutes if idle_minutes_to_autodown is None
                                         else idle_minutes_to_autodown)
        self.launch_attempts = launch_attempts
        self.backoff_s = backoff_s
        self.fallback_accelerator = fallback_accelerator
        self.setup_poll_s = setup_poll_s
        self.setup_timeout_s = setup_timeout_s  # setup may install a framework: generous
        self.unreachable_grace_s = unreachable_grace_s
        self._sleep = sleep
        self._clock = clock
        self.api = SkySdk(sdk)  # every SDK call goes through it
        self._files = SkyState(workspace.state)  # known clusters, setup jobs, job timeouts, staged workdirs
        self._task_cache: tuple[float, dict] | None = None
        self._unreachable: dict[str, tuple[int, float]] = {}  # cluster -> (failed polls in a row, since)
        self._last_queue: dict[str, list[JobInfo]] = {}

    # --- job timeouts: SkyPilot has none, so the backend cancels overdue jobs when it polls ------
    def _enforce_timeouts(self, out: dict[str, list[JobInfo] | ClusterLost]) -> None:
        """Cancel running jobs past their timeout and report them (now and later) as TIMEOUT."""
        timeouts = self._files.timeouts()
        if not timeouts:
            return
        overdue = mark_timeouts(out, timeouts, self._clock())
        settled = settled_timeouts(out, timeouts)
        for key in settled:
            del timeouts[key]
        if overdue or settled:
            self._files.save_timeouts(timeouts)
        if overdue:
            requests = {c: self.api.call("cancel", c, cluster_name=c, job_ids=ids) for c, ids in overdue.items()}
            for cluster, request_id in requests.items():
                with contextlib.suppress(ClusterLost):
                    self.api.get(request_id, cluster)

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
                                 accelerator=self._accelerator_for(cluster, job), infra=self.infra,
                                 secrets=self.passthrough())

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
                except OSError as exc:  # no room to stage its code: it never reaches a cluster
                    problem = disk_problem(exc, self.workspace.state, f"the staged code of snapshot {job.snapshot}")
                    if problem is None:
                        raise
                    staged[job.snapshot] = NoSpaceForJob(problem)

        def submit_one(item: tuple[str, JobSpec]) -> int:
            cluster, job = item
            problem = staged[job.snapshot]
            if problem is not None:
                raise problem
            request = self.api.call("exec", cluster, task=self._sky_task(self.job_config(cluster, job)), cluster_name=cluster)
            job_id, _ = self.api.get(request, cluster)
            return int(job_id)

        results: list[int | BackendError] = [
            NotSubmitted(f"cluster {r.cluster!r} refused the job: {r.reason}") if isinstance(r, NotUp) else r
            for r in concurrently(submit_one, items)]
        submitted = {f"{c}/{r}": {"name": j.job_name, "timeout_s": j.timeout_s}
                     for (c, j), r in zip(items, results) if not isinstance(r, BackendError)}
        self._files.add_timeouts(submitted)
        raise_unavailable(results)
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
            return self.api.get(self.api.call("queue", cluster, cluster_name=cluster, skip_finished=False, all_users=False),
                             cluster)

        polled = dict(zip(clusters, concurrently(poll, list(clusters))))
        raise_unavailable(polled.values())
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

    def log_tails(self, items: Sequence[tuple[str, int]], lines: int) -> list[str | BackendError]:
        """The last `lines` lines of each running job's log, `tail_logs(tail=lines)` on threads: a bounded
        read per job per cycle, whatever the log's length."""
        def tail(item: tuple[str, int]) -> str:
            cluster, job_id = item
            buffer = io.StringIO()
            self.api.call("tail_logs", cluster, cluster_name=cluster, job_id=job_id, follow=False, tail=lines,
                          output_stream=buffer)
            return strip_colour(buffer.getvalue())

        results: list[str | BackendError] = concurrently(tail, items)
        raise_unavailable(results)
        return results

    def logs(self, cluster: str, job_id: int) -> str:
        """The job's output, from `tail_logs` (no follow) into a buffer; downloaded if that is unsupported.

        `preload_content` stays True: with False the SDK only decodes the stream and never calls
        get(), so a lost cluster or a kubectl failure would read as an empty or partial log
        (sky/client/sdk.py, tail_logs).
        """
        buffer = io.StringIO()
        try:
            self.api.call("tail_logs", cluster, cluster_name=cluster, job_id=job_id, follow=False, output_stream=buffer)
            text = buffer.getvalue()
        except (ClusterLost, BackendUnavailable):
            raise
        except BackendError:
            text = self._downloaded_log(cluster, job_id)
        return strip_colour(text)

    def _downloaded_log(self, cluster: str, job_id: int) -> str:
        paths = self.api.call("download_logs", cluster, cluster_name=cluster, job_ids=[str(job_id)])
        path = Path(next(iter(paths.values()), "")).expanduser()
        path = path / "run.log" if path.is_dir() else path
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs_many(self, items: Sequence[tuple[str, int]]) -> list[str | BackendError]:
        """Logs of many jobs at once (each fetch is a blocking stream, so they run on threads)."""
        results: list[str | BackendError] = concurrently(lambda item: self.logs(*item), items)
        raise_unavailable(results)
        return results

    def cancel(self, cluster: str, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return  # never send an empty list: SkyPilot would cancel the cluster's latest job
        try:
            self.api.get(self.api.call("cancel", cluster, cluster_name=cluster, job_ids=[int(j) for j in job_ids]), cluster)
        except ClusterLost:
            pass  # its jobs died with it

    # --- capacity and health -----------------------------------------------------------------
    def gpu_availability(self, infra: str | None = None) -> list[GpuAvailability]:
        """GPUs per Kubernetes context (capacity and free now), to size the fleet before `fleet up`."""
        try:
            per_context = self.api.get(self.api.call("client.sdk.realtime_kubernetes_gpu_availability",
                                               context=context_of(infra or self.infra), name_filter=None))
        except BackendUnavailable:
            raise
        except BackendError as exc:
            raise BackendError(f"{exc}. Is Kubernetes enabled? Run `sky check kubernetes`.") from exc
        out = [GpuAvailability(str(context), *gpu_row(row)) for context, rows in per_context or [] for row in rows]
        return sorted(out, key=lambda g: (g.context, g.accelerator))

    def health(self) -> str:
        """The API server's version; BackendUnavailable (with the fix) when it cannot be reached."""
        info = self.api.call("api_info")
        version, status = record_field(info, "version", "?"), enum_value(record_field(info, "status", "?"))
        return f"SkyPilot API server {version} ({status})"


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
