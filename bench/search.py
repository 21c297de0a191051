"""What adaptive search buys on a real objective: grid vs random vs TPE (with and without early stopping).

Each search tunes three learning rates of the real workload (`train/train.py`, tiny preset, offline data,
the real val_bpb) at the same number of trials, on the local backend, one search at a time so each has
the whole fleet; the whole comparison is repeated with other sampler seeds (the runs' timing differs too),
so a difference can be judged against the spread between repeats. For each strategy it prints:

- `<strategy>_best_val_bpb`: the best val_bpb found, mean and standard deviation over the repeats;
- `<strategy>_gpu_seconds_to_target`: GPU-seconds (job start to end, every run counted) until a run came
  within `--target` (0.01) of the best value any run of the benchmark found, mean over the repeats that
  got there, and how many did;
- `<strategy>_gpu_seconds`: all GPU-seconds the search used, and `<strategy>_pruned`: runs stopped early.

The training budget is wall-clock (TIME_BUDGET), as in real use, so a loaded machine trains fewer steps
and scores worse: the load average is printed with the figures.

    python bench/search.py [--trials 12] [--repeats 3] [--budget 2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = {"MATRIX_LR": [0.01, 0.03, 0.09], "EMBEDDING_LR": [0.1, 0.5], "UNEMBEDDING_LR": [0.004, 0.016]}
SPACE = {"MATRIX_LR": (0.005, 0.15), "EMBEDDING_LR": (0.05, 1.0), "UNEMBEDDING_LR": (0.002, 0.03)}
STRATEGIES = ("grid", "random", "tpe", "tpe_early_stop")


def wave_file(strategy: str, repeat: int, trials: int, budget: float) -> str:
    # LOG_EVERY 5: a loss line every few percent of the budget, for early stopping (every strategy alike).
    head = f"name: {strategy.replace('_', '-')}-r{repeat}\nseeds: 1\n"
    head += f"env: {{PRESET: tiny, TIME_BUDGET: {budget}, LOG_EVERY: 5}}\n"
    if strategy == "grid":
        grid = "\n".join(f"  {k}: {v}" for k, v in GRID.items())
        size = 1
        for values in GRID.values():
            size *= len(values)
        assert size == trials, f"the grid has {size} points; run with --trials {size}"
        return head + "grid:\n" + grid + "\n"
    sampler = "random" if strategy == "random" else "tpe"
    space = "\n".join(f"    {k}: {{low: {lo}, high: {hi}, log: true}}" for k, (lo, hi) in SPACE.items())
    text = head + f"search:\n  trials: {trials}\n  sampler: {sampler}\n  seed: {repeat}\n  space:\n{space}\n"
    if strategy == "tpe_early_stop":
        # Before the tiny preset's warmdown (WARMDOWN_RATIO 0.5 starts it at 50%); no baseline entry (it would be a
        # trial more), so each run is compared with the median of the others at the same fraction.
        text += "early_stop: {at: [0.3], margin: 0.15}\n"
    return text


def run_search(fleet, ledger, root: Path, name: str, text: str) -> list[tuple[float, float | None, str]]:
    """Submit one wave, wait for it; (gpu_seconds, val_bpb or None, state) of its runs in finishing order."""
    path = root / f"{name}.yaml"
    path.write_text(text)
    with contextlib.redirect_stdout(io.StringIO()):  # the wave id and the leaderboard: not this benchmark's output
        assert fleet(["wave", str(path), "-q"]) == 0, f"{name}: submission failed"
        wave = ledger.waves()[-1].id
        assert fleet(["wait", wave, "-q"]) == 0, f"{name}: wait failed"
    experiments = sorted(ledger.experiments(wave=wave), key=lambda e: (e.finished_at or 0, e.id))
    results = ledger.results(wave=wave)
    out = []
    for exp in experiments:
        res = results.get(exp.id)
        out.append((res.gpu_seconds or 0.0 if res else 0.0, res.val_bpb if res else None, exp.state.value))
    return out


def seconds_to(runs: list[tuple[float, float | None, str]], target: float) -> float | None:
    spent = 0.0
    for gpu_s, value, _ in runs:
        spent += gpu_s
        if value is not None and value <= target:
            return spent
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="configurations per search (the grid has 12)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the whole comparison")
    parser.add_argument("--budget", type=float, default=2.0, help="TIME_BUDGET of each run, seconds")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.01, help="'reached' = within this of the best known")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fleet-bench-search-"))
    shutil.copytree(REPO / "train", root / "train", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "experiment.yaml", root / "experiment.yaml")
    # Queue depth 1: a freed slot is refilled within one controller poll locally, and each ask knows every result.
    (root / "fleet.yaml").write_text(f"queue_depth: 1\nlocal: {{slots: {args.slots}}}\n")
    os.environ.update(FLEET_ROOT=str(root), FLEET_RUNNER_IDLE_S="30")
    os.environ.pop("FLEET_LOCAL_ACCELERATORS", None)
    os.chdir(root)

    from fleet.cli.main import main as fleet
    from fleet.core.ledger import Ledger

    started, load_before = time.time(), os.getloadavg()[0]
    ledger = Ledger(root / ".fleet" / "ledger.db")
    runs: dict[tuple[str, int], list] = {}
    for repeat in range(args.repeats):
        for strategy in STRATEGIES:
            name = f"{strategy}-r{repeat}"
            print(f"{name}: {args.trials} trials...", file=sys.stderr, flush=True)
            text = wave_file(strategy, repeat, args.trials, args.budget)
            runs[(strategy, repeat)] = run_search(fleet, ledger, root, name, text)
    fleet(["down", "--all", "-y", "-q"])
    wall = time.time() - started
    values = [v for rs in runs.values() for _, v, _ in rs if v is not None]
    best_known = min(values)
    print(f"load_average: {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (on {os.cpu_count()} cores)")
    print(f"wall_seconds: {wall:.0f}")
    print(f"runs: {sum(len(rs) for rs in runs.values())}")
    print(f"trials_per_search: {args.trials}")
    print(f"repeats: {args.repeats}")
    print(f"best_known_val_bpb: {best_known:.4f}")
    for strategy in STRATEGIES:
        mine = [runs[(strategy, r)] for r in range(args.repeats)]
        bests = [min((v for _, v, _ in rs if v is not None), default=float("nan")) for rs in mine]
        spread = statistics.stdev(bests) if len(bests) > 1 else 0.0
        reached = [s for s in (seconds_to(rs, best_known + args.target) for rs in mine) if s is not None]
        to_target = f"{statistics.mean(reached):.0f}" if reached else "never"
        print(f"{strategy}_best_val_bpb: {statistics.mean(bests):.4f} ± {spread:.4f} "
              f"({', '.join(f'{b:.4f}' for b in bests)})")
        print(f"{strategy}_gpu_seconds_to_target: {to_target} (reached in {len(reached)}/{len(mine)})")
        print(f"{strategy}_gpu_seconds: {statistics.mean(sum(g for g, _, _ in rs) for rs in mine):.0f}")
        print(f"{strategy}_pruned: {sum(1 for rs in mine for _, _, s in rs if s == 'pruned')}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
