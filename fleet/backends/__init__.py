"""Backends: where experiments run. `local` (default) runs them on this machine; `sky` on SkyPilot clusters."""
from __future__ import annotations

from fleet.backends.base import Backend, BackendError, BackendUnavailable, ClusterLost, ProvisionFailed
from fleet.config import FleetConfig
from fleet.errors import InputError
from fleet.workspace import Workspace

BACKENDS = ("local", "sky")

__all__ = ["Backend", "BackendError", "BackendUnavailable", "ClusterLost", "ProvisionFailed", "make_backend", "BACKENDS"]


def make_backend(name: str, workspace: Workspace, config: FleetConfig) -> Backend:
    if name == "local":
        from fleet.backends.local import LocalBackend

        return LocalBackend(workspace, config)
    if name in ("sky", "skypilot"):
        from fleet.backends.skypilot import SkyPilotBackend  # imports `sky` lazily, on first SDK call

        return SkyPilotBackend(workspace, config)
    raise InputError(f"--backend is {name!r}, but must be one of {', '.join(BACKENDS)} (e.g. --backend local)")
