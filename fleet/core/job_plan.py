"""What the controller sends a backend for one attempt, and what it makes of the finished job: pure."""
from __future__ import annotations

from fleet.core.expand import knob_values
from fleet.core.ledger_rows import AttemptRow, ExperimentRow
from fleet.core.results import parse_run_log
from fleet.core.transitions import Outcome
from fleet.types import ExperimentState, JobInfo, JobSpec, JobState

DEFAULT_TIMEOUT_S = 2 * 300 + 600  # 2x the default 5-minute budget plus set-up margin


def budget_seconds(exp: ExperimentRow, default: float | None) -> float | None:
    """The experiment's TIME_BUDGET knob, else `default` (the workload's own default)."""
    try:
        return float(exp.config["TIME_BUDGET"])
    except (KeyError, ValueError):
        return default


def experiment_timeout(exp: ExperimentRow, default_budget: float | None) -> float:
    """2x the experiment's TIME_BUDGET plus set-up margin (compile, data loading, evaluation)."""
    seconds = budget_seconds(exp, default_budget)
    return DEFAULT_TIMEOUT_S if seconds is None else 2 * seconds + 600


def job_for(exp: ExperimentRow, attempt: int, accelerator: str, timeout_s: float) -> JobSpec:
    envs = {**knob_values(exp.config), "SEED": str(exp.seed)}
    return JobSpec(exp.id, attempt, exp.snapshot, envs, timeout_s, None if accelerator == "cpu" else accelerator)


def outcome_of(attempt: AttemptRow, job: JobInfo, text: str, metric: str = "val_bpb") -> Outcome:
    """What a finished job's state and log mean for its experiment (pure); `metric` judges it."""
    gpu_seconds = (job.ended_at - job.started_at) if job.started_at and job.ended_at else None
    parsed = parse_run_log(text, attempt.experiment_id, job.exit_code, metric=metric)
    if job.state == JobState.CANCELLED:
        state, outcome, reason = ExperimentState.CANCELLED, "cancelled", "cancelled"
    elif job.state == JobState.TIMEOUT:
        state, outcome, reason = ExperimentState.TIMEOUT, "timeout", "killed after its timeout"
    elif parsed.outcome == "done" and job.state == JobState.SUCCEEDED:
        state, outcome, reason = ExperimentState.DONE, "done", ""
    else:
        state, outcome, reason = ExperimentState.CRASH, "crash", parsed.reason or f"exit code {job.exit_code}"
    return Outcome(state, outcome, parsed.val_bpb if state == ExperimentState.DONE else None, parsed.metrics,
                   reason, "\n".join(parsed.tail), attempt.accelerator, gpu_seconds)
