"""Bits per byte against hand-computed cases, the evaluation windows, the hash and the FLOP table."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from .conftest import TRAIN_DIR, evaluate

VOCAB = 8
# byte length of each token id; id 7 plays BOS (0 bytes, never scored)
TOKEN_BYTES = np.array([1, 2, 3, 1, 4, 2, 1, 0])


def uniform_model(inputs):
    return torch.zeros(*inputs.shape, VOCAB)


def bpb(model_fn, tokens, num_tokens, seq_len=4, batch_size=2):
    return evaluate.evaluate_bpb(model_fn, tokens, TOKEN_BYTES, num_tokens=num_tokens, seq_len=seq_len,
                                 batch_size=batch_size)


def test_uniform_logits_cost_ln_v_nats_per_scored_token():
    tokens = np.array([7, 0, 1, 2, 7, 3, 4, 5, 6, 7, 0, 1])
    num_tokens = 10  # targets are tokens[1:11] = 0 1 2 7 3 4 5 6 7 0
    targets = tokens[1:11]
    scored = targets != 7
    expected = scored.sum() * math.log(VOCAB) / (math.log(2) * TOKEN_BYTES[targets].sum())
    # by hand: 8 scored targets, bytes 1+2+3+1+4+2+1+1 = 15 -> 8 * 3 bits / 15 bytes
    assert expected == pytest.approx(8 * 3 / 15, rel=1e-6)
    assert bpb(uniform_model, tokens, num_tokens) == pytest.approx(expected, rel=1e-6)
    assert evaluate.uniform_bpb(tokens, TOKEN_BYTES, num_tokens) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seq_len, batch_size", [(1, 1), (3, 2), (4, 8), (16, 1)])
def test_result_does_not_depend_on_window_or_batch_size(seq_len, batch_size):
    tokens = np.array([7, 0, 1, 2, 7, 3, 4, 5, 6, 7, 0, 1])
    assert bpb(uniform_model, tokens, 10, seq_len, batch_size) == pytest.approx(8 * 3 / 15, rel=1e-6)


def test_a_model_that_knows_the_next_token_scores_near_zero():
    tokens = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3])

    def next_token_model(inputs):
        return 100.0 * torch.nn.functional.one_hot((inputs + 1) % 7, VOCAB).float()

    assert bpb(next_token_model, tokens, 10) < 1e-6


def test_only_the_first_num_tokens_targets_count():
    tokens = np.array([0, 1, 2, 3, 4])

    def cheap_on_early_tokens(inputs):  # perfect on targets 1 and 2, uniform later
        logits = torch.zeros(*inputs.shape, VOCAB)
        for b in range(inputs.size(0)):
            for t in range(inputs.size(1)):
                if inputs[b, t] < 2:
                    logits[b, t, inputs[b, t] + 1] = 100.0
        return logits

    assert bpb(cheap_on_early_tokens, tokens, 2) < 1e-6
    assert bpb(cheap_on_early_tokens, tokens, 3) == pytest.approx(math.log2(VOCAB) / (2 + 3 + 1), rel=1e-6)


def test_windows_cover_exactly_num_tokens():
    assert evaluate.eval_windows(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert sum(n for _, n in evaluate.eval_windows(16_384, 2048)) == 16_384


def test_too_short_split_is_an_error():
    with pytest.raises(ValueError, match="needs 11"):
        bpb(uniform_model, np.arange(5) % 7, 10)


def test_evaluator_sha_is_the_hash_of_the_file():
    digest = hashlib.sha256((TRAIN_DIR / "evaluate.py").read_bytes()).hexdigest()
    assert evaluate.evaluator_sha() == digest[:16]


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L40", None),  # not in the table: unknown, never guessed
    ("Tesla T4", None),
    ("cpu", None),
])
def test_peak_flops_table(name, flops):
    assert evaluate.peak_flops(name) == flops


def test_fixed_eval_sizes_per_source():
    assert evaluate.EVAL_TOKENS == {"offline": 16_384, "real": 10 * 2**20}
