"""The fleet's own vocabulary: plain records and states shared by every module.

Backends translate their native states (SkyPilot job statuses, local process exits) into these,
so nothing outside a backend ever sees a backend-specific status or exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ExperimentState(str, Enum):
    """Where an experiment is in its life, as the ledger records it."""

    PLANNED = "planned"  # a search wave's trial whose configuration the search has not chosen yet
    PENDING = "pending"  # waiting for the controller to place it on a cluster
    HELD = "held"  # would exceed a budget cap; released by the user
    QUEUED = "queued"  # in a cluster's job queue, not started
    RUNNING = "running"
    DONE = "done"  # finished with a parsed, finite result
    CRASH = "crash"  # the experiment itself failed (non-zero exit, missing metric, NaN)
    TIMEOUT = "timeout"  # killed for running past its timeout
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # stopped early: its training loss was clearly behind at a checkpoint (not a crash)

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES

    @property
    def active(self) -> bool:
        return self in (ExperimentState.QUEUED, ExperimentState.RUNNING)


FINISHED_STATES = frozenset(
    {ExperimentState.DONE, ExperimentState.CRASH, ExperimentState.TIMEOUT, ExperimentState.CANCELLED,
     ExperimentState.PRUNED}
)


class JobState(str, Enum):
    """A job's state in a cluster's queue, in the fleet's words."""

    PENDING = "pending"  # queued on the cluster, not started
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the run script exited 0
    FAILED = "failed"  # the run script exited non-zero: the experiment's own failure
    TIMEOUT = "timeout"  # killed by the backend for exceeding its timeout
    CANCELLED = "cancelled"
    CLUSTER_FAILED = "cluster_failed"  # setup/driver failure: not the experiment's fault, requeue it

    @property
    def terminal(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


class ClusterState(str, Enum):
    UP = "up"
    PROVISIONING = "provisioning"
    LOST = "lost"  # gone, preempted, evicted or not UP: its jobs must be requeued
    DOWN = "down"  # torn down on purpose


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster (a single-GPU SkyPilot cluster, or a local slot)."""

    name: str
    accelerator: str  # e.g. "H100", "H200", "cpu"; "unknown" when the backend cannot tell
    state: ClusterState = ClusterState.UP


@dataclass(frozen=True)
class JobSpec:
    """Everything a backend needs to queue one attempt of one experiment."""

    experiment_id: str
    attempt: int
    snapshot: str  # content-addressed id of the workload snapshot the job must run
    envs: dict[str, str] = field(default_factory=dict)  # knob overrides and fleet variables
    timeout_s: float = 3600.0
    accelerator: str | None = None  # declared so GPU jobs are serialized on the cluster

    @property
    def job_name(self) -> str:
        return job_name(self.experiment_id, self.attempt)


def job_name(experiment_id: str, attempt: int) -> str:
    """`<experiment>.a<attempt>`: the name carries the experiment id and attempt so a restarted
    controller can re-adopt jobs it submitted before it died instead of submitting them twice;
    the attempt's log in `.fleet/logs/` is named after it too."""
    return f"{experiment_id}.a{attempt}"


def parse_job_name(name: str | None) -> tuple[str, int] | None:
    """Inverse of JobSpec.job_name; None for jobs the fleet did not submit."""
    if not name or ".a" not in name:
        return None
    experiment_id, _, attempt = name.rpartition(".a")
    if not experiment_id or not attempt.isdigit():
        return None
    return experiment_id, int(attempt)


@dataclass(frozen=True)
class JobInfo:
    """A job as a cluster's queue reports it."""

    job_id: int
    name: str
    state: JobState
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
