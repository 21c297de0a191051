"""Where the fleet keeps its state: `.fleet/` in the project directory."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import DiskProblem, disk_problem

MIN_FREE_BYTES = 16 << 20  # below this, `.fleet/` counts as full: jobs' logs would soon be cut short
PROBE_BYTES = 64 << 10


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

    def relative(self, path: Path) -> str:
        """How the ledger stores a path: relative to the project, so a moved project still finds it."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> Path:
        """A path the ledger stored (relative to the project, or absolute from older ledgers)."""
        return self.root / stored if stored and not Path(stored).is_absolute() else Path(stored)

    def disk_problem(self, probe: bool = True) -> DiskProblem | None:
        """Whether `.fleet/` can take writes now: free space above MIN_FREE_BYTES and (with `probe`)
        a probe write, with fsync, that succeeds. None when it can. Without the probe it is one
        statvfs call, cheap enough for every controller cycle."""
        try:
            stat = os.statvfs(self.state)
        except OSError as exc:
            return disk_problem(exc, self.state, "the fleet's state directory")
        free = stat.f_bavail * stat.f_frsize
        if free < MIN_FREE_BYTES:
            return DiskProblem(self.state, "the fleet's state directory",
                               f"only {free // 1024} kB free on its disk", errno.ENOSPC)
        if not probe:
            return None
        return self._probe_write()

    def _probe_write(self) -> DiskProblem | None:
        probe = self.state / f".space-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * PROBE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            return disk_problem(exc, probe, "a probe of free space") or DiskProblem(probe, "a probe of free space",
                                                                                    str(exc), exc.errno or 0)
        finally:
            probe.unlink(missing_ok=True)
        return None

    def ensure(self) -> "Workspace":
        for d in (self.state, self.logs, self.snapshots):
            d.mkdir(parents=True, exist_ok=True)
        return self
