"""The leaderboard: experiments ranked by val_bpb, as plain rows (pure; the CLI renders them)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from fleet.core.ledger_rows import ExperimentRow, ResultRow
from fleet.types import ExperimentState


@dataclass(frozen=True)
class Row:
    rank: int | None
    experiment: str
    wave: str
    label: str  # the knobs that differ from the wave's base, or the description
    config_key: str
    seed: int
    state: str
    val_bpb: float | None
    normalized: float | None
    num_steps: float | None
    accelerator: str | None
    device: str | None
    memory_gb: float | None
    gpu_seconds: float | None
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def build_rows(
    experiments: Sequence[ExperimentRow],
    results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None] | None = None,
    sort_by: str = "raw",
    higher_is_better: bool = False,
) -> list[Row]:
    """Finished experiments first, best first by `sort_by` ("raw" or "normalized"), then the rest.

    `val_bpb` holds the configured metric's value; best is lowest unless `higher_is_better`."""
    normalized = normalized or {}
    rows = []
    for exp in experiments:
        res = results.get(exp.id)
        memory = res.peak_memory_mb / 1024 if res and res.peak_memory_mb is not None else None
        rows.append(Row(
            rank=None, experiment=exp.id, wave=exp.wave_id, label=exp.label or exp.description, config_key=exp.config_key,
            seed=exp.seed, state=exp.state.value, val_bpb=res.val_bpb if res else None,
            normalized=normalized.get(exp.id), num_steps=res.num_steps if res else None,
            accelerator=res.accelerator if res else None, device=res.device if res else None,
            memory_gb=memory, gpu_seconds=res.gpu_seconds if res else None,
            reason=(res.reason if res else exp.reason),
        ))

    def key(row: Row) -> float | None:
        value = row.normalized if sort_by == "normalized" else row.val_bpb
        return value if value is not None and math.isfinite(value) else None

    sign = -1.0 if higher_is_better else 1.0
    ranked = sorted((r for r in rows if key(r) is not None), key=lambda r: (sign * key(r), r.experiment))
    rest = [r for r in rows if key(r) is None]
    out = [replace(r, rank=i) for i, r in enumerate(ranked, start=1)]
    return out + rest


def autoresearch_status(experiments: Sequence[ExperimentRow], results: Mapping[str, ResultRow],
                        higher_is_better: bool = False) -> dict[str, str]:
    """keep / discard / crash per finished experiment, in the autoresearch `results.tsv` sense.

    `keep` marks a new running best at the time it finished; `discard` a finished run that did
    not beat it; `crash` a run that crashed or timed out.
    """
    sign = -1.0 if higher_is_better else 1.0
    best = math.inf
    out: dict[str, str] = {}
    finished = [e for e in experiments if e.state.finished and e.state != ExperimentState.CANCELLED]
    for exp in sorted(finished, key=lambda e: (e.finished_at or 0, e.id)):
        res = results.get(exp.id)
        if exp.state != ExperimentState.DONE or res is None or res.val_bpb is None:
            out[exp.id] = "crash"
        elif sign * res.val_bpb < best:
            best = sign * res.val_bpb
            out[exp.id] = "keep"
        else:
            out[exp.id] = "discard"
    return out
