"""Real runs of train/train.py on CPU: the summary, seeds, the failure path, and experiment.yaml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import (
    REPO,
    TRAIN_PY,
    clean_env,
    evaluate,
    parse_summary,
    prepare,
    run_train,
)

REQUIRED_KEYS = {"val_bpb", "training_seconds", "total_seconds", "peak_memory_mb", "mfu_percent", "total_tokens_M",
                 "num_steps", "steps_per_sec", "tokens_per_sec", "num_params_M", "device", "seed",
                 "evaluator_sha", "data_sha", "preset"}


def first_step_loss(stdout: str) -> float:
    match = re.search(r"^step 00000 loss (\S+)", stdout, re.MULTILINE)
    assert match, stdout
    return float(match.group(1))


def tiny(cache, **knobs) -> dict[str, str]:
    return clean_env(SKYFLEET_CACHE=str(cache), PRESET="tiny", **knobs)


def test_tiny_run_prints_a_parseable_summary(offline_cache):
    result = run_train(env=tiny(offline_cache, TIME_BUDGET="2"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = parse_summary(result.stdout)
    assert REQUIRED_KEYS <= set(summary)
    for key in REQUIRED_KEYS - {"device", "evaluator_sha", "data_sha", "preset", "mfu_percent"}:
        assert isinstance(summary[key], (int, float)), (key, summary[key])
    assert summary["device"] == "cpu" and summary["mfu_percent"] == "unknown"  # CPU peak is never guessed
    assert summary["preset"] == "tiny" and summary["seed"] == 42 and summary["vocab_size"] == 512
    assert summary["evaluator_sha"] == evaluate.evaluator_sha()
    meta = prepare.ensure_prepared("offline", 512, log=lambda m: None)
    assert summary["data_sha"] == meta["data_sha"]
    assert 2.0 <= summary["training_seconds"] < 2.0 + 10  # stops at the first step past the budget
    assert summary["total_seconds"] >= summary["training_seconds"]
    assert summary["num_steps"] >= 2 and summary["peak_memory_mb"] > 0
    assert summary["total_tokens_M"] == pytest.approx(summary["num_steps"] * 1024 / 1e6, abs=1e-3)
    assert 0 < summary["val_bpb"] < summary["val_bpb_uniform"]


def test_same_seed_same_first_loss_different_seed_differs(offline_cache):
    runs = [subprocess.Popen([sys.executable, str(TRAIN_PY)], env=tiny(offline_cache, SEED=seed, MAX_STEPS="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in ("7", "7", "8")]
    losses = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
        assert parse_summary(stdout)["num_steps"] == 1
        losses.append(first_step_loss(stdout))
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


# The gpu preset's defaults (compile on, bf16 autocast and bf16 residual stream, fused AdamW, Muon in bf16,
# the compiled loss chunks, gradient accumulation), shrunk to toy sizes so a CPU runs them in seconds.
GPU_PATH_AT_TOY_SCALE = dict(PRESET="gpu", DEVICE="cpu", DATA="offline", VOCAB_SIZE="512", DEPTH="2",
                             ASPECT_RATIO="32", HEAD_DIM="32", MAX_SEQ_LEN="64", DEVICE_BATCH_SIZE="8",
                             TOTAL_BATCH_SIZE="1024", MAX_STEPS="3", UNTIMED_STEPS="1", LOG_EVERY="1")


def step_losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^step \d+ loss (\S+)", stdout, re.MULTILINE)]


def test_gpu_preset_code_path_runs_at_toy_scale_and_matches_eager(offline_cache):
    runs = {compiled: subprocess.Popen([sys.executable, str(TRAIN_PY)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=clean_env(SKYFLEET_CACHE=str(offline_cache),
                                                                COMPILE=compiled, **GPU_PATH_AT_TOY_SCALE))
            for compiled in ("1", "0")}
    outputs = {}
    for compiled, run in runs.items():
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stdout + stderr
        outputs[compiled] = stdout
    assert "compile=True dtype=bfloat16" in outputs["1"] and "compile=False dtype=bfloat16" in outputs["0"]
    assert "8 x 64 x 2 accumulation" in outputs["1"]
    compiled, eager = step_losses(outputs["1"]), step_losses(outputs["0"])
    assert len(compiled) == len(eager) == 3
    assert compiled == pytest.approx(eager, rel=5e-4)  # same math; bf16 rounding differs between kernels
    assert compiled[-1] < compiled[0]  # and it learns
    summaries = parse_summary(outputs["1"]), parse_summary(outputs["0"])
    assert summaries[0]["preset"] == "gpu" and summaries[0]["device_batch_size"] == 8
    assert summaries[0]["val_bpb"] == pytest.approx(summaries[1]["val_bpb"], rel=5e-4)
    assert summaries[0]["val_bpb"] < summaries[0]["val_bpb_uniform"]


def test_a_run_that_has_to_tokenize_says_so_and_reports_the_seconds(tmp_path):
    result = run_train(env=tiny(tmp_path, VOCAB_SIZE="300", MAX_STEPS="1"))
    assert result.returncode == 0, result.stderr
    assert ("offline data at VOCAB_SIZE=300 was not prepared before the run; tokenizing now, inside the job "
            "(prepare it in setup: python train/prepare.py --source offline --vocab-sizes 300)") in result.stderr
    assert parse_summary(result.stdout)["prepare_seconds"] > 0
    again = run_train(env=tiny(tmp_path, VOCAB_SIZE="300", MAX_STEPS="1"))
    assert "not prepared" not in again.stderr


def test_exploding_loss_ends_the_run_with_training_failed(offline_cache):
    result = run_train(env=tiny(offline_cache, UNEMBEDDING_LR="1e6", MAX_STEPS="5"))
    assert result.returncode == 3
    failed = [line for line in result.stdout.splitlines() if line.startswith("TRAINING_FAILED: ")]
    assert len(failed) == 1 and "loss" in failed[0]
    assert "---" not in result.stdout.splitlines()


@pytest.mark.slow
def test_cpu_preset_learns(offline_cache):
    # a step count, not a time, so that a busy machine cannot make the run learn less
    result = run_train(env=clean_env(SKYFLEET_CACHE=str(offline_cache), PRESET="cpu", MAX_STEPS="15",
                                     TIME_BUDGET="600"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = parse_summary(result.stdout)
    assert summary["preset"] == "cpu" and summary["vocab_size"] == 2048 and summary["num_steps"] == 15
    assert summary["val_bpb"] < 0.8 * summary["val_bpb_uniform"], summary


# ---------------------------------------------------------------------------- experiment.yaml

@pytest.fixture(scope="module")
def task():
    return yaml.safe_load((REPO / "experiment.yaml").read_text())


def test_task_declares_resources_and_envs(task):
    assert task["resources"]["infra"] == "k8s"
    assert task["resources"]["accelerators"] == {"H100": 1, "H200": 1}
    assert task["resources"]["image_id"].startswith("docker:nvcr.io/nvidia/pytorch:")
    assert task["workdir"] == "."
    assert task["envs"]["EXPERIMENT_ID"] == "manual"
    assert all(str(value) != "" for value in task["envs"].values())


def run_script(script: str, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def task_env(cache, **extra) -> dict[str, str]:
    """As the fleet's local backend runs a task: `python` on PATH is this environment's interpreter."""
    env = clean_env(FLEET_BACKEND="local", SKYFLEET_CACHE=str(cache), PRESET="tiny", TIME_BUDGET="1",
                    EXPERIMENT_ID="exp-test", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def result_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("EXPERIMENT_")]
    return "\n".join(lines)


@pytest.mark.slow
def test_task_setup_and_run_locally(task, tmp_path):
    cache = tmp_path / "cache"
    setup = run_script(task["setup"], REPO, task_env(cache))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert (cache / "offline" / "v512" / "meta.json").exists()
    run = run_script(task["run"], REPO, task_env(cache))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = result_line(run.stdout).splitlines()
    assert lines[0] == "EXPERIMENT_STATUS: done"
    assert re.fullmatch(r"EXPERIMENT_RESULT: exp-test val_bpb=[0-9.]+ num_steps=\d+ device=cpu", lines[1])


@pytest.mark.slow
def test_task_setup_prepares_every_vocabulary_a_wave_asks_for(task, tmp_path):
    cache = tmp_path / "cache"
    setup = run_script(task["setup"], REPO, task_env(cache, SKYFLEET_PREPARE_VOCAB_SIZES="300 320"))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert {p.parent.name for p in (cache / "offline").glob("v*/meta.json")} == {"v512", "v300", "v320"}


@pytest.mark.slow
def test_task_runs_from_a_snapshot(task, tmp_path, offline_cache):
    workdir = tmp_path / "work"
    snapshot_train = workdir / "snapshots" / "snap-1" / "train"
    shutil.copytree(REPO / "train", snapshot_train, ignore=shutil.ignore_patterns("__pycache__"))
    # the snapshot's code is what runs: mark it so the output proves it
    path = snapshot_train / "train.py"
    path.write_text(path.read_text().replace('print(f"preset {PRESET}', 'print("SNAPSHOT CODE"); print(f"preset {PRESET}'))
    run = run_script(task["run"], workdir, task_env(offline_cache, FLEET_SNAPSHOT="snap-1"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SNAPSHOT CODE" in run.stdout
    assert "EXPERIMENT_STATUS: done" in run.stdout
    assert "EXPERIMENT_RESULT: exp-test val_bpb=" in run.stdout


def test_a_missing_snapshot_is_a_crash_not_a_run_of_other_code(task, tmp_path, offline_cache):
    # The synced workdir also holds the project's own train/ (from `sky launch`): never run that.
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.py").write_text('print("WRONG CODE")\n')
    run = run_script(task["run"], tmp_path, task_env(offline_cache, FLEET_SNAPSHOT="no-such-snapshot"))
    assert run.returncode == 1
    assert "WRONG CODE" not in run.stdout
    assert result_line(run.stdout) == "EXPERIMENT_STATUS: crash"
    assert "snapshot no-such-snapshot is missing" in run.stderr


def test_task_reports_a_crash_with_the_exit_code(task, offline_cache):
    run = run_script(task["run"], REPO, task_env(offline_cache, DEPTH="-1"))
    assert run.returncode == 2
    assert result_line(run.stdout) == "EXPERIMENT_STATUS: crash"
    assert "knob DEPTH='-1' is below the minimum 1" in run.stdout  # stderr is teed into the log too
