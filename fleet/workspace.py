"""Where the fleet keeps its state: `.fleet/` in the project directory."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path  # the project directory (holds experiment.yaml, train/, fleet.yaml)

    @classmethod
    def find(cls, start: Path | None = None) -> "Workspace":
        root = os.environ.get("FLEET_ROOT")
        return cls(Path(root).resolve() if root else (start or Path.cwd()).resolve())

    @property
    def state(self) -> Path:
        return self.root / ".fleet"

    @property
    def ledger_path(self) -> Path:
        return self.state / "ledger.db"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def workdir(self) -> Path:
        """The directory synced to clusters (SkyPilot's ~/sky_workdir); holds every snapshot."""
        return self.state / "workdir"

    @property
    def snapshots(self) -> Path:
        return self.workdir / "snapshots"

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.snapshots / snapshot_id

    @property
    def local(self) -> Path:
        """The local backend's slot queues."""
        return self.state / "local"

    def ensure(self) -> "Workspace":
        for d in (self.state, self.logs, self.snapshots):
            d.mkdir(parents=True, exist_ok=True)
        return self
