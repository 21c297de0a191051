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


def nats_of(logits_fn):
    """The evaluator's loss_fn from a function of inputs to logits: the cross-entropy of each target."""
    def loss_fn(inputs, targets):
        logits = logits_fn(inputs)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none"
                                                 ).view(targets.shape)
    return loss_fn


def bpb(model_fn, tokens, num_tokens, seq_len=4, batch_size=2):
    return evaluate.evaluate_bpb(nats_of(model_fn), tokens, TOKEN_BYTES, num_tokens=num_tokens, seq_len=seq_len,
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


def test_a_loss_fn_that_does_not_return_one_value_per_target_is_an_error():
    with pytest.raises(ValueError, match=r"expected one value per target, \(2, 4\)"):
        evaluate.evaluate_bpb(lambda inputs, targets: uniform_model(inputs), np.arange(12) % 7, TOKEN_BYTES,
                              num_tokens=8, seq_len=4, batch_size=2)


def test_too_short_split_is_an_error():
    with pytest.raises(ValueError, match="needs 11"):
        bpb(uniform_model, np.arange(5) % 7, 10)


def test_evaluator_sha_is_the_hash_of_the_file():
    digest = hashlib.sha256((TRAIN_DIR / "evaluate.py").read_bytes()).hexdigest()
    assert evaluate.evaluator_sha() == digest[:16]


# Names as `torch.cuda.get_device_name()` prints them; dense bf16 TFLOPS = half the datasheets' sparse figure.
@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.5),  # SXM: 1,979 sparse
    ("NVIDIA H100 PCIe", 756.5),  # 1,513 sparse
    ("NVIDIA H100 NVL", 835.5),  # 1,671 sparse
    ("NVIDIA H200", 989.5),  # SXM: 1,979 sparse
    ("NVIDIA H200 NVL", 835.5),  # 1,671 sparse
    ("NVIDIA GH200 480GB", 989.5),
    ("NVIDIA B200", 2250),  # HGX B200: 36 PFLOPS sparse over 8 GPUs
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA L4", 121),
    ("NVIDIA L40S", 362.05),
    ("NVIDIA L40", None),  # not in the table: unknown, never guessed
    ("Tesla T4", None),
    ("cpu", None),
])
def test_peak_flops_table(name, tflops):
    peak = evaluate.peak_flops(name)
    assert peak == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_mfu_reproduces_autoresearchs_published_h100_figure():
    # autoresearch's H100 run: 953 steps of 2**19 tokens, the first 10 untimed, in 300 s of timed training,
    # reported MFU 39.8%. Its FLOPs per token, by hand from its architecture (8 layers, width 512, vocab
    # 8192, context 2048, windows S S S L S S S L with S = 1024): 6 x the matmul parameters outside the
    # embeddings (blocks 8 x 12 x 512^2, ve gates 4 x 32 x 4, lm_head 8192 x 512) + 12 x 512 x each
    # layer's attention window.
    matmul_params = 8 * 12 * 512**2 + 4 * 32 * 4 + 8192 * 512
    flops_per_token = 6 * matmul_params + 12 * 512 * (6 * 1024 + 2 * 2048)
    tokens_per_sec = (953 - 10) * 2**19 / 300.0
    mfu = evaluate.mfu_percent(flops_per_token, tokens_per_sec, "NVIDIA H100 80GB HBM3")
    assert round(mfu, 1) == 39.8
    assert evaluate.mfu_percent(flops_per_token, tokens_per_sec, "NVIDIA H100 PCIe") == pytest.approx(
        mfu * 989.5 / 756.5)
    assert evaluate.mfu_percent(flops_per_token, tokens_per_sec, "cpu") is None


def test_fixed_eval_sizes_per_source():
    assert evaluate.EVAL_TOKENS == {"offline": 16_384, "real": 10 * 2**20}
