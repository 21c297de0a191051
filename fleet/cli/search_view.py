"""`fleet wave` on a search wave: checks against the workload, `--dry-run`'s space and first asks, the planned trials."""
from __future__ import annotations

from fleet.backends.local import default_slots
from fleet.cli.context import Context
from fleet.core.expand import PlannedExperiment, env_value
from fleet.core.ledger_rows import NewExperiment
from fleet.core.materialize import CodeStore
from fleet.core.wave_spec import WaveSpec
from fleet.errors import InputError
from fleet.research.search import rounded, trial_label
from fleet.research.search_checks import check_search_wave, space_rows
from fleet.types import ClusterState


def check_search(ctx: Context, spec: WaveSpec, codes: CodeStore, snapshot: str) -> WaveSpec:
    """The space resolved against the workload's knobs and the wave's early stopping checked (exit 2 if not)."""
    from fleet.research.study import sampler_problem  # Optuna loads only for search waves

    problem = sampler_problem(spec.search.sampler) if spec.search else None
    if problem:
        raise InputError(f"{spec.source}: {problem}")
    return check_search_wave(spec, codes, snapshot, ctx.config.tiers[spec.tier].early_stop)


def planned_trials(spec: WaveSpec, default_seeds: int) -> list[NewExperiment]:
    """A search wave's trials as planned runs (`seeds` per trial): their configurations come while it runs."""
    if spec.search is None:
        return []
    seeds = spec.seeds or default_seeds
    return [NewExperiment({}, "", seed, "", f"trial {k} (not chosen yet)", trial=k)
            for k in range(spec.search.trials) for seed in range(seeds)]


def _first_ask_count(ctx: Context, trials: int) -> int:
    """What the first cycle asks for: a configuration per queue place of the fleet (as it is, or would be)."""
    clusters = len(ctx.ledger.clusters([ClusterState.UP])) if ctx.workspace.ledger_path.exists() else 0
    if not clusters and ctx.backend_name() == "local":
        clusters = len(default_slots(ctx.config))
    return min(trials, max(1, clusters) * ctx.config.queue_depth)


def search_dry_run(ctx: Context, spec: WaveSpec, planned: list[PlannedExperiment], payload: dict) -> int:
    """`--dry-run` of a search wave (or one with early stopping), once every check has passed: the
    experiments, the space and the first configurations the sampler would ask for."""
    from fleet.research.study import preview_asks  # Optuna loads only for search waves

    search = spec.search
    payload = {**payload, "early_stop": spec.early_stop.to_json() if spec.early_stop else None}
    asks: list[dict] = []
    if search is not None:
        asks = [{k: rounded(v) for k, v in params.items()}
                for params in preview_asks(search, _first_ask_count(ctx, search.trials))]
        payload["search"] = {**search.to_json(), "first_asks": asks}

    def render(console) -> None:
        for p in planned:
            console.print(f"{p.label}  SEED={p.seed}", markup=False)
        if search is not None:
            seeds = spec.seeds or ctx.config.tiers[spec.tier].seeds
            console.print(f"search: {search.trials} trials x {seeds} seed(s), sampler {search.sampler} "
                          f"(seed {search.seed})", markup=False)
            for row in space_rows(search.space):
                console.print(f"  {row}", markup=False)
            console.print(f"first {len(asks)} configurations (then one per freed queue place, learning from results):",
                          markup=False)
            for params in asks:
                console.print(f"  {trial_label(params)}", markup=False)
        if spec.early_stop is not None:
            at = ", ".join(f"{a:.0%}" for a in spec.early_stop.at)
            console.print(f"early stop: at {at} of the budget, margin {env_value(spec.early_stop.margin)} "
                          "in training loss", markup=False)

    ctx.sink.data(payload, render)
    return 0


__all__ = ["check_search", "planned_trials", "search_dry_run"]
