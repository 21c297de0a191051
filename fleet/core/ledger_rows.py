"""The ledger's tables and the plain records its rows become (frozen dataclasses, read everywhere above)."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from fleet.types import ClusterState, ExperimentState

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS waves (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'grid',
    spec TEXT NOT NULL, base TEXT NOT NULL DEFAULT '{}', snapshot TEXT NOT NULL, parent TEXT,
    max_gpu_hours REAL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, wave_id TEXT NOT NULL REFERENCES waves(id), seq INTEGER NOT NULL,
    config TEXT NOT NULL, config_key TEXT NOT NULL, seed INTEGER NOT NULL, description TEXT NOT NULL,
    label TEXT NOT NULL, snapshot TEXT NOT NULL, tier TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL,
    released INTEGER NOT NULL DEFAULT 0, code_snapshot TEXT, base_snapshot TEXT,
    seeding TEXT NOT NULL DEFAULT 'seed'
);
CREATE INDEX IF NOT EXISTS experiments_state ON experiments(state);
CREATE INDEX IF NOT EXISTS experiments_wave ON experiments(wave_id);
CREATE INDEX IF NOT EXISTS experiments_wave_state ON experiments(wave_id, state);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL REFERENCES experiments(id),
    n INTEGER NOT NULL, cluster TEXT NOT NULL, accelerator TEXT NOT NULL, job_id INTEGER,
    state TEXT NOT NULL, submitted_at REAL NOT NULL, started_at REAL, ended_at REAL,
    exit_code INTEGER, log_path TEXT NOT NULL DEFAULT '', UNIQUE (experiment_id, n)
);
CREATE INDEX IF NOT EXISTS attempts_state ON attempts(state);
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY, backend TEXT NOT NULL, accelerator TEXT NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    experiment_id TEXT PRIMARY KEY REFERENCES experiments(id), attempt_id INTEGER,
    outcome TEXT NOT NULL, val_bpb REAL, num_steps REAL, training_seconds REAL,
    peak_memory_mb REAL, device TEXT, accelerator TEXT, metrics TEXT NOT NULL DEFAULT '{}',
    reason TEXT NOT NULL DEFAULT '', tail TEXT NOT NULL DEFAULT '', gpu_seconds REAL,
    recorded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS verdict_reads (wave_id TEXT PRIMARY KEY REFERENCES waves(id), read_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS adoptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL REFERENCES experiments(id),
    adopted_at REAL NOT NULL, preset TEXT, defaults TEXT NOT NULL DEFAULT '[]', files TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS results_val_bpb ON results(val_bpb);
CREATE INDEX IF NOT EXISTS results_accelerator ON results(accelerator);
"""

# Columns added since the first release: a ledger made before them gets them on open (ALTER TABLE).
ADDED_COLUMNS = (
    ("experiments", "code_snapshot", "TEXT"),
    ("experiments", "base_snapshot", "TEXT"),
    ("experiments", "seeding", "TEXT NOT NULL DEFAULT 'seed'"),
    ("waves", "priority", "INTEGER NOT NULL DEFAULT 0"),
    ("waves", "track", "TEXT NOT NULL DEFAULT ''"),
    ("clusters", "replaces", "TEXT"),
    ("waves", "backfill", "INTEGER NOT NULL DEFAULT 0"),
    ("experiments", "trial", "INTEGER"),  # a search wave's trial number (Optuna's), None elsewhere
    ("experiments", "told", "INTEGER NOT NULL DEFAULT 0"),  # its trial's score is in the study (search waves)
)
# Indexes on added columns: created after the columns exist (a ledger made before them gets both on open).
ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS waves_track ON waves(track)",
    "CREATE INDEX IF NOT EXISTS attempts_ended ON attempts(ended_at)",
    # configurations run more than once, found without reading every run (step-noise correction)
    "CREATE INDEX IF NOT EXISTS experiments_configs ON experiments(state, config_key, COALESCE(code_snapshot, snapshot))",
)
SEEDED, REPLICATE = "seed", "replicate"

