"""A search wave's Optuna study: the one module that talks to Optuna's storage and samplers.

Each search wave has its own study in `.fleet/studies/<wave>.journal` (Optuna's JournalStorage: an
append-only log, one fsync'd line per change). Only the controller writes it, under the controller
lock. The study is always minimized: values come from the research layer, where lower is better
(`normalize_view.research_results`).

The sampler is made afresh for each batch of asks, seeded from the wave's seed and the number of
trials so far (`search.sampler_seed`): what is asked depends only on the study, so a controller that
restarts asks exactly what the one before it would have.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import Trial, TrialState

from fleet.core.wave_spec import SearchSpec
from fleet.research.search import TrialOutcome, default_startup_trials, distributions, sampler_seed

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Multivariate TPE and constant liar are "experimental" in Optuna 4 (stable in 5); the warning says nothing to a user.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger("fleet.research.study")
LOCK_GRACE_S = 10  # a journal lock older than this was left by a killed controller (only one runs at a time)
_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # Optuna's: RUNNING, COMPLETE, PRUNED, FAIL, WAITING
    params: dict[str, Any]
    value: float | None


def sampler_problem(name: str) -> str | None:
    """Why a sampler cannot run here (a missing package), or None."""
    needs = {"cmaes": "cmaes", "gp": "torch"}.get(name)
    if needs and importlib.util.find_spec(needs) is None:
        return (f"`search.sampler` = {name!r} needs the `{needs}` package where the controller runs; install it "
                f"(`pip install {needs}`) or use `sampler: tpe`")
    return None


def make_sampler(spec: SearchSpec, asked: int) -> optuna.samplers.BaseSampler:
    seed = sampler_seed(spec.seed, asked)
    startup = spec.startup_trials if spec.startup_trials is not None else default_startup_trials(spec.trials)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    # Parallel asks: pending trials count as if they scored badly, so concurrent asks spread out.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True, multivariate=True)


def _repair_torn_tail(path: Path) -> None:
    """Drop a last line cut short by a killed writer: Optuna tolerates one at the end of the log, but
    every line appended after it would make the whole log unreadable."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("study %s: dropping a torn last line (%d bytes) left by a killed controller",
                    path.name, len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)


class WaveStudy:
    """One search wave's study: ask configurations, tell results, list trials."""

    def __init__(self, path: Path, name: str, spec: SearchSpec) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_torn_tail(path)
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path), grace_period=LOCK_GRACE_S))
        self.storage = JournalStorage(backend)
        self.name = name
        self.spec = spec
        self.distributions: dict[str, BaseDistribution] = distributions(spec.space)
        optuna.create_study(storage=self.storage, study_name=name, direction="minimize", load_if_exists=True)

    def _study(self, asked: int) -> optuna.Study:
        return optuna.Study(self.name, self.storage, sampler=make_sampler(self.spec, asked))

    def trials(self) -> list[TrialRecord]:
        study = optuna.Study(self.name, self.storage)
        return [TrialRecord(t.number, t.state.name, dict(t.params), t.value)
                for t in study.get_trials(deepcopy=False)]

    def ask(self, n: int) -> list[TrialRecord]:
        """`n` new trials, each with a value for every knob of the space."""
        out = []
        for _ in range(n):
            study = self._study(len(self.trials()))
            trial = study.ask(self.distributions)
            out.append(TrialRecord(trial.number, "RUNNING", dict(trial.params), None))
        return out

    def complete_params(self, number: int) -> dict[str, Any]:
        """A running trial's full configuration, sampling any knob a killed controller left unset."""
        study = self._study(len(self.trials()))
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if set(frozen.params) >= set(self.distributions):
            return dict(frozen.params)
        trial = Trial(study, frozen._trial_id)
        for name, distribution in self.distributions.items():
            trial._suggest(name, distribution)
        return dict(trial.params)

    def tell(self, number: int, outcome: TrialOutcome) -> None:
        study = optuna.Study(self.name, self.storage)
        values = outcome.value if outcome.state == "complete" else None
        study.tell(number, values, state=_STATES[outcome.state], skip_if_finished=True)


def preview_asks(spec: SearchSpec, n: int) -> list[dict[str, Any]]:
    """The first `n` configurations the search would ask for, from an in-memory study (for `--dry-run`)."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="preview", direction="minimize")
    dists = distributions(spec.space)
    out = []
    for asked in range(n):
        study = optuna.Study("preview", storage, sampler=make_sampler(spec, asked))
        out.append(dict(study.ask(dists).params))
    return out


def studies_dir(state_dir: Path) -> Path:
    return state_dir / "studies"


def study_path(state_dir: Path, wave_id: str) -> Path:
    return studies_dir(state_dir) / f"{wave_id}.journal"


def summarize(trials: Sequence[TrialRecord]) -> Mapping[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.lower()] = counts.get(t.state.lower(), 0) + 1
    return counts


__all__ = ["TrialRecord", "WaveStudy", "make_sampler", "preview_asks", "sampler_problem", "study_path", "summarize"]
