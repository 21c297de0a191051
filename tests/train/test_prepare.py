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


BOS = 99


def documents_stream(lengths):
    """A token stream like prepare.py writes: each document is BOS then its tokens; document d's tokens
    are 1000 * (d + 1) + position, so every token says which document and which position it is."""
    pieces = []
    for d, length in enumerate(lengths):
        pieces += [BOS] + [1000 * (d + 1) + i for i in range(length - 1)]
    return np.array(pieces, dtype=np.int64)


def split_row(row):
    """A packed row as (document, first position, length) pieces, checking each piece is contiguous."""
    pieces, i = [], 0
    while i < len(row):
        assert row[i] == BOS, f"piece at {i} does not start at a document's BOS: {row}"
        j = i + 1
        while j < len(row) and row[j] != BOS:
            j += 1
        body = row[i + 1:j]
        doc = int(body[0]) // 1000 - 1 if len(body) else None  # None: a document cut to its BOS alone
        if doc is not None:
            assert np.array_equal(body, 1000 * (doc + 1) + np.arange(len(body))), f"not one document's start: {body}"
        pieces.append((doc, j - i))
        i = j
    return pieces


def test_packed_rows_start_at_bos_and_hold_whole_documents_but_the_last():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, size=300).tolist()
    packer = prepare.DocumentPacker(documents_stream(lengths), BOS, batch_size=8, seq_len=31, seed=3, pool_size=50)
    for _ in range(20):
        rows = next(packer)
        assert rows.shape == (8, 32) and rows.dtype == np.int64
        for row in rows:
            pieces = split_row(row)
            assert sum(n for _, n in pieces) == 32  # no padding
            for doc, n in pieces[:-1]:  # every piece but the last is a whole document
                assert n == lengths[doc]
            doc, n = pieces[-1]
            assert doc is None or n <= lengths[doc]


def test_packing_is_best_fit_and_cuts_a_long_document_to_one_row():
    # A 33-token row: the 30-token document, then the longest that fits the 3 left: the 3-token one,
    # where a packer taking documents in order would cut one.
    packer = prepare.DocumentPacker(documents_stream([20, 13, 30, 3]), BOS, 1, 32, seed=0, pool_size=4)
    assert [n for _, n in split_row(next(packer)[0])] == [30, 3]
    packer = prepare.DocumentPacker(documents_stream([40, 5]), BOS, 1, 32, seed=0, pool_size=2)
    assert split_row(next(packer)[0]) == [(0, 33)]  # the first 33 tokens of the 40-token document


def test_packing_depends_only_on_the_seed_and_visits_every_document():
    lengths = list(range(2, 42))
    stream = documents_stream(lengths)
    first = next(prepare.DocumentPacker(stream, BOS, 4, 16, seed=1, pool_size=8))
    again = next(prepare.DocumentPacker(stream, BOS, 4, 16, seed=1, pool_size=8))
    other = next(prepare.DocumentPacker(stream, BOS, 4, 16, seed=2, pool_size=8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    packer = prepare.DocumentPacker(stream, BOS, 4, 16, seed=1, pool_size=8)
    seen = {doc for _ in range(30) for row in next(packer) for doc, _ in split_row(row)}
    assert seen - {None} == set(range(len(lengths)))


def test_split_long_documents_continue_at_row_starts_and_lose_no_token():
    lengths = [100, 5, 7, 40]
    stream = documents_stream(lengths)
    packer = prepare.DocumentPacker(stream, BOS, batch_size=4, seq_len=15, seed=0, split_long=True, pool_size=4)
    seen = set()
    for _ in range(10):
        for row in next(packer):
            head = 0
            while head < len(row) and row[head] != BOS:  # a continuation: one document's consecutive tokens
                head += 1
            if head:
                doc, first = int(row[0]) // 1000 - 1, int(row[0]) % 1000
                assert np.array_equal(row[:head], 1000 * (doc + 1) + first + np.arange(head)), row
                seen |= {int(t) for t in row[:head]}
            split_row(row[head:])
            seen |= {int(t) for t in row[head:] if t != BOS}
    assert {1000 * (d + 1) + i for d, n in enumerate(lengths) for i in range(n - 1)} <= seen  # no token lost
    cropped = prepare.DocumentPacker(stream, BOS, batch_size=4, seq_len=15, seed=0, pool_size=4)
    tokens = {int(t) for _ in range(10) for t in next(cropped).ravel()}
    assert max(t for t in tokens if 1000 <= t < 2000) == 1000 + 14  # crop: only its first row


def test_fill_writes_into_the_callers_buffer():
    packer = prepare.DocumentPacker(documents_stream([5] * 50), BOS, 2, 9, seed=0)
    buffer = np.zeros((2, 10), dtype=np.int64)
    assert packer.fill(buffer) is buffer and (buffer[:, 0] == BOS).all()


def test_packer_rejects_a_split_without_bos_or_too_short():
    with pytest.raises(ValueError, match="does not start with BOS"):
        prepare.DocumentPacker(np.arange(500, dtype=np.uint16), BOS, 2, 64, seed=0)
    with pytest.raises(ValueError, match="too few for MAX_SEQ_LEN=64"):
        prepare.DocumentPacker(documents_stream([10, 10]), BOS, 2, 64, seed=0)
