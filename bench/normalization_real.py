"""Hardware normalization checked on real training: two "accelerators" made real on one machine.

`bench/normalization.py` draws its data from the estimator's own model (log-linear in steps, one
speed factor per accelerator), so it can only check the arithmetic. Here nothing is simulated:

- **Runs**: `train/train.py` with the ``tiny`` preset (offline data, CPU), ``--budget`` seconds of
  training each, several configurations (learning rates, depths, schedules) × seeds.
- **Two speeds**: the reference ("fast") runs freely; the other ("slow") is throttled to a fixed
  share of the wall clock, ``--factor`` (default 0.6), by stopping and continuing its process every
  50 ms (SIGSTOP/SIGCONT). The training budget is wall-clock time, so a slow run trains fewer steps in
  the same budget, as a slower GPU does. Every run gets one CPU thread; ``--workers`` run at once.
- **Ground truth**: each configuration's mean val_bpb on the reference speed over ``--truth-seeds``
  separate seeds (runs that the fleet below never sees).
- **A mixed fleet**: every configuration also runs seeds 0..``--seeds``-1 on *both* speeds; a trial
  picks, per configuration and seed, the run of one speed at random (half and half), as a fleet of two
  kinds of hardware would have run it. The estimator sees only what the ledger would hold
  (accelerator, steps, seconds, val_bpb): it calibrates the speed factor and the steps→metric slope
  from the trial's runs (`fleet.research.normalize`) and ranks configurations by their mean.

Reported over ``--trials`` resampled fleets: the Spearman correlation of the raw and of the normalized
ranking with the truth, their difference with its standard error, and the estimated speed factor
against the one imposed (and against the one measured directly from step counts, which includes the
machine's own noise). ``--save FILE`` keeps the runs as JSON; ``--load FILE`` redoes the analysis
without training.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.research.normalize import RunRecord, calibrate, estimate_slope, normalize, rank  # noqa: E402

REFERENCE, SLOW = "fast", "slow"
PERIOD_S = 0.05
CONFIGS = {  # name -> knob overrides on the tiny preset: different qualities, and different costs per step
    "base": {},
    "lr-low": {"MATRIX_LR": "0.01"},
    "lr-high": {"MATRIX_LR": "0.12"},
    "shallow": {"DEPTH": "1"},
    "deep": {"DEPTH": "4"},
    "short-warmdown": {"WARMDOWN_RATIO": "0.1"},
    "embed-lr-low": {"EMBEDDING_LR": "0.03"},
    "wide-batch": {"TOTAL_BATCH_SIZE": "2048"},
}


@dataclass(frozen=True)
class Run:
    config: str
    seed: int
    speed: str  # "fast" (the reference) or "slow"
    truth: bool  # a ground-truth run (reference speed, seeds the fleet never sees)
    val_bpb: float | None
    num_steps: float | None
    training_seconds: float | None
    wall_seconds: float


def _summary(stdout: str) -> dict[str, str]:
    out, seen = {}, False
    for line in stdout.splitlines():
        if line.strip() == "---":
            seen = True
        elif seen and ": " in line:
            key, value = line.split(": ", 1)
            out[key.strip()] = value.strip()
    return out


def _throttle(proc: subprocess.Popen, share: float, done: threading.Event) -> None:
    """Let the process run ``share`` of each period: a slower machine, made real."""
    on, off = share * PERIOD_S, (1.0 - share) * PERIOD_S
    try:
        while not done.is_set() and proc.poll() is None:
            time.sleep(on)
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(off)
            os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    finally:
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def train_once(config: str, seed: int, speed: str, truth: bool, budget: float, factor: float) -> Run:
    env = {**os.environ, **CONFIGS[config], "PRESET": "tiny", "TIME_BUDGET": str(budget), "SEED": str(seed),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LOG_EVERY": "1000"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "train" / "train.py")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()
    throttler = None
    if speed == SLOW:
        throttler = threading.Thread(target=_throttle, args=(proc, factor, done), daemon=True)
        throttler.start()
    stdout, _ = proc.communicate()
    done.set()
    if throttler is not None:
        throttler.join()
    s = _summary(stdout)

    def num(key: str) -> float | None:
        try:
            return float(s[key])
        except (KeyError, ValueError):
            return None

    if proc.returncode != 0:
        print(f"warning: {config} seed {seed} ({speed}) exited {proc.returncode}: {stdout.strip()[-200:]}",
              file=sys.stderr)
    return Run(config, seed, speed, truth, num("val_bpb"), num("num_steps"), num("training_seconds"),
               time.monotonic() - started)


def train_all(args: argparse.Namespace) -> list[Run]:
    jobs = [(c, 1000 + s, REFERENCE, True) for c in CONFIGS for s in range(args.truth_seeds)]
    jobs += [(c, s, speed, False) for s in range(args.seeds) for c in CONFIGS for speed in (REFERENCE, SLOW)]
    done = [0]
    lock = threading.Lock()

    def run(job: tuple) -> Run:
        result = train_once(*job, args.budget, args.factor)
        with lock:
            done[0] += 1
            print(f"run {done[0]}/{len(jobs)}: {result.config} seed {result.seed} {result.speed}: val_bpb "
                  f"{result.val_bpb} in {result.num_steps} steps ({result.wall_seconds:.0f} s)", file=sys.stderr)
        return result

    with ThreadPoolExecutor(args.workers) as pool:
        return list(pool.map(run, jobs))


@dataclass(frozen=True)
class Trial:
    spearman_raw: float
    spearman_normalized: float
    factor: float | None  # estimated steps/s of "slow" relative to "fast"
    slope: float


def one_trial(rng: np.random.Generator, runs: list[Run], truth: dict[str, float]) -> Trial:
    pool = [r for r in runs if not r.truth and r.val_bpb is not None]
    picked = []
    for config in truth:
        for seed in sorted({r.seed for r in pool if r.config == config}):
            options = [r for r in pool if r.config == config and r.seed == seed]
            picked.append(options[rng.integers(len(options))])
    records = [RunRecord(f"{r.config}.{r.seed}.{r.speed}", r.config, r.speed, r.seed, r.val_bpb, r.num_steps,
                         r.training_seconds) for r in picked]
    calibration = calibrate(records, reference=REFERENCE)
    slope = estimate_slope(records)
    board = {row.config_key: row for row in rank(normalize(records, calibration, slope), by="normalized")}
    keys = sorted(truth)
    true = [truth[k] for k in keys]
    raw = [board[k].raw_mean for k in keys]
    norm = [board[k].normalized_mean if board[k].normalized_mean is not None else board[k].raw_mean for k in keys]
    return Trial(float(spearmanr(raw, true).statistic), float(spearmanr(norm, true).statistic),
                 calibration.factor_for(SLOW).factor, slope.slope)


def analyse(runs: list[Run], args: argparse.Namespace) -> None:
    truth_runs = [r for r in runs if r.truth and r.val_bpb is not None]
    truth = {c: float(np.mean([r.val_bpb for r in truth_runs if r.config == c])) for c in CONFIGS
             if any(r.config == c for r in truth_runs)}
    rates = {}
    for speed in (REFERENCE, SLOW):
        rates[speed] = {c: float(np.median([r.num_steps / r.training_seconds for r in runs
                                              if r.config == c and r.speed == speed and not r.truth
                                              and r.num_steps and r.training_seconds]))
                        for c in CONFIGS}
    measured = float(np.median([rates[SLOW][c] / rates[REFERENCE][c] for c in CONFIGS]))
    rng = np.random.default_rng(args.rng_seed)
    trials = [one_trial(rng, runs, truth) for _ in range(args.trials)]
    raw = np.array([t.spearman_raw for t in trials])
    norm = np.array([t.spearman_normalized for t in trials])
    gain = norm - raw
    factors = np.array([t.factor for t in trials if t.factor is not None])
    steps = {speed: float(np.median([r.num_steps for r in runs if r.speed == speed and r.num_steps]))
             for speed in (REFERENCE, SLOW)}
    print("truth (mean val_bpb on the reference speed): "
          + ", ".join(f"{c}={v:.4f}" for c, v in sorted(truth.items(), key=lambda kv: kv[1])))
    print(f"runs: {len(runs)} ({sum(r.val_bpb is None for r in runs)} failed)")
    print(f"median_steps_fast: {steps[REFERENCE]:.0f}")
    print(f"median_steps_slow: {steps[SLOW]:.0f}")
    print(f"imposed_factor: {args.factor:.3f}")
    print(f"measured_factor: {measured:.3f}")
    print(f"estimated_factor: {np.median(factors):.3f} (middle 90% of trials {np.quantile(factors, 0.05):.3f}"
          f"-{np.quantile(factors, 0.95):.3f})")
    print(f"factor_error_vs_imposed: {np.median(factors) / args.factor - 1:+.3f}")
    print(f"factor_error_vs_measured: {np.median(factors) / measured - 1:+.3f}")
    print(f"slope: {np.median([t.slope for t in trials]):.3f} bpb per e-fold of steps (median over trials)")
    print(f"trials: {len(trials)}")
    print(f"spearman_raw: {raw.mean():.3f}")
    print(f"spearman_normalized: {norm.mean():.3f}")
    print(f"spearman_gain: {gain.mean():+.3f} (standard error {gain.std(ddof=1) / np.sqrt(len(gain)):.3f}; "
          f"normalized higher in {np.mean(gain > 0):.0%} of trials, lower in {np.mean(gain < 0):.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=4.0, help="TIME_BUDGET of each run, seconds (default 4)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration and speed (default 3)")
    parser.add_argument("--truth-seeds", type=int, default=2, help="reference-speed seeds for the truth (default 2)")
    parser.add_argument("--factor", type=float, default=0.6, help="the slow speed's share of the wall clock")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one CPU thread each (default 2)")
    parser.add_argument("--trials", type=int, default=2000, help="resampled mixed fleets (default 2000)")
    parser.add_argument("--rng-seed", type=int, default=20261129)
    parser.add_argument("--save", type=Path, help="write the runs to this JSON file")
    parser.add_argument("--load", type=Path, help="analyse runs saved with --save instead of training")
    args = parser.parse_args()
    started = time.monotonic()
    if args.load:
        runs = [Run(**r) for r in json.loads(args.load.read_text())["runs"]]
    else:
        runs = train_all(args)
        if args.save:
            args.save.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "runs": [asdict(r) for r in runs]}, indent=1))
    analyse(runs, args)
    print(f"wall_seconds: {time.monotonic() - started:.0f}")


if __name__ == "__main__":
    main()
