"""The leaderboard: experiments ranked by val_bpb, and configurations ranked by their mean (pure; the CLI
renders them).

"Best" is a configuration, never a single run: one lucky seed is not a result. ``build_configs`` groups
the finished runs of the same code and configuration, from any wave (evidence is pooled), and ranks
them by their mean, with n beside it.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace

from fleet.core.ledger_rows import ExperimentRow, ResultRow
from fleet.types import ExperimentState


def shallow_dict(record) -> dict:
    """A flat record's fields as a dict: `dataclasses.asdict` deep-copies every value, which costs
    seconds over a 10,000-run leaderboard and buys nothing for strings, numbers and tuples of them."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


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
    corrected: float | None = None  # the value at its configuration's typical step count (step noise removed)
    backfill: bool = False  # run by backfill (queued by the fleet itself for idle clusters)

    def as_dict(self) -> dict:
        return shallow_dict(self)


@dataclass(frozen=True)
class ConfigRow:
    """One configuration on one code, its finished runs pooled across waves."""

    rank: int | None
    label: str
    config_key: str
    code: str
    n: int  # runs the means rest on
    val_bpb: float | None  # mean of the raw values
    std: float | None
    normalized: float | None  # mean of the normalized values (None: some run's hardware speed is unknown)
    corrected: float | None  # mean of the step-noise-corrected values
    accelerators: tuple[str, ...]
    experiments: tuple[str, ...]
    waves: tuple[str, ...]

    def as_dict(self) -> dict:
        return shallow_dict(self)


def build_rows(
    experiments: Sequence[ExperimentRow],
    results: Mapping[str, ResultRow],
    normalized: Mapping[str, float | None] | None = None,
    sort_by: str = "raw",
    higher_is_better: bool = False,
    corrected: Mapping[str, float | None] | None = None,
    backfill_waves: Collection[str] = (),
) -> list[Row]:
    """Finished experiments first, best first by `sort_by` ("raw" or "normalized"), then the rest.

    `val_bpb` holds the configured metric's value; best is lowest unless `higher_is_better`."""
    normalized, corrected = normalized or {}, corrected or {}
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
            reason=(res.reason if res else exp.reason), corrected=corrected.get(exp.id),
            backfill=exp.wave_id in backfill_waves,
        ))

    def key(row: Row) -> float | None:
        value = row.normalized if sort_by == "normalized" else row.val_bpb
        return value if value is not None and math.isfinite(value) else None

    sign = -1.0 if higher_is_better else 1.0
    ranked = sorted((r for r in rows if key(r) is not None), key=lambda r: (sign * key(r), r.experiment))
    rest = [r for r in rows if key(r) is None]
    out = [replace(r, rank=i) for i, r in enumerate(ranked, start=1)]
    return out + rest


def build_configs(rows: Sequence[Row], code_of: Mapping[str, str], sort_by: str = "raw",
                  higher_is_better: bool = False) -> list[ConfigRow]:
    """Configurations of the finished runs in ``rows``, best mean first (``sort_by``: "raw" or "normalized").

    ``code_of`` maps an experiment id to its code (`ExperimentRow.code`): the same knobs on other code
    are another configuration.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.state == ExperimentState.DONE.value and r.val_bpb is not None and math.isfinite(r.val_bpb):
            groups.setdefault((code_of.get(r.experiment, ""), r.config_key), []).append(r)
    out = []
    for (code, key), runs in groups.items():
        raw = [r.val_bpb for r in runs]
        norm = [r.normalized for r in runs]
        corr = [r.corrected for r in runs]
        std = statistics.stdev(raw) if len(raw) > 1 else None
        out.append(ConfigRow(
            None, runs[0].label, key, code, len(runs), statistics.fmean(raw), std,
            statistics.fmean(norm) if all(v is not None for v in norm) else None,
            statistics.fmean(corr) if all(v is not None for v in corr) else None,
            tuple(sorted({r.accelerator or "unknown" for r in runs})), tuple(r.experiment for r in runs),
            tuple(dict.fromkeys(r.wave for r in runs)),
        ))

    def value(c: ConfigRow) -> float | None:
        return c.normalized if sort_by == "normalized" else c.val_bpb

    sign = -1.0 if higher_is_better else 1.0
    ranked = sorted((c for c in out if value(c) is not None), key=lambda c: (sign * value(c), -c.n, c.config_key))
    rest = sorted((c for c in out if value(c) is None), key=lambda c: c.config_key)
    return [replace(c, rank=i) for i, c in enumerate(ranked, start=1)] + rest


def verdict_status(experiments: Sequence[ExperimentRow], verdicts: Mapping[tuple[str, str], str],
                   baselines: Collection[tuple[str, str]] = ()) -> dict[str, str]:
    """Each finished experiment's status for `results.tsv`: the verdict on its configuration.

    ``verdicts`` maps (code, configuration key) to its latest verdict (keep / discard / inconclusive;
    need_more reads as `validating`); a configuration never validated is `screen`, a baseline that
    was never judged itself `baseline`; a run that crashed or timed out is `crash`. Never a "new
    running best": one run beating the others is not a verdict.
    """
    out: dict[str, str] = {}
    for exp in experiments:
        if not exp.state.finished or exp.state == ExperimentState.CANCELLED:
            continue
        if exp.state == ExperimentState.PRUNED:
            out[exp.id] = "pruned"  # stopped early for trailing the baseline: not a crash, and never a verdict
        elif exp.state != ExperimentState.DONE:
            out[exp.id] = "crash"
        elif (exp.code, exp.config_key) in verdicts:
            verdict = verdicts[(exp.code, exp.config_key)]
            out[exp.id] = "validating" if verdict == "need_more" else verdict
        else:
            out[exp.id] = "baseline" if (exp.code, exp.config_key) in baselines else "screen"
    return out
