"""`fleet watch`, `fleet plot`, `fleet report` and cost, on ledgers built row by row in the test."""
from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from fleet.cli import observe_cmds
from fleet.cli.context import Context
from fleet.cli.main import main
from fleet.cli.output import Sink
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ExperimentRow, NewExperiment
from fleet.observe.cost import (
    Usage,
    describe_spend,
    dollars_for,
    ledger_usages_by_wave,
    spend,
    spend_by_wave,
)
from fleet.observe.dashboard import render_dashboard, sparkline, utilization
from fleet.observe.leaderboard import Row, build_configs, verdict_status
from fleet.observe.plot import plot_data
from fleet.types import ClusterState, ExperimentState
from fleet.workspace import Workspace

BUDGET = 300.0  # TIME_BUDGET of every experiment: 5 minutes
CLUSTERS = [("h100-1", "H100"), ("h100-2", "H100"), ("h200-1", "H200"), ("h200-2", "H200")]
LRS = ["0.02", "0.03", "0.04", "0.05", "0.06", "0.08"]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _new(config: dict[str, str], seed: int = 0, description: str = "") -> NewExperiment:
    key = json.dumps(config, sort_keys=True)
    label = " ".join(f"{k}={v}" for k, v in config.items() if k != "TIME_BUDGET")
    return NewExperiment(config, key, seed, description or label, label)


def _bpb(lr: str, accelerator: str, rng: random.Random) -> float:
    # The optimum is at 0.04; an H200 takes ~30% more steps in the same budget, so scores lower.
    return 1.0 + 40 * (float(lr) - 0.04) ** 2 - (0.012 if accelerator == "H200" else 0.0) + rng.gauss(0, 0.002)


def _run(ledger: Ledger, clock: Clock, exp_id: str, cluster: str, accelerator: str, start: float,
         val_bpb: float | None, state: ExperimentState = ExperimentState.DONE, reason: str = "") -> None:
    clock.t = start - 20  # queued 20 s before it started: queue time must not count
    attempt = ledger.start_attempt(exp_id, cluster, accelerator, lambda n: f"/tmp/{exp_id}.a{n}.log")
    end = start + BUDGET + 30
    ledger.update_attempt(attempt.id, job_id=attempt.id, state="succeeded", started_at=start, ended_at=end)
    clock.t = end
    steps = 1300.0 if accelerator == "H200" else 1000.0
    ledger.record_result(exp_id, attempt.id, state, outcome=state.value, val_bpb=val_bpb, reason=reason,
                         metrics={"num_steps": steps, "training_seconds": BUDGET}, accelerator=accelerator,
                         gpu_seconds=end - start)


