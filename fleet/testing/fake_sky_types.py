"""The data types of the fake SkyPilot SDK (`fleet.testing.fake_sky`): enums, exceptions, Task and
Resources, and the records its functions return, with the names and values of the real ones.

Only what the SkyPilot backend and the fake read is modelled; everything here is re-exported by
`fake_sky`, whose functions are the SDK's surface.
"""
from __future__ import annotations

import enum
from collections import namedtuple
from pathlib import Path
from typing import Any

FAKE_CONTEXT = "fake-k8s"


# --- the SDK's enums and exceptions (same names and values) ---------------------------------------
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


class Record(dict):
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
                 envs: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
                 workdir: str | None = None, resources: Resources | list[Resources] | None = None,
                 **_: Any) -> None:
        self.name = name
        self.setup = setup
        self.run = run
        self.envs = dict(envs or {})
        # sky.Task keeps these as SecretStr (redacted when shown); a job sees them as variables
        self.secrets = {str(k): "" if v is None else str(v) for k, v in (secrets or {}).items()}
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
        secrets = dict(config.get("secrets") or {})
        secrets.update(dict(secrets_overrides or []))
        return cls(config.get("name"), setup=config.get("setup"), run=config.get("run"), envs=envs,
                   secrets=secrets, workdir=config.get("workdir"), resources=resources)

    @classmethod
    def from_yaml(cls, yaml_path: str) -> "Task":
        import yaml

        return cls.from_yaml_config(yaml.safe_load(Path(yaml_path).read_text()))

    def accelerator_choices(self) -> list[str]:
        return [name for r in self.resources for name in (r.accelerators or {})]


class Handle:
    """Stands in for CloudVmRayResourceHandle: the backend reads `launched_resources.accelerators`."""

    def __init__(self, cluster_name: str, accelerator: str) -> None:
        self.cluster_name = cluster_name
        self.launched_resources = Resources(accelerators={accelerator: 1}, infra=f"kubernetes/{FAKE_CONTEXT}")

    def __repr__(self) -> str:
        return f"Handle({self.cluster_name!r}, {self.launched_resources!r})"
