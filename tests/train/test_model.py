"""train/train.py's model, loss and optimizer, called in-process: the chunked cross-entropy against the
plain one, the memory it never takes, Muon's per-step work, and the FLOP count behind MFU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from .conftest import REPO, clean_env, train_definitions


@pytest.fixture(scope="module")
def train():
    return train_definitions(PRESET="tiny", DEVICE="cpu")


def reference_loss(h, weight, targets, softcap, reduction="mean"):
    """The textbook computation the chunked one replaces: full fp32 logits, soft-cap, cross-entropy."""
    logits = (h @ weight.T).float()
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    nats = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)
    return nats if reduction == "none" else nats.mean()


@pytest.mark.parametrize("softcap", [15.0, 0.0])
@pytest.mark.parametrize("chunk_rows", [7, 64, 1000])  # uneven last chunk, exact chunks, one chunk
def test_chunked_loss_and_gradients_equal_the_full_logits_ones(train, softcap, chunk_rows):
    torch.manual_seed(0)
    h = torch.randn(4, 32, 24, requires_grad=True)
    weight = torch.randn(300, 24, requires_grad=True)
    targets = torch.randint(0, 300, (4, 32))
    loss = train.LinearCrossEntropy.apply(h, weight, targets, softcap, chunk_rows)
    (0.25 * loss).backward()  # a scaled loss, as gradient accumulation makes it
    grads = h.grad.clone(), weight.grad.clone()
    h.grad = weight.grad = None
    expected = reference_loss(h, weight, targets, softcap)
    (0.25 * expected).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grads[0], h.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-4, atol=1e-7)


def test_per_target_nats_for_evaluation_equal_the_full_logits_ones(train):
    torch.manual_seed(1)
    h, weight, targets = torch.randn(3, 50, 16), torch.randn(700, 16), torch.randint(0, 700, (3, 50))
    with torch.no_grad():
        nats = train.linear_cross_entropy(h, weight, targets, 15.0, reduction="none")
    assert nats.shape == targets.shape
    torch.testing.assert_close(nats, reference_loss(h, weight, targets, 15.0, "none"), rtol=1e-5, atol=1e-6)


# Run in a fresh process so its peak resident memory is its own. glibc serves allocations of 64 KiB
# and more straight from the OS and hands them back on free, so the high-water mark counts the
# tensors that were alive together, not freed blocks kept for reuse.
MEMORY_PROBE = r"""
import json, resource, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from tests.train.conftest import evaluate, train_definitions

V, B, T = 8192, 16, 512  # full fp32 logits of one batch: 16 * 512 * 8192 * 4 bytes = 256 MiB
train = train_definitions(PRESET="tiny", DEVICE="cpu")
torch.manual_seed(0)
model = train.GPT(V, 1, 64, 2, T, 15.0)
model.init_weights()
tokens = np.random.default_rng(0).integers(0, V - 1, B * T + 1)
token_bytes = np.ones(V, dtype=np.int64)

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux

def evaluate_with(loss_fn, num_tokens):
    return evaluate.evaluate_bpb(loss_fn, tokens, token_bytes, num_tokens=num_tokens, seq_len=T, batch_size=B)

def training_step(rows):
    x = torch.from_numpy(tokens[:rows * T].reshape(rows, T))
    model(x, x).backward()
    model.zero_grad(set_to_none=True)

def full_logits_nats(inputs, targets):  # what the model did before: a (B, T, V) fp32 tensor per batch
    h = torch.randn(*inputs.shape, 64)
    return torch.nn.functional.cross_entropy(
        train.capped_logits(h, model.lm_head.weight, 15.0).flatten(0, 1), targets.flatten(), reduction="none"
    ).view(targets.shape)

model.eval()
chunked = lambda inputs, targets: model(inputs, targets, reduction="none")
evaluate_with(chunked, T)  # warm-up: one window, so one-off library allocations are not counted below
before = peak_mib()
evaluate_with(chunked, B * T)
evaluation = peak_mib() - before
model.train()
training_step(1)
before = peak_mib()
training_step(B)
training = peak_mib() - before
model.eval()
before = peak_mib()
evaluate_with(full_logits_nats, B * T)
full = peak_mib() - before
print(json.dumps({"logits_mib": B * T * V * 4 / 2**20, "evaluation": evaluation, "training": training,
                  "full_logits": full}))
"""


@pytest.fixture(scope="module")
def memory_growth():
    env = clean_env(MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(REPO)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="counts resident memory the way Linux's glibc allocates it")
def test_evaluation_never_holds_batch_by_seq_by_vocab_fp32_logits(memory_growth):
    logits = memory_growth["logits_mib"]
    # the probe does see such a tensor: peak RSS grows from the training step's peak, which may already hold a
    # few MiB of it, so three quarters is the bar; the chunked evaluation must stay under a quarter
    assert memory_growth["full_logits"] > 0.75 * logits, memory_growth
    assert memory_growth["evaluation"] < 0.25 * logits, memory_growth


@pytest.mark.skipif(sys.platform != "linux", reason="counts resident memory the way Linux's glibc allocates it")
def test_a_training_step_never_holds_them_either(memory_growth):
    # activations of this one-layer, 64-wide model are ~10% of the logits; the loss adds one chunk
    assert memory_growth["training"] < 0.5 * memory_growth["logits_mib"], memory_growth


def test_muon_reuses_its_buffers_and_zero_fills_nothing_per_step(train):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(4, 4))]
    muon = train.Muon(params, lr=0.02, momentum=0.95, weight_decay=0.1, ortho_fn=train.orthogonalize)

    def step():
        for p in params:
            p.grad = torch.randn_like(p)
        muon.step()

    step()
    def buffers():
        return [(grads.data_ptr(), momentum.data_ptr()) for stacks in muon.stacks for _, grads, momentum in stacks]

    before = buffers()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    ops = {event.name for event in profile.events()}
    assert not ops & {"aten::zeros_like", "aten::zero_", "aten::fill_"}, sorted(ops)
    assert buffers() == before and len(before) == 2  # the same two stacks (one per shape), every step


def test_muon_update_is_momentum_then_orthogonalization(train):
    # one matrix, two steps, by hand: m1 = (1-b) g1, update1 = ortho(g1 + b (m1 - g1)); m2 = b m1 + (1-b) g2, ...
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 3))
    start = p.detach().clone()
    g1, g2 = torch.randn(6, 3), torch.randn(6, 3)
    muon = train.Muon([p], lr=0.1, momentum=0.9, weight_decay=0.0, ortho_fn=train.orthogonalize)
    for g in (g1, g2):
        p.grad = g.clone()
        muon.step()
    m1 = 0.1 * g1
    m2 = 0.9 * m1 + 0.1 * g2
    scale = (6 / 3) ** 0.5
    updates = train.orthogonalize(g1 + 0.9 * (m1 - g1)) + train.orthogonalize(g2 + 0.9 * (m2 - g2))
    expected = start - 0.1 * scale * updates
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_flops_per_token_of_the_gpu_model_by_hand(train):
    # 8 blocks of width 512 (qkv 3d^2, proj d^2, MLP 8d^2 = 12 d^2) and the 8192 x 512 output layer,
    # 6 FLOPs per parameter per token; attention 12 * layers * width * context.
    with torch.device("meta"):
        model = train.GPT(8192, 8, 512, 4, 2048, 15.0)
    assert model.flops_per_token() == 6 * (8 * 12 * 512**2 + 8192 * 512) + 12 * 8 * 512 * 2048
