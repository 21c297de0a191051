"""Offline data and tokenizer: round-trip, split, idempotence, concurrency, and the batch loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import TRAIN_DIR, clean_env, prepare

PREPARE_PY = TRAIN_DIR / "prepare.py"


def test_tokenizer_round_trips_text_and_has_one_bos(offline_cache):
    encoding = prepare.load_tokenizer(prepare.tokenizer_path("offline", 512))
    assert encoding.n_vocab == 512
    assert encoding.encode_single_token(prepare.BOS_TOKEN) == 511
    for text in ["In the beginning God created the heavens and the earth.",
                 "Numbers 1234567 and symbols: {}[]<>~|\\ \t\n  trailing  ",
                 "Unicode the corpus never saw: café, naïve, 東京, emoji 🙂", ""]:
        ids = encoding.encode_ordinary(text)
        assert encoding.decode(ids) == text
        assert max(ids, default=0) < 511  # ordinary text never produces BOS
    lengths = prepare.token_byte_lengths(encoding)
    assert lengths[511] == 0 and lengths[:256].min() >= 1
    text = "God said, \"Let there be light,\" and there was light."
    assert sum(lengths[i] for i in encoding.encode_ordinary(text)) == len(text.encode())


def test_offline_split_is_deterministic_and_disjoint():
    train, val = prepare.offline_documents("train"), prepare.offline_documents("val")
    assert len(train) + len(val) == 1189  # chapters of the World English Bible
    assert len(val) == len(range(10, 1189, 20))
    assert not set(val) & set(train)
    assert val == prepare.offline_documents("val")
    assert train[0].startswith("In the beginning God created")


def test_prepared_splits_start_with_bos_and_meta_is_complete(offline_cache):
    meta = json.loads((prepare.dataset_dir("offline", 512) / "meta.json").read_text())
    assert meta["source"] == "offline" and meta["vocab_size"] == 512 and meta["bos_id"] == 511
    assert len(meta["data_sha"]) == 16
    for split in ("train", "val"):
        tokens = prepare.load_split("offline", 512, split)
        assert len(tokens) == meta[f"{split}_tokens"] and tokens[0] == 511 and tokens.max() <= 511
    assert meta["val_tokens"] > 2 * 16_384  # enough for the fixed evaluation with room to spare


def _run_prepare(cache, *args):
    env = {**os.environ, "SKYFLEET_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(PREPARE_PY), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_second_prepare_does_no_work(tmp_path):
    first = _run_prepare(tmp_path, "--source", "offline", "--vocab-sizes", "300")
    assert first.returncode == 0, first.stderr
    assert "prepared in" in first.stderr
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    second = _run_prepare(tmp_path, "--source", "offline", "--vocab-sizes", "300")
    assert second.returncode == 0, second.stderr
    assert "cached" in second.stderr and "prepared in" not in second.stderr
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert not list(tmp_path.rglob("*.tmp*"))


def test_concurrent_prepares_agree(tmp_path):
    env = {**os.environ, "SKYFLEET_CACHE": str(tmp_path)}
    command = [sys.executable, str(PREPARE_PY), "--source", "offline", "--vocab-sizes", "280"]
    procs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert sum("prepared in" in out for out in outputs) == 1  # the other one waited and found it done
    shas = {line.rsplit("data_sha ", 1)[1].strip(" )") for out in outputs for line in out.splitlines()
            if "data_sha" in line}
    assert len(shas) == 1


def test_cli_rejects_bad_arguments(tmp_path):
    result = _run_prepare(tmp_path, "--source", "offline", "--vocab-sizes", "100")
    assert result.returncode == 2 and "must be within 257..65536" in result.stderr
    result = _run_prepare(tmp_path, "--source", "nope")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_default_source_follows_the_knobs(tmp_path):
    env = clean_env(SKYFLEET_CACHE=str(tmp_path), PRESET="tiny", VOCAB_SIZE="320")
    result = subprocess.run([sys.executable, str(PREPARE_PY)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "offline" / "v320" / "meta.json").exists()


def test_batches_depend_only_on_the_seed():
    tokens = np.arange(10_000, dtype=np.uint16)
    first = [next(prepare.BatchSampler(tokens, 4, 16, seed=1)) for _ in range(1)][0]
    again = next(prepare.BatchSampler(tokens, 4, 16, seed=1))
    other = next(prepare.BatchSampler(tokens, 4, 16, seed=2))
    assert first.shape == (4, 17) and first.dtype == np.int64
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.all(np.diff(first, axis=1) == 1)  # contiguous windows: targets are inputs shifted by one


def test_batch_sampler_rejects_a_too_short_split():
    with pytest.raises(ValueError, match="too few for MAX_SEQ_LEN=64"):
        prepare.BatchSampler(np.arange(50, dtype=np.uint16), 2, 64, seed=0)