# Attempt states: the backend job states plus the controller's own bookkeeping.
ATTEMPT_SUBMITTING = "submitting"  # row written before the backend call, so a crash is detectable
ATTEMPT_LOST = "lost"  # its cluster died; the experiment went back to pending
ATTEMPT_NOT_SUBMITTED = "not_submitted"  # never reached a cluster (setup failed): does not count
ATTEMPT_LOG_LOST = "log_lost"  # ran, but its log was cut short (a full disk): run again, does not count
ATTEMPT_WITHDRAWN = "withdrawn"  # queued but not started, taken back for higher-priority work: does not count
ACTIVE_ATTEMPT_STATES = ("submitting", "pending", "running")


@dataclass(frozen=True)
class WaveRow:
    id: str
    name: str
    tier: str
    kind: str
    spec: dict
    base: dict
    snapshot: str
    parent: str | None
    max_gpu_hours: float | None
    created_at: float
    priority: int = 0  # higher starts first, within its track
    track: str = ""  # fair-share group (e.g. one per agent); "" is the default track
    backfill: bool = False  # queued by the fleet itself for idle clusters: lowest priority, preempted by real work


@dataclass(frozen=True)
class ExperimentRow:
    id: str
    wave_id: str
    seq: int
    config: dict[str, str]
    config_key: str
    seed: int
    description: str
    label: str
    snapshot: str
    tier: str
    state: ExperimentState
    attempts: int
    reason: str
    created_at: float
    updated_at: float
    finished_at: float | None
    released: bool = False  # the user released it past the budget caps (`fleet release`)
    code_snapshot: str | None = None  # the code before its knob values were written (None: `snapshot`)
    base_snapshot: str | None = None  # the code its change is relative to, what `fleet adopt` merges from
    # "seed": `seed` is the SEED it ran with, so runs pair by seed; "replicate": the workload has no
    # SEED knob, `seed` only numbers the run, and runs compare unpaired.
    seeding: str = SEEDED
    trial: int | None = None  # the search trial this run belongs to (search waves only)
    told: bool = False  # its trial's score was told to the search's study

    @property
    def code(self) -> str:
        return self.code_snapshot or self.snapshot


@dataclass(frozen=True)
class AttemptRow:
    id: int
    experiment_id: str
    n: int
    cluster: str
    accelerator: str
    job_id: int | None
    state: str
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    log_path: str


@dataclass(frozen=True)
class ClusterRow:
    name: str
    backend: str
    accelerator: str
    state: ClusterState
    created_at: float
    updated_at: float
    replaces: str | None = None  # the lost cluster this one was launched to replace



@dataclass(frozen=True)
class ResultRow:
    experiment_id: str
    attempt_id: int | None
    outcome: str
    val_bpb: float | None
    num_steps: float | None
    training_seconds: float | None
    peak_memory_mb: float | None
    device: str | None
    accelerator: str | None
    metrics: dict
    reason: str
    tail: str
    gpu_seconds: float | None
    recorded_at: float


@dataclass(frozen=True)
class AdoptionRow:
    """`fleet adopt EXP` that changed the working tree: what it wrote, and where."""

    id: int
    experiment_id: str
    adopted_at: float
    preset: str | None  # the preset whose knob defaults took the values (env knobs); None: constants or none
    defaults: list  # [{"knob", "from", "to"}]
    files: list  # paths it changed


@dataclass(frozen=True)
class NewExperiment:
    config: dict[str, str]
    config_key: str
    seed: int
    description: str
    label: str
    snapshot: str | None = None  # the code it runs; None: the wave's snapshot
    code_snapshot: str | None = None
    base_snapshot: str | None = None
    seeding: str = SEEDED
    trial: int | None = None  # a search trial's run: recorded `planned` until the search chooses its configuration


def decode_row(cls, row: sqlite3.Row):
    """A ledger row as its record: JSON columns decoded, states as enums."""
    data = dict(row)
    for key in ("spec", "base", "config", "metrics", "defaults", "files"):
        if key in data and isinstance(data[key], str):
            data[key] = json.loads(data[key])
    if cls is ExperimentRow:
        data["state"] = ExperimentState(data["state"])
        data["released"] = bool(data["released"])
        data["told"] = bool(data.get("told", 0))
    if cls is WaveRow:
        data["backfill"] = bool(data.get("backfill", 0))
    if cls is ClusterRow:
        data["state"] = ClusterState(data["state"])
    return cls(**data)
