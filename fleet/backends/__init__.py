"""Backends: where experiments run. `local` (default) runs them on this machine; `sky` on SkyPilot clusters.

Layer rule: may import only the base modules (`fleet.config`, `fleet.types`, `fleet.errors`,
`fleet.workspace`, `fleet.task`), never `fleet.core` or anything above it.

Kept import-free: the local slot runner starts as `python -m fleet.backends.slot_runner` for every
slot, and `fleet status` must never import SkyPilot.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.backends.base import Backend
    from fleet.config import FleetConfig
    from fleet.workspace import Workspace

BACKENDS = ("local", "sky")


def make_backend(name: str, workspace: Workspace, config: FleetConfig) -> Backend:
    if name == "local":
        from fleet.backends.local import LocalBackend

        return LocalBackend(workspace, config)
    if name in ("sky", "skypilot"):
        from fleet.backends.skypilot import (
            SkyPilotBackend,  # imports `sky` lazily, on first SDK call
        )

        return SkyPilotBackend(workspace, config)
    from fleet.errors import InputError

    raise InputError(f"--backend is {name!r}, but must be one of {', '.join(BACKENDS)} (e.g. --backend local)")
