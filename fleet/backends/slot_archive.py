"""Where a slot's finished jobs go: one JSON line each in `<slot>/archive.jsonl`, append-only.

A slot queue's `jobs/` directory is its index of live jobs: what is queued or running, plus the
last few finished jobs (for readers that poll, such as the controller, to see each one finish).
Reading it costs what is live, never what the slot ever ran. Older finished jobs are compacted
here by the slot's runner: their final record is appended (and synced) *before* their files are
deleted, so a job is never lost; a compaction cut short is finished by the next one, which skips
jobs the archive's tail already holds, so a job is archived once. Readers also keep the last
record per job id, so even a duplicate line changes nothing.

Only the rare reader needs the archive: a controller that missed a job's end (it was stopped
while the slot ran on) looks the job up by name; `sky queue` in the fake SDK lists every job.
The logs themselves are not here: a job writes its log where its spec says (for the local backend,
`.fleet/logs/`), and it stays there, because it is the experiment's result.

Standard library only: the slot runner imports this module.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.backends.slot_queue import SlotQueue

RECORD_FIELDS = ("job_id", "name", "state", "log", "submitted_at", "started_at", "ended_at", "exit_code")
TAIL_BYTES = 64 * 1024  # how much of the archive's end a compaction re-reads to skip what it already holds
MAX_BATCH = 64  # records per compaction batch, so one batch always fits in TAIL_BYTES


def compact(queue: SlotQueue, keep: int) -> int:
    """Move the queue's finished jobs but the newest `keep` from jobs/ into its archive; returns how many.

    Each batch is appended to the archive and synced before its jobs' files are deleted (a job is
    never lost), and what the archive's tail already holds is not appended again (a job is archived
    once). Safe from any process: it holds the queue lock, and a finished job never changes.
    """
    with queue._lock():  # noqa: SLF001 - the queue's own lock: no submission or other compaction meanwhile
        old = queue.finished_records()
        old = old[:-keep] if keep > 0 else old
        for start in range(0, len(old), MAX_BATCH):
            batch = old[start:start + MAX_BATCH]
            held = tail_ids(queue.archive)
            append(queue.archive, [r for r in batch if r["job_id"] not in held])
            for record in batch:
                remove_files(queue, record["job_id"])
        if old:
            _remove_strays(queue, below=old[-1]["job_id"])
    return len(old)


def remove_files(queue: SlotQueue, job_id: int) -> None:
    """Delete a job's files, its state first: it leaves the index before anything else goes."""
    *files, claim = queue.job_files(job_id)
    for path in files:
        path.unlink(missing_ok=True)
    shutil.rmtree(claim, ignore_errors=True)


def _remove_strays(queue: SlotQueue, below: int) -> None:
    """Files of archived jobs left by a compaction cut short (their state file went first)."""
    live = set(queue.job_ids())
    stems = {entry.name.split(".", 1)[0] for entry in os.scandir(queue.jobs_dir)}
    for job_id in sorted(int(s) for s in stems if s.isdigit()):
        if job_id <= below and job_id not in live:
            remove_files(queue, job_id)


def read_records(path: Path) -> list[dict]:
    """Every archived record, oldest first, one per job id (the last line of a job wins).

    A torn last line (a compaction cut short mid-write) is skipped: its job is still in `jobs/`.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records: dict[int, dict] = {}
    for line in text.splitlines():
        record = _parse(line)
        if record is not None:
            records.pop(record["job_id"], None)
            records[record["job_id"]] = record
    return list(records.values())


def find(path: Path, *, names: Iterable[str] = (), job_ids: Iterable[int] = ()) -> list[dict]:
    """Archived records of these job names or ids (a scan of the whole archive: the rare path)."""
    names, job_ids = set(names), set(job_ids)
    return [r for r in read_records(path) if r["name"] in names or r["job_id"] in job_ids]


def tail_ids(path: Path, nbytes: int = TAIL_BYTES) -> set[int]:
    """Job ids in the last `nbytes` of the archive: what an interrupted compaction already appended."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - nbytes))
            data = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return set()
    return {r["job_id"] for r in map(_parse, data.splitlines()) if r is not None}


def last_id(path: Path) -> int:
    """The highest job id in the archive's tail (0 if none): where a slot's id count resumes."""
    return max(tail_ids(path), default=0)


def append(path: Path, records: list[dict]) -> None:
    """Append records durably: they are on disk before the caller deletes the jobs' files."""
    if not records:
        return
    data = "".join(json.dumps({k: r.get(k) for k in RECORD_FIELDS}) + "\n" for r in records).encode()
    with open(path, "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":  # a torn line from a compaction cut short: start a fresh one
                data = b"\n" + data
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("job_id"), int) or "name" not in record:
        return None
    return record
