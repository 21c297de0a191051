"""The fixed evaluation and the hardware table. Experiments must NOT change this file.

val_bpb (bits per byte) over the first EVAL_TOKENS[source] target tokens of the validation split:

    val_bpb = sum(cross-entropy in nats of each target token) / (ln 2 * sum(UTF-8 bytes of each target))

Inputs are the split's tokens 0..N-1 and targets are tokens 1..N, cut into consecutive, non-overlapping
windows of the model's sequence length (the last window may be shorter). Targets whose byte length is 0
(the BOS special token) are left out of both sums. Because the denominator is bytes, models with
different vocabularies are comparable on the same text. `evaluator_sha()` is a hash of this file, so a
run whose evaluator was edited is visible in its summary.

The model supplies the cross-entropy of each target (`loss_fn(inputs, targets) -> nats (B, T)`), so
it can compute it chunk by chunk: no (batch, seq, vocab) fp32 logits are needed here.

MFU is computed as autoresearch computes it, so the two are comparable: model FLOPs per token
(6 x non-embedding matmul parameters + 12 x layers x width x context) x tokens per second of the
timed steps / the device's dense bf16 peak, `peak_flops(device_name)`. An unknown device (and every
CPU) has no peak and is reported as `unknown`, never guessed.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Callable

import numpy as np

# Fixed per data source; changing them changes what val_bpb means.
EVAL_TOKENS = {
    "offline": 16_384,  # ~1 s on 2 CPU cores for the tiny preset; the split has ~95k+ tokens
    "real": 10 * 2**20,  # 10,485,760 tokens of the pinned validation shard
}

# Dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s, from NVIDIA's datasheets, which print the
# sparse figure (marked *) and note that dense is half of it:
#   H100 Tensor Core GPU datasheet: BF16 1,979* TFLOPS (SXM), 1,671* (NVL); earlier edition 1,513* (PCIe)
#   H200 Tensor Core GPU datasheet: BF16 1,979* (SXM), 1,671* (NVL); GH200 datasheet: as H100 SXM
#   H800 (SXM/PCIe): the H100 SXM/PCIe silicon and clocks; A100 datasheet: BF16 312 dense (624*)
#   L40S datasheet: BF16 362.05 dense (733*); L4 datasheet: BF16 121 dense (242*)
#   HGX B200 (8 GPUs): FP16/BF16 36* PFLOPS, i.e. 4.5* and 2.25 dense per B200
# autoresearch divides by 989.5e12 (H100 SXM), as this table does for that GPU.
# Order matters: the first pattern that matches the lower-cased device name wins.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    (r"gh200", 989.5e12),
    (r"h100.*pcie", 756.5e12),
    (r"h100.*nvl", 835.5e12),
    (r"h100", 989.5e12),  # SXM: "NVIDIA H100 80GB HBM3"
    (r"h200.*nvl", 835.5e12),
    (r"h200", 989.5e12),  # SXM: "NVIDIA H200"
    (r"h800.*pcie", 756.5e12),
    (r"h800", 989.5e12),
    (r"b200", 2250e12),
    (r"a100", 312e12),
    (r"a800", 312e12),
    (r"l40s", 362.05e12),
    (r"\bl4\b", 121e12),
]


def evaluator_sha() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def peak_flops(device_name: str) -> float | None:
    name = device_name.lower()
    if name == "cpu":
        return None
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return flops
    return None


def mfu_percent(flops_per_token: float, tokens_per_sec: float, device_name: str) -> float | None:
    """Model FLOP utilisation in percent, or None when the device's peak is unknown."""
    peak = peak_flops(device_name)
    return None if peak is None else 100 * flops_per_token * tokens_per_sec / peak


def eval_windows(num_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) of each evaluation window; the lengths sum to num_tokens."""
    return [(start, min(seq_len, num_tokens - start)) for start in range(0, num_tokens, seq_len)]


def uniform_bpb(val_tokens: np.ndarray, token_bytes: np.ndarray, num_tokens: int) -> float:
    """What a model predicting every token with probability 1/V scores: the untrained baseline."""
    targets = np.asarray(val_tokens[1:num_tokens + 1], dtype=np.int64)
    counted = token_bytes[targets] > 0
    return float(counted.sum() * math.log(len(token_bytes)) / (math.log(2) * token_bytes[targets].sum()))


def evaluate_bpb(loss_fn: Callable, val_tokens: np.ndarray, token_bytes: np.ndarray, *,
                 num_tokens: int, seq_len: int, batch_size: int, device: str = "cpu") -> float:
    """Bits per byte on the first num_tokens targets, where `loss_fn(inputs, targets)` (int64, (B, T) each)
    returns the cross-entropy in nats of every target, shape (B, T).

    The caller sets the model's mode and any autocast; this function only feeds windows and sums.
    """
    import torch

    if len(val_tokens) < num_tokens + 1:
        raise ValueError(f"validation split has {len(val_tokens)} tokens, needs {num_tokens + 1}")
    nats = torch.zeros((), dtype=torch.float64, device=device)
    byte_count = torch.zeros((), dtype=torch.float64, device=device)
    bytes_table = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    windows = eval_windows(num_tokens, seq_len)
    with torch.no_grad():
        # group windows of equal length into batches (only the last window can be shorter)
        batches: list[list[tuple[int, int]]] = []
        for window in windows:
            if batches and len(batches[-1]) < batch_size and batches[-1][0][1] == window[1]:
                batches[-1].append(window)
            else:
                batches.append([window])
        for batch in batches:
            length = batch[0][1]
            rows = np.stack([np.asarray(val_tokens[s:s + length + 1], dtype=np.int64) for s, _ in batch])
            rows_t = torch.from_numpy(rows).to(device)
            inputs, targets = rows_t[:, :-1], rows_t[:, 1:]
            loss = loss_fn(inputs, targets)
            if loss.shape != targets.shape:
                raise ValueError(f"loss_fn returned shape {tuple(loss.shape)}; expected one value per target, "
                                 f"{tuple(targets.shape)}")
            target_bytes = bytes_table[targets]
            nats += (loss.double() * (target_bytes > 0)).sum()
            byte_count += target_bytes.sum(dtype=torch.float64)
    return float(nats.item() / (math.log(2) * byte_count.item()))
