"""The interface every backend implements, in the fleet's own types.

A backend owns a set of clusters. Each cluster has one FIFO job queue with SkyPilot `sky exec`
semantics: jobs start in submission order, one at a time (each job claims the cluster's one
accelerator), and the queue keeps running when the process that submitted them exits.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TypeVar

from fleet.errors import DiskProblem
from fleet.types import ClusterInfo, JobInfo, JobSpec

T = TypeVar("T")


class BackendError(Exception):
    """An expected backend failure, with a message a person can act on."""


class BackendUnavailable(BackendError):
    """The backend's control plane cannot be reached (e.g. the SkyPilot API server is down)."""


class ClusterLost(BackendError):
    """The cluster is gone or not UP; its queued and running jobs will never finish there."""

    def __init__(self, cluster: str, reason: str = "") -> None:
        super().__init__(f"cluster {cluster!r} is lost" + (f": {reason}" if reason else ""))
        self.cluster = cluster
        self.reason = reason


class NotSubmitted(BackendError):
    """The job certainly never reached the cluster (it is not taking jobs right now, e.g. a pod
    restarting): the try does not count against the experiment, and whether the cluster is lost is
    for the next `queues()` to decide, not a single refused submission."""


class LogIncomplete(BackendError):
    """The job ended but its log was cut short (the disk holding it filled up, say): the result in
    it cannot be trusted either way, so the controller runs the experiment again, at no cost."""


class NoSpaceForJob(NotSubmitted):
    """The backend could not write the job's own files (its spec, its staged code): the disk is
    full or not writable. The job never reached the queue; `problem` says which path and the fix."""

    def __init__(self, problem: DiskProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class SetupFailed(BackendError):
    """The task's setup failed: nothing can run until the user fixes it (not retried)."""


class ProvisionFailed(BackendError):
    """No capacity for the requested accelerator right now; worth retrying later or elsewhere."""


class Backend(abc.ABC):
    """What the controller needs from a fleet of clusters."""

    name: str = "abstract"
    # How long a job submitted by a controller that then died may take to appear in its queue:
    # a remote API server may still be finishing the request; a local queue write is instant.
    submission_grace_s: float = 30.0

    @abc.abstractmethod
    def up(self, names: Sequence[str], accelerators: Sequence[str]) -> list[ClusterInfo]:
        """Bring up (or re-adopt) clusters `names[i]` with accelerator `accelerators[i]`.

        Runs the task's setup once per cluster. Clusters that already exist are returned as they
        are. A cluster that cannot be provisioned raises ProvisionFailed after the others are up.
        """

    @abc.abstractmethod
    def clusters(self) -> list[ClusterInfo]:
        """The clusters this backend knows of, with their real state."""

    @abc.abstractmethod
    def submit(self, cluster: str, job: JobSpec) -> int:
        """Append a job to the cluster's FIFO queue and return its job id (unique per cluster).

        Raises ClusterLost if the cluster is gone.
        """

    @abc.abstractmethod
    def queues(self, clusters: Sequence[str]) -> dict[str, list[JobInfo] | ClusterLost]:
        """Each cluster's queue, oldest first; a ClusterLost value for lost clusters.

        Every queued and running job is listed, and every finished job for a while after it ended
        (long enough for a polling controller to see it); `archived_jobs` finds older ones.

        Backends with a remote control plane ask all clusters concurrently.
        """

    def archived_jobs(self, cluster: str, names: Sequence[str]) -> list[JobInfo]:
        """Finished jobs with these names that `queues()` no longer lists.

        A backend that compacts its queues (the local one keeps only live and recently finished
        jobs in view) answers here for a caller that missed a job's end, e.g. a controller that was
        stopped while the queue ran on. It may read the cluster's whole history: callers use it
        rarely. The default: `queues()` lists every job, so there is nothing more to find.
        """
        return []

    @abc.abstractmethod
    def logs(self, cluster: str, job_id: int) -> str:
        """The job's combined stdout/stderr so far ("" if none)."""

    @abc.abstractmethod
    def cancel(self, cluster: str, job_ids: Sequence[int]) -> None:
        """Cancel queued or running jobs; unknown or finished ids are ignored."""

    @abc.abstractmethod
    def down(self, clusters: Sequence[str]) -> None:
        """Tear clusters down, killing whatever runs on them."""

    def keep_alive(self, clusters: Sequence[str]) -> None:
        """Reset the idle timer of clusters that tear themselves down when idle (SkyPilot's autodown):
        the controller calls it while the ledger has work. Must not block; the default does nothing."""

    # Batched forms: the controller calls these once per cycle. A backend with a remote control
    # plane overrides them to send every request first and then collect, so a cycle over 64
    # clusters costs about one round-trip; these defaults simply loop.
    def submit_many(self, items: Sequence[tuple[str, JobSpec]]) -> list[int | BackendError]:
        return _each(self.submit, items)

    def logs_many(self, items: Sequence[tuple[str, int]]) -> list[str | BackendError]:
        return _each(self.logs, items)

    def log_tails(self, items: Sequence[tuple[str, int]], lines: int) -> list[str | BackendError]:
        """The last `lines` lines of each job's output so far: early stopping reads running jobs' training
        loss every cycle, so a backend that can fetch less than the whole log should."""
        return [text if isinstance(text, BackendError) else "\n".join(text.splitlines()[-lines:])
                for text in self.logs_many(items)]


def _each(call: Callable[..., T], items: Sequence[tuple]) -> list[T | BackendError]:
    """Call once per item; a per-item failure is that item's outcome, an unreachable backend stops all."""
    out: list[T | BackendError] = []
    for item in items:
        try:
            out.append(call(*item))
        except BackendUnavailable:
            raise
        except BackendError as exc:
            out.append(exc)
    return out
