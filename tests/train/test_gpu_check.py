"""bench/gpu_check.py on a CPU: the pack it carries to a GPU machine, and its stages at toy scale (--dry-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO, clean_env, parse_summary, prepare

GPU_CHECK = REPO / "bench" / "gpu_check.py"
REAL_EVAL_TOKENS = 10 * 2**20


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpucheck")
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--pack", "--dry-run", "--pack-dir", str(folder)],
                            env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def pack_cache(pack_dir):
    previous = os.environ.get("SKYFLEET_CACHE")
    os.environ["SKYFLEET_CACHE"] = str(pack_dir / "cache")
    yield pack_dir / "cache"
    if previous is None:
        os.environ.pop("SKYFLEET_CACHE")
    else:
        os.environ["SKYFLEET_CACHE"] = previous


def test_pack_stands_in_for_real_data_at_the_real_evaluation_size(pack_cache):
    assert prepare.dataset_ready("real", 512, 8)
    meta = json.loads((prepare.dataset_dir("real", 512, 8) / "meta.json").read_text())
    assert meta["source"] == "real" and "not FineWeb-Edu" in meta["stand_in"]
    val = prepare.load_split("real", 512, "val", 8)
    assert len(val) == meta["val_tokens"] >= REAL_EVAL_TOKENS + 1
    offline_val = prepare.load_split("offline", 512, "val")
    assert np.array_equal(val[:len(offline_val)], offline_val) and val[0] == meta["bos_id"]
    assert np.array_equal(prepare.load_split("real", 512, "train", 8), prepare.load_split("offline", 512, "train"))
    encoding = prepare.load_tokenizer(prepare.tokenizer_path("real", 512))
    assert encoding.n_vocab == 512


def test_pack_has_a_synthetic_vocabulary_train_py_can_load(pack_cache):
    meta = json.loads((prepare.dataset_dir("offline", 2048) / "meta.json").read_text())
    encoding = prepare.load_tokenizer(prepare.tokenizer_path("offline", 2048))
    lengths = prepare.token_byte_lengths(encoding)
    assert encoding.n_vocab == 2048 and lengths[2047] == 0 and set(lengths[:2047]) == {1, 2}
    train = prepare.load_split("offline", 2048, "train")
    assert len(train) == meta["train_tokens"] and train[0] == meta["bos_id"] == 2047 and train.max() <= 2047
    rows = next(prepare.DocumentPacker(train, 2047, 2, 64, seed=0))
    assert (rows[:, 0] == 2047).all()


def test_dry_run_reports_every_figure_and_writes_them_to_a_file(pack_dir, tmp_path):
    out = tmp_path / "out" / "gpu_check.txt"
    # compile off to stay quick here: the compiled gpu path has its own test (test_train_run.py)
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--dry-run", "--budget", "1", "--pack-dir", str(pack_dir),
                             "--out", str(out)], env=clean_env(COMPILE="0"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = parse_summary("---\n" + out.read_text())
    assert figures == parse_summary("---\n" + result.stdout)  # the file holds what was printed
    assert figures["correctness"] == "ok" and figures["timed"] == "ok" and figures["device"] == "cpu"
    assert figures["correctness_compiled_vs_eager_max_rel_diff"] == 0  # both eager here: COMPILE=0 is set
    for key in ("tokens_per_sec", "steps_per_sec", "peak_memory_mb", "step_ms_p50", "step_ms_p95",
                "step_ms_p95_over_p50", "eval_seconds", "probe_batch_16_peak_memory_mb",
                "probe_vocab_2048_peak_memory_mb", "check_seconds"):
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, key
    assert figures["step_ms_p95_over_p50"] == pytest.approx(figures["step_ms_p95"] / figures["step_ms_p50"], abs=1e-3)
    assert figures["mfu_percent"] == "unknown"  # a CPU's peak is never guessed
    assert figures["largest_device_batch_size_run"] == 16 and figures["largest_vocab_size_run"] == 2048
    assert figures["target_peak_memory_le_70gb"] == "pass" and figures["target_mfu_percent_ge_45"] == "FAIL"
    log = out.with_suffix(".log").read_text()
    assert log.count("==== ") == 5 and "==== timed: PRESET=gpu" in log  # correctness x2, timed, two probes


def test_without_a_pack_it_says_how_to_make_one(tmp_path):
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--dry-run", "--pack-dir", str(tmp_path / "none")],
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "python bench/gpu_check.py --pack --dry-run" in result.stderr
