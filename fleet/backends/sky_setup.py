"""Bringing SkyPilot clusters up, the decisions: re-adopt, relaunch or launch; wait for setup; report.

`SkyPilotBackend.up` makes the SDK calls (`sky launch`, `sky status`, `job_status`, `sky down`);
what it decides between them lives here, over the fleet's own records (`ClusterInfo`, setup
statuses as plain strings), with the clock, the sleep and the poll passed in. Nothing here
imports SkyPilot.

Why `up` waits for a job: `sky launch` of a task with a setup and no run returns once the cluster is
UP, with the setup still running as the cluster's detached job 1 (sky/execution.py `detach_setup`;
backends/cloud_vm_ray_backend.py `_execute`). The cluster is ready only when that job SUCCEEDED.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fleet.backends.base import (
    BackendError,
    BackendUnavailable,
    ClusterLost,
    ProvisionFailed,
    SetupFailed,
)
from fleet.backends.sky_translate import SETUP_DONE, SETUP_FAILED
from fleet.types import ClusterInfo, ClusterState


@dataclass
class UpPlan:
    """What `up` does with each requested cluster, given what SkyPilot and `sky_setup.json` say."""

    ready: dict[str, ClusterInfo] = field(default_factory=dict)  # UP with its setup done: re-adopted as is
    setting_up: dict[str, tuple[int, str]] = field(default_factory=dict)  # cluster -> (setup job, accelerator)
    broken: list[str] = field(default_factory=list)  # UP, but its setup failed: torn down, then launched
    to_launch: dict[str, str] = field(default_factory=dict)  # cluster -> the accelerator asked for


def plan_up(names: Sequence[str], accelerators: Sequence[str], existing: Mapping[str, ClusterInfo | None],
            setups: Mapping[str, dict]) -> UpPlan:
    plan = UpPlan()
    for name, accelerator in zip(names, accelerators):
        info = existing.get(name)
        if info is not None and info.state == ClusterState.UP:
            setup = setups.get(name, {})
            status = setup.get("status", SETUP_DONE)
            if status == SETUP_DONE:
                plan.ready[name] = info  # re-adopted as it is, with the accelerator it really has
                continue
            if status not in SETUP_FAILED and setup.get("job_ids"):
                plan.setting_up[name] = (setup["job_ids"][-1], info.accelerator)  # an interrupted `fleet up`
                continue
            # Its setup failed. A relaunch of an UP cluster skips setup (sky/execution.py:
            # "Setup will be skipped if provisioning was skipped"), so it is relaunched afresh.
            plan.broken.append(name)
        plan.to_launch[name] = accelerator
    return plan


def launch_candidates(accelerator: str, others: Iterable[str], fallback: bool) -> list[str]:
    """The accelerators to try in turn: the one asked for, then (with fallback) the fleet's other GPUs."""
    if not fallback:
        return [accelerator]
    return list(dict.fromkeys([accelerator, *(a for a in others if a and a != "cpu")]))


def await_setups(jobs: dict[str, int],
                 poll: Callable[[list[tuple[str, int]]], list[str | BackendError]], *,
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 timeout_s: float, poll_s: float) -> dict[str, str | BackendError]:
    """Poll each cluster's setup job until it ends: SUCCEEDED, a failed status, TIMEOUT, or ClusterLost.

    `poll` returns, in order, each (cluster, job) pair's status or the BackendError it raised.
    """
    outcomes: dict[str, str | BackendError] = {}
    deadline = clock() + timeout_s
    polls = 0
    while jobs:
        items = list(jobs.items())
        for (name, _), status in zip(items, poll(items)):
            if isinstance(status, BackendUnavailable):
                raise status
            if isinstance(status, ClusterLost) or status == SETUP_DONE or status in SETUP_FAILED:
                outcomes[name] = status
                del jobs[name]
            # anything else (still SETTING_UP, or a passing error): ask again
        if jobs and clock() >= deadline:
            outcomes.update({name: "TIMEOUT" for name in jobs})
            break
        if jobs:  # a quick setup is seen at once, a long one (installing a framework) not polled too often
            sleep(min(poll_s, 0.25 * 2 ** polls))
            polls += 1
    return outcomes


def setup_failure(name: str, job_id: int, outcome: str, timeout_s: float) -> str:
    why = f"setup still running after {timeout_s:g}s" if outcome == "TIMEOUT" else f"setup ended {outcome}"
    return f"{why} (its log: `sky logs {name} {job_id}`)"


def up_error(names: Sequence[str], ready: list[ClusterInfo], failures: dict[str, str],
             setup_failures: dict[str, str], attempts: int, task_file: str) -> BackendError | None:
    """The error `up` raises when some clusters are not ready (None when all are), with the fix.

    It carries `clusters` (those that are ready) and `failed` (name -> why), for the caller to go on.
    """
    if setup_failures:
        also = f" ({len(failures)} more could not be provisioned: {'; '.join(failures.values())})" if failures else ""
        error: BackendError = SetupFailed(
            f"the task's setup failed on {len(setup_failures)} of {len(names)} clusters: "
            + "; ".join(f"{n}: {why}" for n, why in setup_failures.items()) + also
            + f". Fix `setup:` in {task_file}, then run `fleet up` again "
            "(clusters whose setup failed are relaunched; running ones are re-adopted).")
    elif failures:
        error = ProvisionFailed(
            f"{len(failures)} of {len(names)} clusters could not be provisioned after {attempts} attempt(s): "
            + "; ".join(f"{n}: {why}" for n, why in failures.items())
            + ". Check free GPUs with `fleet gpus`, then run `fleet up` again (running clusters are re-adopted).")
    else:
        return None
    error.clusters = ready  # type: ignore[attr-defined]
    error.failed = {**failures, **setup_failures}  # type: ignore[attr-defined]
    return error


__all__ = ["UpPlan", "await_setups", "launch_candidates", "plan_up", "setup_failure", "up_error"]
