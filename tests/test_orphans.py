"""Which jobs in a queue read are orphans: named like ours, but not an experiment's current attempt."""
from __future__ import annotations

import pytest

from fleet.core.ledger_rows import AttemptRow
from fleet.core.orphans import find_orphans
from fleet.types import JobInfo, JobState


def attempt(exp: str, n: int, cluster: str = "c1", job_id: int | None = 1) -> AttemptRow:
    return AttemptRow(1, exp, n, cluster, "H100", job_id, "pending", 0.0, None, None, None, "")


def job(job_id: int, name: str, state: JobState = JobState.PENDING) -> JobInfo:
    return JobInfo(job_id, name, state)


@pytest.mark.parametrize(
    "queue, active, expected",
    [
        # the current attempt's own job (by id, or by name while its id is unknown): not an orphan
        ([job(1, "e-1.a1")], [attempt("e-1", 1)], []),
        ([job(4, "e-1.a1", JobState.RUNNING)], [attempt("e-1", 1, job_id=None)], []),
        # a late exec of attempt 1 lands after attempt 2 took over
        ([job(1, "e-1.a2"), job(2, "e-1.a1")], [attempt("e-1", 2)], [("e-1", 2)]),
        # the same attempt landed twice: the copy with another id is the orphan
        ([job(1, "e-1.a1"), job(2, "e-1.a1")], [attempt("e-1", 1, job_id=1)], [("e-1", 2)]),
        # the attempt is active, but on another cluster
        ([job(3, "e-1.a1")], [attempt("e-1", 1, cluster="c2", job_id=3)], [("e-1", 3)]),
        # finished jobs are history, not orphans; names that are not ours are left alone
        ([job(1, "e-1.a1", JobState.SUCCEEDED), job(2, "fleet-setup"), job(3, "notebook")], [], []),
        # nothing active at all (the experiment was cancelled before its job appeared)
        ([job(7, "e-9.a3", JobState.RUNNING)], [], [("e-9", 7)]),
    ],
)
def test_orphans_are_found_by_name(queue, active, expected):
    found = find_orphans({"c1": queue}, active)
    assert [(exp, j.job_id) for exp, j in found.get("c1", [])] == expected
