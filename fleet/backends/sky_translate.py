"""Pure translation between the fleet's data and SkyPilot's, for `fleet.backends.skypilot`.

Outwards: the task config of one job (`sky exec`) or one cluster (`sky launch`). Inwards: SkyPilot's
job and cluster statuses, `sky.queue` records and GPU availability rows, in the fleet's own words.
No SDK import and no I/O: everything here is tested with plain tables. SkyPilot's exceptions and
request ids are handled in `sky_sdk.py`, the one place that calls the SDK.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.errors import InputError
from fleet.types import ClusterState, JobInfo, JobState

JOB_STATES: dict[str, JobState] = {
    "INIT": JobState.PENDING,
    "PENDING": JobState.PENDING,
    "SETTING_UP": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,  # the run script exited non-zero: the experiment's own crash
    "FAILED_SETUP": JobState.CLUSTER_FAILED,  # the cluster's fault: requeue elsewhere
    "FAILED_DRIVER": JobState.CLUSTER_FAILED,
    "CANCELLED": JobState.CANCELLED,
}
# The launch's setup job (detached, in the cluster's own queue): what its statuses mean for `up`.
SETUP_JOB_NAME = "fleet-setup"
SETUP_DONE = "SUCCEEDED"
SETUP_FAILED = ("FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED")
CLUSTER_STATES: dict[str, ClusterState] = {
    "UP": ClusterState.UP,
    "INIT": ClusterState.PROVISIONING,
    "PENDING": ClusterState.PROVISIONING,
    "STOPPED": ClusterState.LOST,  # Kubernetes clusters cannot stop; a stopped one is of no use
    "AUTOSTOPPING": ClusterState.LOST,  # autodown in progress
}


# --- the task SkyPilot runs -----------------------------------------------------------------------
def _resources(task_yaml: dict, accelerator: str, infra: str | None) -> dict:
    resources = {k: v for k, v in dict(task_yaml.get("resources") or {}).items() if k not in ("any_of", "ordered")}
    resources["accelerators"] = {accelerator: 1}
    if infra:
        resources["infra"] = infra
    return resources


def _envs(task_yaml: dict, extra: dict[str, str]) -> dict[str, str]:
    base = {str(k): "" if v is None else str(v) for k, v in (task_yaml.get("envs") or {}).items()}
    return {**base, **{str(k): str(v) for k, v in extra.items()}}


def build_task_config(task_yaml: dict, *, name: str, envs: dict[str, str], workdir: str, accelerator: str,
                      infra: str | None = None, secrets: dict[str, str] | None = None) -> dict:
    """The `sky exec` task of one job: the task file's run, one accelerator, the fleet's envs.

    `setup` is left out (`sky exec` never runs it; `up` did, once per cluster). The accelerator is
    declared so that jobs on a one-GPU cluster run one at a time, in order. `secrets` (the
    variables fleet.yaml passes through) join the task file's own: SkyPilot redacts them when shown.
    """
    config: dict[str, Any] = {"name": name, "resources": _resources(task_yaml, accelerator, infra),
                              "workdir": workdir, "envs": _envs(task_yaml, envs), "run": task_yaml.get("run")}
    for key in ("file_mounts", "secrets", "volumes"):
        if task_yaml.get(key):
            config[key] = task_yaml[key]
    if secrets:
        config["secrets"] = {**dict(task_yaml.get("secrets") or {}), **secrets}
    return config


def build_launch_config(task_yaml: dict, *, name: str, workdir: str | None, accelerator: str,
                        infra: str | None = None, envs: dict[str, str] | None = None,
                        secrets: dict[str, str] | None = None) -> dict:
    """The `sky launch` task of one cluster: provision one accelerator and run `setup`; no job.

    `workdir` is the task's own (the project, so `setup` finds e.g. `train/requirements.txt`);
    later `sky exec`s sync the fleet's snapshots into the same `~/sky_workdir`, add-only.
    """
    config = build_task_config(task_yaml, name=name, envs=envs or {}, workdir=workdir or "",
                               accelerator=accelerator, infra=infra, secrets=secrets)
    config.pop("run")
    if not workdir:
        config.pop("workdir")
    if task_yaml.get("setup"):
        config["setup"] = task_yaml["setup"]
    return config


def task_accelerators(task_yaml: dict) -> list[str]:
    """The accelerators a task file asks for (`H100`, `H100:1`, or a list or mapping of them), by name."""
    accelerators = (task_yaml.get("resources") or {}).get("accelerators")
    if isinstance(accelerators, dict):
        return [str(a) for a in accelerators]
    if isinstance(accelerators, (list, tuple)):
        return [str(a).split(":")[0] for a in accelerators]
    return [str(accelerators).split(":")[0]] if accelerators else []


def context_of(infra: str | None) -> str | None:
    """`k8s/my-context` -> `my-context`; `k8s` or None -> None (SkyPilot's default context)."""
    if not infra:
        return None
    cloud, _, context = infra.partition("/")
    if cloud.lower() not in ("k8s", "kubernetes"):
        raise InputError(f"--infra is {infra!r}, but the fleet runs on Kubernetes: use `k8s` or `k8s/<context>`")
    return context or None


# --- what SkyPilot returns, in the fleet's words --------------------------------------------------
@dataclass(frozen=True)
class GpuAvailability:
    context: str
    accelerator: str
    capacity: int  # GPUs of this type in the context
    available: int  # free now (-1 when SkyPilot may not list pods to tell)


def record_field(record: Any, key: str, default: Any = None) -> Any:
    """Read a response record that may be a pydantic model, a dict, or both."""
    if isinstance(record, dict):
        return record.get(key, default)
    return getattr(record, key, default)


def enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def launched_accelerator(handle: Any) -> str | None:
    accelerators = getattr(getattr(handle, "launched_resources", None), "accelerators", None) or {}
    return next(iter(accelerators), None)


def gpu_row(row: Any) -> tuple[str, int, int]:
    """(accelerator, capacity, available) of one realtime GPU availability row.

    Over the API server a row arrives as a plain list `[gpu, counts, capacity, available]`
    (sky/server/requests/serializers/encoders.py, encode_realtime_gpu_availability; sky's own CLI
    unpacks it by position); in-process it is a namedtuple. A dict or record is read by name.
    """
    if isinstance(row, (list, tuple)):
        gpu, _counts, capacity, available = row[:4]
    else:
        gpu, capacity, available = (record_field(row, k) for k in ("gpu", "capacity", "available"))
    return str(gpu), int(capacity), int(available)


def job_info(record: Any) -> JobInfo:
    """One `sky.queue` record in the fleet's words."""
    status = enum_value(record_field(record, "status"))
    return JobInfo(job_id=int(record_field(record, "job_id")), name=str(record_field(record, "job_name") or ""),
                   state=JOB_STATES.get(status, JobState.PENDING),
                   started_at=record_field(record, "start_at") or None, ended_at=record_field(record, "end_at") or None)


__all__ = [
    "CLUSTER_STATES",
    "JOB_STATES",
    "SETUP_DONE",
    "SETUP_FAILED",
    "SETUP_JOB_NAME",
    "GpuAvailability",
    "build_launch_config",
    "build_task_config",
    "context_of",
    "enum_value",
    "gpu_row",
    "job_info",
    "launched_accelerator",
    "record_field",
    "task_accelerators",
]
