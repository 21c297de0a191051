"""The SkyPilot backend's own bookkeeping in `.fleet/`: plain JSON files and staged exec workdirs.

Pure file I/O over plain records; nothing here imports SkyPilot or calls its SDK (that stays in
`skypilot.py`). The files:

- `sky_clusters.json`: name -> accelerator. The fleet never touches clusters it did not create.
- `sky_setup.json`: cluster -> {"job_ids": [...], "status": ...}, the cluster's setup jobs (not
  experiments: `queues` leaves them out) and the last one's status.
- `sky_timeouts.json`: "cluster/job_id" -> {"name", "timeout_s", "expired"?}. SkyPilot has no job
  timeouts, so the backend cancels overdue jobs when it polls; an entry goes once its job ended
  in time (`settled_timeouts`), so the file follows the live jobs.
- `sky_stage/<snapshot>/snapshots/<snapshot>/`: what one `sky exec` syncs (see `stage_snapshot`).

Writes go through a temporary file and `os.replace`, so a reader never sees half a file; the
temporary names carry the process and thread, because `submit_many` stages from many threads.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fleet.backends.base import BackendError, ClusterLost
from fleet.types import JobInfo, JobState

KNOWN, SETUPS, TIMEOUTS = "sky_clusters.json", "sky_setup.json", "sky_timeouts.json"  # in .fleet/
STAGE_DIR = "sky_stage"


class SkyState:
    """The backend's files under one `.fleet/` directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    def read(self, name: str) -> dict:
        try:
            return json.loads((self.dir / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write(self, name: str, data: dict) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    # --- known clusters ----------------------------------------------------------------------
    def known(self) -> dict[str, str]:
        return self.read(KNOWN)

    def remember(self, add: dict[str, str] | None = None, forget: Iterable[str] = ()) -> None:
        known = {**self.known(), **(add or {})}
        for name in forget:
            known.pop(name, None)
        self.write(KNOWN, known)

    def forget(self, gone: Sequence[str]) -> None:
        """Drop torn-down clusters from every file: known clusters, their job timeouts and setup jobs."""
        self.remember(forget=gone)
        for state_file, key_of in ((TIMEOUTS, lambda k: k.rpartition("/")[0]), (SETUPS, lambda k: k)):
            data = self.read(state_file)
            if any(key_of(k) in gone for k in data):
                self.write(state_file, {k: v for k, v in data.items() if key_of(k) not in gone})

    # --- setup jobs --------------------------------------------------------------------------
    def setups(self) -> dict[str, dict]:
        return self.read(SETUPS)

    def record_setup(self, cluster: str, job_id: int | None, status: str) -> None:
        """The cluster's setup jobs (not experiments: `queues` leaves them out) and the last one's status."""
        setups = self.setups()
        entry = setups.setdefault(cluster, {"job_ids": []})
        if job_id is not None and job_id not in entry["job_ids"]:
            entry["job_ids"].append(job_id)
        entry["status"] = status
        self.write(SETUPS, setups)

    # --- job timeouts ------------------------------------------------------------------------
    def timeouts(self) -> dict[str, dict]:
        return self.read(TIMEOUTS)

    def save_timeouts(self, timeouts: dict[str, dict]) -> None:
        self.write(TIMEOUTS, timeouts)

    def add_timeouts(self, submitted: Mapping[str, dict]) -> None:
        if submitted:
            self.write(TIMEOUTS, {**self.timeouts(), **submitted})

    # --- per-snapshot staging of exec workdirs -----------------------------------------------
    def stage_snapshot(self, snapshot: str, source: Path) -> str:
        """A staging directory holding only `snapshots/<snapshot>/` (hard links): what one `sky exec` syncs.

        The cluster's sync is add-only, so syncing the whole project workdir would re-send (and
        upload to a remote API server) every snapshot ever taken, at every exec.
        """
        stage = self.dir / STAGE_DIR / snapshot
        if (stage / "snapshots" / snapshot).is_dir():
            return str(stage)
        if not source.is_dir():
            raise BackendError(f"code snapshot {snapshot} is missing ({source} does not exist); submit the wave again")
        tmp = stage.with_name(f".{snapshot}.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp / "snapshots" / snapshot, copy_function=_link_or_copy)
        try:
            os.rename(tmp, stage)
        except OSError:  # staged meanwhile by another thread or process
            shutil.rmtree(tmp, ignore_errors=True)
        return str(stage)


def mark_timeouts(out: dict[str, list[JobInfo] | ClusterLost], timeouts: dict[str, dict],
                  now: float) -> dict[str, list[int]]:
    """Which running jobs are past their timeout, per cluster; those (now and later) read as TIMEOUT.

    Updates `out` (an expired job still RUNNING or CANCELLED becomes TIMEOUT) and `timeouts` (newly
    overdue entries get `expired`) in place; the caller saves `timeouts` and cancels what is returned.
    An entry applies only to a job that still has the name it was submitted under.
    """
    overdue: dict[str, list[int]] = {}
    for cluster, jobs in out.items():
        if isinstance(jobs, ClusterLost):
            continue
        for i, job in enumerate(jobs):
            entry = timeouts.get(f"{cluster}/{job.job_id}")
            if entry is None or entry.get("name") != job.name:
                continue
            if job.state == JobState.RUNNING and job.started_at and now - job.started_at > entry["timeout_s"]:
                entry["expired"] = True
                overdue.setdefault(cluster, []).append(job.job_id)
            if entry.get("expired") and job.state in (JobState.RUNNING, JobState.CANCELLED):
                jobs[i] = JobInfo(job.job_id, job.name, JobState.TIMEOUT, job.started_at, job.ended_at)
    return overdue


def settled_timeouts(out: Mapping[str, list[JobInfo] | ClusterLost], timeouts: Mapping[str, dict]) -> list[str]:
    """Entries no longer needed: their job ended without expiring. An expired entry stays, so a job
    the backend cancelled for its timeout keeps reading as TIMEOUT; the rest go, so the file holds
    what is live, not every job the fleet ever ran."""
    settled = []
    for cluster, jobs in out.items():
        if isinstance(jobs, ClusterLost):
            continue
        for job in jobs:
            key = f"{cluster}/{job.job_id}"
            entry = timeouts.get(key)
            if entry is not None and job.state.terminal and not entry.get("expired") and entry.get("name") == job.name:
                settled.append(key)
    return settled


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)


__all__ = ["KNOWN", "SETUPS", "STAGE_DIR", "TIMEOUTS", "SkyState", "mark_timeouts", "settled_timeouts"]
