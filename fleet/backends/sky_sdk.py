"""The one place that calls SkyPilot's SDK, for the SkyPilot backend.

`SkySdk.call` allows only the functions and keywords listed in `SDK_CALLS` (a contract test checks
that list against the installed `skypilot` package) and translates every `sky.exceptions` type into
the fleet's own errors, so SkyPilot's exceptions never reach the rest of the fleet. The SDK module is
chosen once: the `sdk` argument, else the module named by `FLEET_SKY_SDK` (the test seam:
`fleet.testing.fake_sky`), else `import sky`, lazily, because importing it costs seconds.
"""
from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from fleet.backends.base import (
    BackendError,
    BackendUnavailable,
    ClusterLost,
    ProvisionFailed,
)
from fleet.backends.sky_translate import enum_value

# The SDK surface the backend uses: function -> keywords passed. Calls are made by keyword only.
SDK_CALLS: dict[str, tuple[str, ...]] = {
    "launch": ("task", "cluster_name", "idle_minutes_to_autostop", "down", "retry_until_up"),
    "exec": ("task", "cluster_name"),
    "queue": ("cluster_name", "skip_finished", "all_users"),
    "job_status": ("cluster_name", "job_ids"),
    "tail_logs": ("cluster_name", "job_id", "follow", "tail", "output_stream"),
    "download_logs": ("cluster_name", "job_ids"),
    "cancel": ("cluster_name", "job_ids"),
    "down": ("cluster_name",),
    "autostop": ("cluster_name", "idle_minutes", "down"),
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


class NotUp(ClusterLost):
    """ClusterNotUpError: on Kubernetes also a passing INIT refresh, so `queues` confirms it first
    and a refused `exec` is only NotSubmitted."""


class SkySdk:
    """The SDK module behind `call`/`get`, loaded on first use."""

    def __init__(self, sdk: ModuleType | None = None) -> None:
        self._module = sdk

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            self._module = load_sdk()
        return self._module

    def call(self, fn: str, cluster: str | None = None, **kwargs: Any) -> Any:
        unknown = set(kwargs) - set(SDK_CALLS[fn])
        if unknown:  # keeps SDK_CALLS (and so the contract test) complete
            raise TypeError(f"{fn}() keywords {sorted(unknown)} are missing from SDK_CALLS")
        target: Any = self.module
        for part in fn.split("."):
            target = getattr(target, part)
        try:
            return target(**kwargs)
        except Exception as exc:  # noqa: BLE001 - translated; SkyPilot's types never leave the backend
            raise self.translate(exc, cluster) from exc

    def get(self, request_id: str, cluster: str | None = None) -> Any:
        return self.call("get", cluster, request_id=request_id)

    def _is(self, exc: BaseException, *names: str) -> bool:
        classes = tuple(c for c in (getattr(self.module.exceptions, n, None) for n in names) if isinstance(c, type))
        return bool(classes) and isinstance(exc, classes)

    def translate(self, exc: Exception, cluster: str | None) -> BackendError:
        if isinstance(exc, BackendError):
            return exc
        where = f" on cluster {cluster!r}" if cluster else ""
        if self._is(exc, "ApiServerConnectionError") or is_connection_error(exc):
            return BackendUnavailable(f"The SkyPilot API server cannot be reached ({first_line(exc)}). {UNREACHABLE_FIX}")
        if self._is(exc, "ApiServerAuthenticationError"):
            return BackendUnavailable(f"The SkyPilot API server needs a login ({first_line(exc)}): run `sky api login`.")
        if cluster and self._is(exc, "ClusterDoesNotExist"):
            return ClusterLost(cluster, "it no longer exists (deleted, evicted or autodowned)")
        if cluster and self._is(exc, "ClusterNotUpError"):
            state = enum_value(getattr(exc, "cluster_status", None) or "unknown")
            return NotUp(cluster, f"it is not UP (status {state}; preempted or evicted)")
        if self._is(exc, "ResourcesUnavailableError"):
            return ProvisionFailed(f"no capacity{where}: {first_line(exc)}")
        return BackendError(f"SkyPilot {type(exc).__name__}{where}: {first_line(exc)}")


def concurrently(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
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


def raise_unavailable(outcomes: Iterable[Any]) -> None:
    """Raise the first BackendUnavailable among a batch's outcomes: the control plane is down, so
    the batch failed as a whole, not item by item."""
    unavailable = next((o for o in outcomes if isinstance(o, BackendUnavailable)), None)
    if unavailable is not None:
        raise unavailable


def strip_colour(text: str) -> str:
    return _ANSI.sub("", text)


def first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_connection_error(exc: BaseException) -> bool:
    """Connection refused / DNS / timeouts from `requests` before SkyPilot wraps them."""
    if isinstance(exc, ConnectionError):
        return True
    return any(c.__name__ in ("ConnectionError", "ConnectTimeout") and c.__module__.startswith(("requests", "urllib3"))
               for c in type(exc).__mro__)
