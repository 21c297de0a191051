"""The cluster half of the SkyPilot backend: status, launch with retries and fallbacks, setup, teardown.

`SkyPilotBackend` (skypilot.py) inherits it and owns the other half, the jobs on those clusters. The
decisions between the SDK calls live in `sky_setup.py`; the SDK calls themselves go through `sky_sdk`.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from fleet.backends.base import (
    BackendError,
    BackendUnavailable,
    ClusterLost,
    ProvisionFailed,
)
from fleet.backends.sky_sdk import SkySdk, concurrently
from fleet.backends.sky_setup import (
    await_setups,
    launch_candidates,
    plan_up,
    setup_failure,
    up_error,
)
from fleet.backends.sky_state import SkyState
from fleet.backends.sky_translate import (
    CLUSTER_STATES,
    SETUP_DONE,
    SETUP_JOB_NAME,
    build_launch_config,
    enum_value,
    launched_accelerator,
    record_field,
    task_accelerators,
)
from fleet.config import FleetConfig
from fleet.errors import InputError
from fleet.task import read_task_yaml
from fleet.types import ClusterInfo, ClusterState
from fleet.workspace import Workspace


class SkyClusters:
    """Cluster lifecycle over the SDK, and the task file both halves read.

    The attributes below are set by `SkyPilotBackend.__init__`.
    """

    name: str
    config: FleetConfig
    infra: str | None
    api: SkySdk
    _files: SkyState
    idle_minutes_to_autodown: int
    launch_attempts: int
    backoff_s: float
    fallback_accelerator: bool
    setup_poll_s: float
    setup_timeout_s: float
    _sleep: Callable[[float], None]
    _clock: Callable[[], float]
    workspace: Workspace
    _task_cache: tuple[float, dict] | None

    @property
    def sdk(self) -> ModuleType:
        return self.api.module

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

    def passthrough(self) -> dict[str, str]:
        """The variables fleet.yaml's `env_passthrough` names, from this shell: sent as task secrets."""
        return {name: os.environ[name] for name in self.config.env_passthrough if name in os.environ}

    def _sky_task(self, config: dict) -> Any:
        return self.api.call("Task.from_yaml_config", config=config)

    def _status(self, names: Sequence[str]) -> dict[str, Any]:
        refresh = self.sdk.StatusRefreshMode.AUTO
        records = self.api.get(self.api.call("status", cluster_names=list(names), refresh=refresh))
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
            requests = {name: self.api.call(
                "launch", name, task=self._sky_task(build_launch_config(
                    task_yaml, name=SETUP_JOB_NAME, workdir=self._project_workdir(task_yaml), accelerator=acc,
                    infra=self.infra, envs={"FLEET_BACKEND": self.name}, secrets=self.passthrough())),
                cluster_name=name, idle_minutes_to_autostop=self.idle_minutes_to_autodown, down=True,
                retry_until_up=False) for name, acc in chosen.items()}
            retry: dict[str, list[str]] = {}
            for name, request_id in requests.items():
                try:
                    job_id, handle = self.api.get(request_id, name)
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
                                lambda items: concurrently(lambda item: self._job_status(*item), items),
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
        statuses = self.api.get(self.api.call("job_status", cluster, cluster_name=cluster, job_ids=[job_id]), cluster)
        status = statuses.get(job_id, statuses.get(str(job_id)))
        return "FAILED_SETUP" if status is None else enum_value(status)  # None: the job is gone

    def down(self, clusters: Sequence[str]) -> None:
        requests = {name: self.api.call("down", name, cluster_name=name) for name in clusters}
        failed: dict[str, str] = {}
        for name, request_id in requests.items():
            try:
                self.api.get(request_id, name)
            except ClusterLost:
                pass  # already gone
            except BackendUnavailable:
                raise
            except BackendError as exc:
                failed[name] = str(exc)
        self._files.forget([n for n in clusters if n not in failed])
        if failed:
            raise BackendError("; ".join(failed.values()) + ". Run `fleet down` again, or `sky down <name>`.")

    def keep_alive(self, clusters: Sequence[str]) -> None:
        """Set each cluster's autodown again, which restarts its idle timer (sky/skylet/autostop_lib.py,
        `set_autostop` sets the last active time to now): the controller does this while the ledger
        has work, so an idle cluster is not torn down under a fleet with work queued. Best effort, on
        a thread: the cycle does not wait."""
        def request() -> None:
            for name in clusters:
                with contextlib.suppress(BackendError):
                    self.api.call("autostop", name, cluster_name=name, idle_minutes=self.idle_minutes_to_autodown,
                                  down=True)

        if clusters:
            threading.Thread(target=request, name="fleet-keep-alive", daemon=True).start()

    def _down_in_background(self, clusters: Sequence[str]) -> None:
        """Tear down lost clusters that still exist: their queued jobs would otherwise run as duplicates
        of the requeued work, and they would go on billing. Best effort; the cycle does not wait."""
        def request_downs() -> None:
            for name in clusters:
                with contextlib.suppress(BackendError):
                    self.api.call("down", name, cluster_name=name)  # the server acts without our get()

        if clusters:
            threading.Thread(target=request_downs, name="fleet-down-lost", daemon=True).start()