def build_ledger(root: Path, now: float) -> Ledger:
    """An hour of a four-GPU fleet: a 30-run screen (2 crashes, 2 running, 1 queued, 1 held) and a
    promote wave whose first candidate wins on 3 paired seeds."""
    clock = Clock(now - 3600)
    ledger = Ledger(root / ".fleet" / "ledger.db", clock=clock)
    ledger.set_meta("backend", "local")
    for name, acc in CLUSTERS:
        ledger.upsert_cluster(name, "local", acc, ClusterState.UP)
    ledger.upsert_cluster("old-1", "local", "H100", ClusterState.DOWN)
    configs = [{"MATRIX_LR": lr, "TIME_BUDGET": "300"} for lr in LRS]
    _, exps = ledger.add_wave("screen", "screen", {"default_budget": BUDGET}, "snap1",
                              [_new(c, seed) for seed in range(5) for c in configs], max_gpu_hours=3.0)
    rng = random.Random(7)
    t0 = now - 3500
    for i, exp in enumerate(exps[:24]):
        name, acc = CLUSTERS[i % 4]
        start = t0 + (i // 4) * 360
        if i in (9, 17):
            _run(ledger, clock, exp.id, name, acc, start, None, ExperimentState.CRASH,
                 "RuntimeError: CUDA out of memory" if i == 9 else "val_bpb is nan")
        else:
            _run(ledger, clock, exp.id, name, acc, start, _bpb(exp.config["MATRIX_LR"], acc, rng))
    clock.t = now - 120
    for exp, (name, acc) in zip(exps[24:26], CLUSTERS[:2]):  # running for 2 minutes
        attempt = ledger.start_attempt(exp.id, name, acc, lambda n: f"/tmp/x.a{n}.log")
        ledger.update_attempt(attempt.id, job_id=attempt.id, state="running", started_at=now - 120)
        ledger.set_state(exp.id, ExperimentState.RUNNING)
    ledger.start_attempt(exps[26].id, "h100-1", "H100", lambda n: f"/tmp/q.a{n}.log")  # queued behind it
    ledger.set_state(exps[27].id, ExperimentState.HELD, "would exceed max_gpu_hours of wave screen (3 GPU-hours)")

    base, good, same = ({"MATRIX_LR": "0.04"}, {"MATRIX_LR": "0.04", "WARMUP": "0.1"},
                        {"MATRIX_LR": "0.04", "WARMUP": "0.0"})
    spec = {"baseline": {"config": base, "config_key": json.dumps(base, sort_keys=True), "source": "test"},
            "candidates": [{"label": "WARMUP=0.1", "config": good, "config_key": json.dumps(good, sort_keys=True)},
                           {"label": "WARMUP=0.0", "config": same, "config_key": json.dumps(same, sort_keys=True)}]}
    clock.t = now - 1500
    plan = [_new(c, seed, d) for seed in range(3) for c, d in ((base, f"baseline seed {seed}"), (good, ""), (same, ""))]
    _, promoted = ledger.add_wave("screen-promote", "validate", spec, "snap1", plan, kind="promote", parent="screen")
    offsets = {0: 0.0, 1: -0.02, 2: 0.0005}  # candidate 1 is 0.02 better on every seed
    for i, exp in enumerate(promoted):
        name, acc = CLUSTERS[2 + i % 2]
        noise = (0.003, -0.002, 0.001)[exp.seed]
        _run(ledger, clock, exp.id, name, acc, now - 1400 + (i // 2) * 120, 0.99 + noise + offsets[i % 3])
    clock.t = now
    return ledger


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A workspace whose ledger was built row by row; `now` is the time the ledger describes."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "fleet.yaml").write_text("max_gpu_hours: 10\n")
    monkeypatch.setenv("FLEET_ROOT", str(root))
    monkeypatch.delenv("FLEET_BACKEND", raising=False)
    monkeypatch.delenv("FLEET_LOCAL_ACCELERATORS", raising=False)
    now = float(int(time.time()))
    build_ledger(root, now).close()
    return root, now


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- watch -----------------------------------------------------------------------------------------
def test_dashboard_has_every_section(project):
    root, now = project
    ctx = Context(Workspace(root), Sink("human"))
    snap = observe_cmds.collect_snapshot(ctx, now=now)
    console = Console(record=True, width=140, file=io.StringIO(), force_terminal=False)
    console.print(render_dashboard(snap))
    text = console.export_text()
    for section in ("skyfleet · backend local", "clusters", "waves", "leaderboard top 10", "recent crashes",
                    "GPU utilization", "spend"):
        assert section in text, section
    assert "h100-1" in text and "h200-2" in text and "old-1" not in text  # torn-down clusters are not shown
    # running for 2 minutes; expected 5:30: its 5-minute budget is training time only, and the finished
    # runs took 30 s more each (start-up, evaluation), which the elapsed time counts too
    assert "2:00 / 5:30" in text and "elapsed / expected" in text
    assert "screen-promote" in text and "24/30" in text  # wave progress
    assert "normalized" in text and "MATRIX_LR=0.04" in text
    assert "CUDA out of memory" in text and "val_bpb is nan" in text
    assert "of a 10 GPU-hour cap" in text and "$" in text
    assert "1 experiment is held by a budget cap" in text
    assert snap.leaderboard[0].rank == 1
    # 33 finished runs of 330 s plus 2 running for 120 s, over 4 GPUs up for the whole hour
    assert snap.utilization.fraction == pytest.approx((33 * 330 + 2 * 120) / (4 * 3600))


def test_watch_once_on_an_empty_workspace_never_imports_skypilot(tmp_path):
    code = ("import sys; from fleet.cli.main import main\n"
            "rc = main(['watch', '--once'])\n"
            "assert not [m for m in sys.modules if m == 'sky' or m.startswith('sky.')], 'imported sky'\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"FLEET_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "waves: none yet" in proc.stdout and "spend 0.00 GPU-hours" in proc.stdout


def test_watch_refreshes_until_ctrl_c(project, capsys, monkeypatch):
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(observe_cmds, "_sleep", sleep)
    code, out, _ = run_cli(capsys, "watch", "--interval", "5")
    assert code == 0 and sleeps == [5.0, 5.0]
    assert out.count("recent crashes") == 2  # not a TTY: a plain render per interval


def test_watch_json_is_one_snapshot(project, capsys):
    code, out, _ = run_cli(capsys, "watch", "--json")
    snap = json.loads(out)
    assert code == 0 and {c["name"] for c in snap["clusters"]} == {n for n, _ in CLUSTERS}
    assert snap["cost"]["cap_gpu_hours"] == 10


def test_utilization_arithmetic():
    now = 3600.0
    # one GPU up all hour, busy for the first half
    u = utilization([(0.0, 1800.0)], [(0.0, now)], now)
    assert u.fraction == pytest.approx(0.5)
    assert u.buckets == (1.0,) * 6 + (0.0,) * 6
    # a GPU brought up 10 minutes ago and busy since: fully used, nothing known before it existed
    u = utilization([(3000.0, now)], [(3000.0, now)], now)
    assert u.fraction == 1.0 and u.buckets[:10] == (None,) * 10 and u.buckets[10:] == (1.0, 1.0)
    # two GPUs, one busy; jobs that ended before the window do not count
    u = utilization([(-500.0, -100.0), (0.0, now)], [(-1000.0, now), (-1000.0, now)], now)
    assert u.fraction == pytest.approx(0.5)
    assert utilization([], [], now).fraction is None
    assert sparkline([0.0, 0.5, 1.0, None]) == " ▄█·"


# --- cost ------------------------------------------------------------------------------------------
def test_cost_arithmetic():
    prices = {"H100": 2.25, "H200": 3.15}
    usages = [Usage("H100", 3600), Usage("H100", 1800), Usage("H200", 7200), Usage("tpu", 3600), Usage("H100", -5)]
    s = spend(usages, prices)
    assert s["gpu_hours"] == pytest.approx(4.5)
    assert s["dollars"] == pytest.approx(1.5 * 2.25 + 2 * 3.15)
    assert s["by_accelerator"]["H200"] == {"gpu_hours": 2.0, "dollars": pytest.approx(6.3), "price_per_hour": 3.15}
    assert s["unpriced"] == ["tpu"]
    assert dollars_for("H200", 1800, prices) == pytest.approx(1.575)
    assert dollars_for("tpu", 1800, prices) is None and dollars_for("H100", None, prices) is None
    per_wave = spend_by_wave({"a": usages[:2], "b": []}, prices)
    assert per_wave["a"]["dollars"] == pytest.approx(1.5 * 2.25) and per_wave["b"]["gpu_hours"] == 0
    line = describe_spend({**s, "cap_gpu_hours": 9.0})
    assert "4.50 GPU-hours" in line and "of a 9 GPU-hour cap (50% used)" in line and "no price for tpu" in line


def test_cost_per_wave_from_the_ledger(project):
    root, now = project
    ledger = Ledger(root / ".fleet" / "ledger.db")
    by_wave = ledger_usages_by_wave(ledger)  # summed per wave and accelerator
    # 24 screen runs on 2 H100s and 2 H200s, 9 promote runs on the H200s; each counted start→end
    # (BUDGET + 30 s), not submit→end
    assert sorted(by_wave["screen"], key=lambda u: u.accelerator) == [Usage("H100", 12 * (BUDGET + 30)), Usage("H200", 12 * (BUDGET + 30))]
    assert by_wave["screen-promote"] == [Usage("H200", 9 * (BUDGET + 30))]
    s = spend(by_wave["screen"], {"H100": 2.25, "H200": 3.15})
    assert s["dollars"] == pytest.approx(12 * 330 / 3600 * 2.25 + 12 * 330 / 3600 * 3.15)


def test_results_show_cost(project, capsys):
    code, out, _ = run_cli(capsys, "results", "--json")
    payload = json.loads(out)
    row = next(r for r in payload["rows"] if r["accelerator"] == "H200" and r["state"] == "done")
    assert row["dollars"] == pytest.approx(330 / 3600 * 3.15)
    assert payload["cost"]["gpu_hours"] == pytest.approx(33 * 330 / 3600)
    code, out, _ = run_cli(capsys, "results", "--wave", "screen-promote", "--limit", "3")
    assert code == 0 and f"spend of screen-promote: {9 * 330 / 3600:.2f} GPU-hours" in out


# --- plot ------------------------------------------------------------------------------------------
def test_plot_is_a_png_of_sensible_size(project, capsys, tmp_path):
    out = tmp_path / "progress.png"
    code, _, err = run_cli(capsys, "plot", "-o", out)
    assert code == 0, err
    width, height = png_size(out)
    assert 800 <= width <= 2000 and 400 <= height <= 1200
    assert out.stat().st_size > 20_000  # points and lines, not an empty canvas
    for flags in (["--normalized"], ["--x", "time"], ["--wave", "screen-promote"]):
        code, _, err = run_cli(capsys, "plot", "-o", tmp_path / "other.png", *flags)
        assert code == 0, (flags, err)
    code, _, err = run_cli(capsys, "plot", "--wave", "nope")
    assert code == 2 and "nope" in err


def test_plot_data(project):
    root, _ = project
    ledger = Ledger(root / ".fleet" / "ledger.db")
    ctx = Context(Workspace(root), Sink("human"))
    data = observe_cmds.build_plot(ctx, None, False, "order")
    assert len(data.points) == 31 and len(data.crashes) == 2
    assert [x for x, _ in data.crashes] == [10.0, 18.0]  # crashes keep their place in the order
    # the running best is the best configuration by its mean so far, not the luckiest single run
    exps = {e.id: e for e in ledger.experiments()}
    by_config: dict = {}
    for p in data.points:
        by_config.setdefault((exps[p.experiment].code, exps[p.experiment].config_key), []).append(p.y)
    means = {k: sum(v) / len(v) for k, v in by_config.items()}
    leader = min(means, key=means.get)
    assert data.best[-1][1] == pytest.approx(means[leader])
    assert data.best[-1][2].endswith(f"(n={len(by_config[leader])})")
    assert min(p.y for p in data.points) < data.best[-1][1]  # the single best run is luckier than any mean
    assert sum(p.promoted for p in data.points) == 9
    assert {p.label for p in data.points if p.verdict == "keep"} == {"MATRIX_LR=0.04 WARMUP=0.1"}
    timed = plot_data(ledger.experiments(), ledger.results(), x="time", origin=0.0)
    assert all(p.x > 0 for p in timed.points) and timed.xlabel.startswith("minutes")


def test_plot_and_report_without_matplotlib(project, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # `import matplotlib` now raises ImportError
            "from fleet.cli.main import main\n"
            "print('plot', main(['plot', '-o', 'p.png']))\n"
            "print('report', main(['report', '-o', 'r.md']))\n")
    root, _ = project
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"FLEET_ROOT": str(root), "PATH": "/usr/bin:/bin"})
    assert "plot 1" in proc.stdout and "report 0" in proc.stdout, proc.stderr
    assert "pip install 'skyfleet[plot]'" in proc.stderr
    assert not (tmp_path / "p.png").exists()
    assert "No plot: plotting needs matplotlib" in (tmp_path / "r.md").read_text()


def test_a_cancelled_wave_is_not_shown_as_complete_and_backfill_is_marked(project, capsys):
    root, now = project
    ledger = Ledger(root / ".fleet" / "ledger.db")
    _, exps = ledger.add_wave("dropped", "screen", {}, "snap1", [_new({"MATRIX_LR": lr}) for lr in LRS[:3]])
    for exp in exps:
        ledger.set_state(exp.id, ExperimentState.CANCELLED, "cancelled by user")
    ledger.add_wave("backfill-x", "validate", {}, "snap1", [_new({"MATRIX_LR": "0.04"})], backfill=True)
    ctx = Context(Workspace(root), Sink("human"))
    console = Console(record=True, width=160, file=io.StringIO(), force_terminal=False)
    console.print(render_dashboard(observe_cmds.collect_snapshot(ctx, now=now)))
    text = console.export_text()
    line = next(x for x in text.splitlines() if "dropped" in x)
    assert "0/3 cancelled" in line and "3/3" not in line
    assert [c.strip() for c in next(x for x in text.splitlines() if "backfill-x" in x).split("│")][2] == "backfill"
    code, out, _ = run_cli(capsys, "status")
    row = next(x for x in out.splitlines() if "dropped" in x)
    assert code == 0 and "0/3" in row and "backfill-x [backfill]" in out


def test_idle_gpu_hours_arithmetic():
    from fleet.observe.cost import idle_gpu_hours

    # one cluster up for an hour, busy for 20 min in two jobs that overlap by 5 min: idle 45 min
    assert idle_gpu_hours({"a": (0.0, 3600.0)}, [("a", 0.0, 600.0), ("a", 300.0, 900.0)]) == pytest.approx(0.75)
    # jobs outside the cluster's life, or on clusters not listed, do not count; two clusters add up
    assert idle_gpu_hours({"a": (0.0, 3600.0), "b": (1800.0, 3600.0)},
                          [("a", -100.0, 0.0), ("c", 0.0, 3600.0), ("b", 1800.0, 3600.0)]) == pytest.approx(1.0)


def test_plot_labels_do_not_overlap():
    from fleet.observe.plot import Box, place_labels

    # five labels on one spot, one point under it: after placement no two overlap, none covers the point
    boxes = [Box(0, 0, 100, 10)] * 5
    point = Box(40, -2, 52, 8)
    shifts = place_labels(boxes, [point], Box(-1000, -1000, 1000, 1000))
    placed = [b.shifted(dy) for b, dy in zip(boxes, shifts)]
    assert not any(a.overlaps(b) for i, a in enumerate(placed) for b in placed[i + 1:])
    assert not any(b.overlaps(point) for b in placed)
    assert shifts == sorted(shifts, key=abs)  # each as near its place as the ones before allow
    # a label that fits where it is stays; one that would leave the axes moves inside them
    assert place_labels([Box(0, 0, 10, 10)]) == [0.0]
    assert place_labels([Box(0, 95, 10, 105)], bounds=Box(0, 0, 100, 100)) == [-5.0]


# --- report ----------------------------------------------------------------------------------------
def test_report_has_every_section(project, capsys, tmp_path):
    out = tmp_path / "share" / "report.md"
    code, _, err = run_cli(capsys, "report", "-o", out)
    assert code == 0, err
    text = out.read_text()
    for section in ("# skyfleet report", "## Waves", "## Best configurations", "## Verdicts", "## Adopted changes",
                    "## Ablations", "## Progress", "## Spend"):
        assert section in text, section
    assert "Nothing adopted yet" in text and "No ablation yet" in text
    assert "GPUs stood idle for" in text and "Backfill (on" in text
    assert "| screen | grid | screen | 30 | 24/30 (80%) |" in text
    assert "| screen-promote | WARMUP=0.1 | **keep** |" in text
    assert "![val_bpb of every experiment and the best configuration's mean](report.png)" in text
    assert png_size(out.with_suffix(".png"))[0] > 800
    assert "| H200 | 3.15 |" in text and "Budget cap: 10 GPU-hours" in text
    code, _, _ = run_cli(capsys, "report", "-o", tmp_path / "one.md", "--wave", "screen")
    one = (tmp_path / "one.md").read_text()
    assert code == 0 and "screen-promote |" not in one.split("## Best")[0] and "wave `screen`" in one


# --- the best is a configuration, and results.tsv says verdicts --------------------------------------------
def _row(exp_id: str, key: str, value: float | None, wave: str = "w", state: str = "done") -> Row:
    return Row(None, exp_id, wave, key, key, 0, state, value, None, 100.0, "H100", None, None, None, "")


def test_the_best_is_the_configuration_with_the_best_mean_pooled_across_waves():
    rows = [_row("w-1", "lucky", 0.90), _row("w-2", "lucky", 1.10),  # one lucky seed, one bad: mean 1.00
            _row("w-3", "steady", 0.96), _row("v-1", "steady", 0.97, wave="v"),  # two waves, one configuration
            _row("w-4", "crashed", None, state="crash")]
    configs = build_configs(rows, {r.experiment: "code1" for r in rows})
    assert [(c.config_key, c.n, c.rank) for c in configs] == [("steady", 2, 1), ("lucky", 2, 2)]
    assert configs[0].val_bpb == pytest.approx(0.965) and configs[0].waves == ("w", "v")
    other_code = build_configs(rows, {"v-1": "code2"})  # the same knobs on other code: another configuration
    assert sorted(c.n for c in other_code) == [1, 1, 2]


def test_results_tsv_status_is_the_verdict_never_a_running_best():
    def exp(exp_id: str, key: str, state: ExperimentState = ExperimentState.DONE) -> ExperimentRow:
        return ExperimentRow(exp_id, "w", 1, {}, key, 0, "", key, "code1", "screen", state, 1, "", 0.0, 0.0, 1.0)

    runs = [exp("a", "kept"), exp("b", "dropped"), exp("c", "base"), exp("d", "new"), exp("e", "unsure"),
            exp("f", "kept", ExperimentState.CRASH), exp("g", "new", ExperimentState.PENDING), exp("h", "open")]
    verdicts = {("code1", "kept"): "keep", ("code1", "dropped"): "discard", ("code1", "unsure"): "inconclusive",
                ("code1", "open"): "need_more"}
    status = verdict_status(runs, verdicts, {("code1", "base")})
    assert status == {"a": "keep", "b": "discard", "c": "baseline", "d": "screen", "e": "inconclusive",
                      "f": "crash", "h": "validating"}


def test_results_tsv_and_status_on_a_project(project, capsys):
    code, out, err = run_cli(capsys, "results", "--format", "tsv")
    assert code == 0, err
    statuses = {line.split("\t")[3] for line in out.splitlines()[1:]}
    assert statuses <= {"keep", "discard", "inconclusive", "validating", "screen", "baseline", "crash"}
    assert "keep" in statuses and "screen" in statuses and "crash" in statuses
    code, out, err = run_cli(capsys, "status", "--json")
    best = json.loads(out)["best"]
    assert best["n"] >= 1 and len(best["experiments"]) == best["n"] and best["experiment"] == best["experiments"][0]
