"""The controller's hook for sequential validation: add seed pairs to promote waves as results arrive.

The decision is pure (`verdict_report.evaluate_wave` → `promote.more_pairs`); this module is the
I/O around it: read the ledger, prepare the requested runs exactly as a submission does (the same
knob checks; a workload whose knobs are constants gets each seed written into its own snapshot),
append them to the wave. The controller calls ``extend_waves`` every cycle with the experiments that
just finished (the first cycle: ``None``, every wave), and `fleet wait` calls it before deciding a
wave is done, so a wave never looks finished while a candidate still needs pairs. Appending is
idempotent (`Ledger.add_experiments`), so two processes extending one wave at once add each run once.
"""
from __future__ import annotations

from collections.abc import Collection

from fleet.config import FleetConfig
from fleet.core.ledger import Ledger
from fleet.core.materialize import choices_from, fleet_code_store, prepare_experiments
from fleet.research.normalize_view import normalized_for, research_results
from fleet.research.plans import planned_runs
from fleet.research.verdict_report import evaluate_wave, is_validation
from fleet.workspace import Workspace


def extend_waves(workspace: Workspace, ledger: Ledger, config: FleetConfig, finished: Collection[str] | None = None,
                 waves: Collection[str] | None = None) -> int:
    """Append the pairs that sequential validation waves need now; returns how many runs were added.

    ``finished``: experiment ids that finished since the last call (their waves are re-judged);
    None re-judges every sequential wave. ``waves`` limits it to these wave ids.
    """
    touched = None if finished is None else {e.rsplit("-", 1)[0] for e in finished}
    chosen = [w for w in ledger.waves() if is_validation(w) and (w.spec.get("rule") or {}).get("design") == "sequential"
              and (touched is None or w.id in touched) and (waves is None or w.id in waves)]
    if not chosen:
        return 0
    higher = config.metric.higher_is_better
    experiments, results = ledger.experiments(), research_results(ledger.results(), higher)
    norm = normalized_for(ledger, config.reference_accelerator, higher)
    slope = norm.slope.slope if norm.slope is not None else None
    codes = fleet_code_store(workspace, config, ledger)
    added = 0
    for wave in chosen:
        requests = evaluate_wave(wave, experiments, results, norm.values, slope).requests
        planned = [p for r in requests for p in planned_runs(wave.spec, [r.seed], only={r.config_key},
                                                               baseline_seeds={r.seed} if r.with_baseline else set())]
        if planned:
            prepared = prepare_experiments(planned, codes, wave.snapshot, choices_from(experiments),
                                           f"fleet {wave.kind} {wave.id}")
            added += len(ledger.add_experiments(wave.id, prepared.experiments, skip_existing=True))
    return added
