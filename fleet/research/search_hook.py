"""The controller's side of a search wave: tell the study what finished, ask it for what to run next.

`SearchDriver` is two things to the controller. As a `Watcher` (`fleet.core.hooks`) it watches each
cycle, once results are recorded: it tells the study every trial whose runs have all finished. As the `WaveSource` of
waves of kind `search` it joins the scheduler (`fleet.core.placement`): `capacity` is how many trials
are left to ask, and when the scheduler gives the wave a slot (by its priority and track, like any
wave's work), `produce` asks the study for a configuration and fills the next planned trial with it.
So a configuration is chosen the moment a queue place frees up, with every result known by then.

Crash safety: the trial numbers are the link. A search wave's runs are in the ledger from the start,
`planned`, each with its trial number. Asking creates the trial in the study (durably, first); filling
the planned runs of that trial number with its configuration is one ledger transaction. A controller
killed between the two leaves a RUNNING trial whose runs are still planned: the next one fills them
from the trial's stored configuration (`WaveStudy.complete_params`) instead of asking again. Telling
is idempotent (a finished trial is skipped), and the ledger marks a trial `told` afterwards, so a
controller killed in between is started again to tell it. So each trial is asked once and runs once,
and the number of trials is the number of planned trials in the ledger, exactly.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from fleet.config import FleetConfig
from fleet.core.budget import apply_budget, expected_gpu_hours
from fleet.core.controller import Controller
from fleet.core.expand import PlannedExperiment
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ExperimentRow, NewExperiment, WaveRow
from fleet.core.materialize import CodeStore, fleet_code_store, prepare_experiments
from fleet.core.schedule import PendingExperiment
from fleet.errors import FleetError
from fleet.research.normalize_view import comparable_values
from fleet.research.search import (
    RunOutcome,
    TrialOutcome,
    spec_from_json,
    trial_config,
    trial_key,
    trial_label,
    trial_outcome,
    unasked_trials,
)
from fleet.research.study import WaveStudy, study_path
from fleet.types import ExperimentState
from fleet.workspace import Workspace

log = logging.getLogger("fleet.research.search_hook")
SEARCH_KIND = "search"
NO_RUNS = TrialOutcome("fail", note="no runs in the ledger")
# What stops a search wave for good (a sampler that fails, a study that cannot be read): its unasked
# trials end as crashes with the reason, and the rest of the fleet goes on.
SEARCH_ERRORS = (FleetError, ValueError, ImportError, RuntimeError)


class SearchDriver:
    """Tells and asks for every search wave that still has trials to run or to score."""

    def __init__(self, workspace: Workspace, ledger: Ledger, config: FleetConfig) -> None:
        self.workspace = workspace
        self.ledger = ledger
        self.config = config
        self._studies: dict[str, WaveStudy] = {}
        self._finished: set[str] = set()  # waves whose every trial is told: nothing more to do this process
        self._codes: CodeStore | None = None

    # --- Watcher -------------------------------------------------------------------------------
    def watch(self, controller: Controller) -> None:
        for wave in self.ledger.waves():
            if wave.kind != SEARCH_KIND or wave.id in self._finished or "search" not in wave.spec:
                continue
            try:
                self._reconcile(wave)
            except SEARCH_ERRORS as exc:
                log.exception("search wave %s stopped", wave.id)
                self._abandon(wave, f"the search stopped: {exc}")

    # --- WaveSource --------------------------------------------------------------------------
    def capacity(self, wave: WaveRow) -> int:
        """Trials left to ask; none while a budget cap holds some of the wave (asking would only hold
        more: `fleet release` resumes it)."""
        if wave.id in self._finished or "search" not in wave.spec or wave.id not in self.ledger.planned_waves():
            return 0
        try:
            return len(unasked_trials(self._trial_states(wave.id), len(self._study(wave).trials())))
        except SEARCH_ERRORS as exc:
            log.exception("search wave %s stopped", wave.id)
            self._abandon(wave, f"the search stopped: {exc}")
            return 0

    def produce(self, ledger: Ledger, wave: WaveRow, count: int) -> list[ExperimentRow]:
        """Ask for `count` configurations and fill the next planned trials with them; returns one pending
        run per trial (a trial's other seeds are pending too and placed like any pending work).
        A run a budget cap would cross is held instead, as pending work is."""
        try:
            study = self._study(wave)
            runs = self._runs_by_trial(wave.id)
            fills: dict[int, Mapping[str, Any]] = {}
            for trial in study.ask(count):
                if trial.number not in runs:  # never happens while this driver is the only asker; never run it
                    study.tell(trial.number, NO_RUNS)
                    continue
                fills[trial.number] = trial.params
            self._fill(wave, fills, runs)
        except SEARCH_ERRORS as exc:
            log.exception("search wave %s stopped", wave.id)
            self._abandon(wave, f"the search stopped: {exc}")
            return []
        first = [min(mine, key=lambda e: e.seed) for n, mine in self._runs_by_trial(wave.id).items() if n in fills]
        # The budget caps count the wave's pending runs in order, those made earlier this cycle included
        # (they are not submitted yet, so not yet committed): what would cross a cap is held.
        pending = self.ledger.experiments(wave=wave.id, states=[ExperimentState.PENDING])
        allowed, _ = apply_budget(self.ledger, self.config, [PendingExperiment(e.id, e.tier, expected_gpu_hours(e))
                                                             for e in pending])
        ids = {p.experiment_id for p in allowed}
        return [e for e in first if e.id in ids]

    # --- one wave ------------------------------------------------------------------------------
    def _study(self, wave: WaveRow) -> WaveStudy:
        if wave.id not in self._studies:
            spec = spec_from_json(wave.spec["search"])
            self._studies[wave.id] = WaveStudy(study_path(self.workspace.state, wave.id), wave.id, spec)
        return self._studies[wave.id]

    def _reconcile(self, wave: WaveRow) -> None:
        """Tell the study every trial whose runs finished; fill the runs of a trial asked by a controller
        that died before filling them."""
        study = self._study(wave)
        runs = self._runs_by_trial(wave.id)
        fills: dict[int, Mapping[str, Any]] = {}
        values: Mapping[str, float | None] | None = None
        for trial in study.trials():
            if trial.state != "RUNNING":
                continue
            mine = runs.get(trial.number, [])
            if not mine:
                study.tell(trial.number, NO_RUNS)
            elif any(r.state == ExperimentState.PLANNED for r in mine):
                fills[trial.number] = study.complete_params(trial.number)
            elif all(r.state.finished for r in mine):
                values = values if values is not None else self._values()
                outcome = trial_outcome([RunOutcome(r.state, values.get(r.id)) for r in mine])
                study.tell(trial.number, outcome)
                log.info("wave %s trial %d: %s %s", wave.id, trial.number, outcome.state,
                         "" if outcome.value is None else f"{outcome.value:.6f}")
        if fills:
            self._fill(wave, fills, runs)
        # Told (just now, or by a controller that died before saying so in the ledger), or never asked
        # and finished anyway (cancelled while planned): nothing is left to tell of these trials.
        trials = study.trials()
        states = {t.number: t.state for t in trials}
        for number, mine in runs.items():
            if all(r.state.finished for r in mine) and not all(r.told for r in mine) \
                    and states.get(number, "never asked") != "RUNNING":
                self.ledger.mark_told(wave.id, number)
        if not unasked_trials(self._trial_states(wave.id), len(trials)) and \
                all(t.state != "RUNNING" for t in trials) and not self.ledger.untold_trials(wave.id):
            self._finished.add(wave.id)

    def _runs_by_trial(self, wave_id: str) -> dict[int, list[ExperimentRow]]:
        out: dict[int, list[ExperimentRow]] = defaultdict(list)
        for exp in self.ledger.experiments(wave=wave_id):
            if exp.trial is not None:
                out[exp.trial].append(exp)
        return dict(out)

    def _trial_states(self, wave_id: str) -> dict[int, list[ExperimentState]]:
        return {n: [r.state for r in mine] for n, mine in self._runs_by_trial(wave_id).items()}

    def _values(self) -> dict[str, float | None]:
        return comparable_values(self.ledger, self.config.reference_accelerator, self.config.metric.higher_is_better)

    def _fill(self, wave: WaveRow, fills: Mapping[int, Mapping[str, Any]],
              runs: Mapping[int, Sequence[ExperimentRow]]) -> None:
        """Give each trial's planned runs its configuration (one transaction per trial); a trial whose
        configuration the workload refuses ends as a crash with the reason (it is told `fail`)."""
        env = wave.spec.get("env") or {}
        listing = self._code_store().listing(wave.snapshot)
        planned: dict[int, list[PlannedExperiment]] = {}
        for number, params in fills.items():
            config = trial_config(params, env)
            key = trial_key(params, env, listing)
            planned[number] = [PlannedExperiment(config, r.seed, "", key, trial_label(params),
                                                 {k: f"search.space.{k}" for k in params})
                               for r in runs[number] if r.state == ExperimentState.PLANNED]
        try:  # one knob check for the whole batch (it runs the workload once)
            prepared = self._prepare(wave, [p for group in planned.values() for p in group])
            batches = {}
            for number, group in planned.items():
                batches[number], prepared = prepared[:len(group)], prepared[len(group):]
        except FleetError:
            batches = {number: self._prepare_or_refuse(wave, number, group) for number, group in planned.items()}
        for number, news in batches.items():
            if news:
                filled = self.ledger.fill_trial(wave.id, number, news)
                log.info("wave %s trial %d: %s (%d runs)", wave.id, number, news[0].label, filled)

    def _prepare(self, wave: WaveRow, planned: list[PlannedExperiment]) -> list[NewExperiment]:
        return prepare_experiments(planned, self._code_store(), wave.snapshot, {}, wave.id).experiments

    def _prepare_or_refuse(self, wave: WaveRow, number: int, planned: list[PlannedExperiment]) -> list[NewExperiment]:
        try:
            return self._prepare(wave, planned)
        except FleetError as exc:
            reason = f"the workload refused trial {number}'s configuration: {str(exc).splitlines()[0]}"
            for exp in self.ledger.experiments(wave=wave.id, states=[ExperimentState.PLANNED]):
                if exp.trial == number:
                    self.ledger.set_state(exp.id, ExperimentState.CRASH, reason, only_from=(ExperimentState.PLANNED,))
            return []

    def _code_store(self) -> CodeStore:
        if self._codes is None:
            self._codes = fleet_code_store(self.workspace, self.config, self.ledger)
        return self._codes

    def _abandon(self, wave: WaveRow, reason: str) -> None:
        for exp in self.ledger.experiments(wave=wave.id, states=[ExperimentState.PLANNED]):
            self.ledger.set_state(exp.id, ExperimentState.CRASH, reason, only_from=(ExperimentState.PLANNED,))
        for number in {e.trial for e in self.ledger.experiments(wave=wave.id) if e.trial is not None}:
            self.ledger.mark_told(wave.id, number)  # the study is given up: nothing more will be told
        self._finished.add(wave.id)


__all__ = ["SEARCH_KIND", "SearchDriver"]
