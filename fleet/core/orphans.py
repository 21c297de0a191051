"""Orphan jobs: jobs on a cluster that carry our name but are no longer an experiment's current attempt.

How they come about: a `sky exec` still in flight when its attempt was given up for lost lands
later; a job id arrives for an attempt that `fleet down` (or a cancel) closed meanwhile; a cluster
thought lost comes back with its queue. Each would run unsupervised, a second copy of work that
runs elsewhere. The controller finds them by name in every queue read and cancels them.

A pure decision over the queue reads and the ledger's active attempts; the caller confirms the
experiment ids are this ledger's (a job merely named like ours is left alone) and cancels.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from fleet.core.ledger_rows import AttemptRow
from fleet.types import JobInfo, parse_job_name


def find_orphans(queues: Mapping[str, Sequence[JobInfo]],
                 active: Iterable[AttemptRow]) -> dict[str, list[tuple[str, JobInfo]]]:
    """cluster -> [(experiment id, job)] for every unfinished job named `<experiment>.a<n>` that is
    not the active attempt n of that experiment on that cluster (or not that attempt's job id)."""
    current = {(a.cluster, a.experiment_id, a.n): a for a in active}
    out: dict[str, list[tuple[str, JobInfo]]] = {}
    for cluster, jobs in queues.items():
        for job in jobs:
            parsed = parse_job_name(job.name)
            if job.state.terminal or parsed is None:
                continue
            attempt = current.get((cluster, *parsed))
            if attempt is not None and attempt.job_id in (None, job.job_id):
                continue
            out.setdefault(cluster, []).append((parsed[0], job))
    return out
