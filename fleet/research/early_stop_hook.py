"""The controller's side of early stopping: read running runs' training loss, stop those clearly behind.

Once per cycle (a `Watcher`, `fleet.core.hooks`), for waves with `early_stop`: fetch a bounded tail of
each running run's log (`Backend.log_tails`), add its loss points to what earlier cycles saw, and ask
`early_stop.judge`. A run to stop is recorded `pruned` in one conditional ledger transaction
(`prune_attempt`: only while its attempt is live and it is running), with its last loss and the GPU
time it used; the controller then cancels its job in the same cycle, as for a user's
cancel. The points seen live in memory: a restarted controller starts again from the tails it reads,
and finished runs' curves come from their saved logs.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from fleet.backends.base import Backend, BackendError
from fleet.config import FleetConfig
from fleet.core.controller import Controller
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import AttemptRow, ExperimentRow, WaveRow
from fleet.core.transitions import Outcome
from fleet.research.early_stop import Curve, Point, Prune, judge, merge, parse_curve, warmdown_start
from fleet.research.plans import BASELINE_DESCRIPTION
from fleet.types import ExperimentState, job_name
from fleet.workspace import Workspace

log = logging.getLogger("fleet.research.early_stop_hook")
TAIL_LINES = 200  # log lines read per running run per cycle
KEPT_TAIL_LINES = 20  # of which the pruned run's result keeps the last


class EarlyStopHook:
    def __init__(self, workspace: Workspace, ledger: Ledger, backend: Backend, config: FleetConfig) -> None:
        self.workspace = workspace
        self.ledger = ledger
        self.backend = backend
        self.clock = ledger.clock
        self._points: dict[str, list[Point]] = {}  # running experiment -> the loss points seen so far
        self._finished: dict[str, Curve] = {}  # finished experiment -> its whole curve, from its saved log

    def watch(self, controller: Controller) -> None:
        waves = {w.id: w for w in self.ledger.waves() if w.spec.get("early_stop")}
        if not waves:
            return
        running = {e.id: e for e in self.ledger.experiments(states=[ExperimentState.RUNNING]) if e.wave_id in waves}
        attempts = [a for a in self.ledger.attempts(active=True)
                    if a.experiment_id in running and a.state == "running" and a.job_id is not None]
        if not attempts:
            return
        tails = self.backend.log_tails([(a.cluster, a.job_id) for a in attempts], TAIL_LINES)
        texts: dict[str, str] = {}
        for attempt, text in zip(attempts, tails):
            if isinstance(text, BackendError):
                log.warning("could not read the log tail of %s: %s", attempt.experiment_id, text)
                continue
            texts[attempt.experiment_id] = text
            self._points[attempt.experiment_id] = merge(self._points.get(attempt.experiment_id, []),
                                                        parse_curve(text))
        for wave_id in sorted({running[a.experiment_id].wave_id for a in attempts}):
            self._judge_wave(waves[wave_id], [a for a in attempts if running[a.experiment_id].wave_id == wave_id],
                             running, texts)
        self._points = {k: v for k, v in self._points.items() if k in running}

    def _judge_wave(self, wave: WaveRow, attempts: Sequence[AttemptRow], running: dict[str, ExperimentRow],
                    texts: dict[str, str]) -> None:
        rule = wave.spec["early_stop"]
        curves: dict[str, Curve] = {}
        members = self.ledger.experiments(wave=wave.id)
        for exp in members:
            if exp.id in running:
                curves[exp.id] = Curve(tuple(self._points.get(exp.id, ())))
            elif exp.state in (ExperimentState.DONE, ExperimentState.PRUNED):
                curves[exp.id] = self._finished_curve(exp)
        baseline = {e.id for e in members if e.description == BASELINE_DESCRIPTION}
        for attempt in attempts:
            exp = running[attempt.experiment_id]
            if exp.id in baseline:
                continue  # the reference itself is never stopped
            others = [c for k, c in curves.items() if k != exp.id]
            verdict = judge(curves[exp.id], tuple(rule["at"]), float(rule["margin"]),
                            warmdown_start(exp.config, rule.get("warmdown_default")),
                            [curves[k] for k in sorted(baseline) if k in curves], others)
            if verdict is not None:
                self._prune(exp, attempt, verdict, texts.get(exp.id, ""))

    def _finished_curve(self, exp: ExperimentRow) -> Curve:
        if exp.id not in self._finished:
            attempts = self.ledger.attempts(exp.id)
            text = ""
            if attempts:
                path = self.workspace.logs / f"{job_name(exp.id, attempts[-1].n)}.log"
                text = _read(path)
            # A pruned run stopped early: its curve is real up to where it got, so it is not "finished".
            self._finished[exp.id] = Curve(tuple(parse_curve(text)), finished=exp.state == ExperimentState.DONE)
        return self._finished[exp.id]

    def _prune(self, exp: ExperimentRow, attempt: AttemptRow, verdict: Prune, text: str) -> None:
        now = self.clock()
        metrics = {"last_loss": verdict.last_loss, "last_progress": verdict.last_progress, "pruned_at": verdict.at,
                   "loss_at": verdict.loss, "reference_loss": verdict.reference}
        tail = "\n".join(text.splitlines()[-KEPT_TAIL_LINES:])
        outcome = Outcome(ExperimentState.PRUNED, "pruned", None, metrics, verdict.reason, tail, attempt.accelerator,
                          max(0.0, now - (attempt.started_at or now)))
        if self.ledger.prune_attempt(attempt, outcome):
            log.info("%s %s", exp.id, verdict.reason)
            # Its curve so far stays a reference for the others (a cancelled remote job's log is not kept).
            self._finished[exp.id] = Curve(tuple(self._points.get(exp.id, ())))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


__all__ = ["EarlyStopHook"]
