"""The fixed evaluation and the hardware table. Experiments must NOT change this file.

val_bpb (bits per byte) over the first EVAL_TOKENS[source] target tokens of the validation split:

    val_bpb = sum(cross-entropy in nats of each target token) / (ln 2 * sum(UTF-8 bytes of each target))

Inputs are the split's tokens 0..N-1 and targets are tokens 1..N, cut into consecutive, non-overlapping
windows of the model's sequence length (the last window may be shorter). Targets whose byte length is 0
(the BOS special token) are left out of both sums. Because the denominator is bytes, models with
different vocabularies are comparable on the same text. `evaluator_sha()` is a hash of this file, so a
run whose evaluator was edited is visible in its summary.

MFU uses `peak_flops(device_name)`: dense bf16 tensor-core peak from vendor datasheets; an unknown
device (and every CPU) gets None and is reported as `unknown`, never guessed.
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

# Dense (no sparsity) bf16 peak FLOP/s. Order matters: the first pattern that matches wins.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    (r"gh200", 989e12),
    (r"h100.*(pcie)", 756e12),
    (r"h100.*nvl", 835e12),
    (r"h100", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    (r"h200.*nvl", 835e12),
    (r"h200", 989e12),
    (r"h800", 989e12),
    (r"b200", 2250e12),
    (r"a100", 312e12),
    (r"a800", 312e12),
    (r"l40s", 362e12),
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


def eval_windows(num_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) of each evaluation window; the lengths sum to num_tokens."""
    return [(start, min(seq_len, num_tokens - start)) for start in range(0, num_tokens, seq_len)]


def uniform_bpb(val_tokens: np.ndarray, token_bytes: np.ndarray, num_tokens: int) -> float:
    """What a model predicting every token with probability 1/V scores: the untrained baseline."""
    targets = np.asarray(val_tokens[1:num_tokens + 1], dtype=np.int64)
    counted = token_bytes[targets] > 0
    return float(counted.sum() * math.log(len(token_bytes)) / (math.log(2) * token_bytes[targets].sum()))


def evaluate_bpb(model_fn: Callable, val_tokens: np.ndarray, token_bytes: np.ndarray, *,
                 num_tokens: int, seq_len: int, batch_size: int, device: str = "cpu") -> float:
    """Bits per byte of `model_fn` (int64 inputs (B, T) -> logits (B, T, V)) on the first num_tokens targets.

    The caller sets the model's mode and any autocast; this function only feeds windows and sums.
    """
    import torch
    import torch.nn.functional as F

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
            logits = model_fn(inputs).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
            target_bytes = bytes_table[targets.reshape(-1)]
            counted = target_bytes > 0
            nats += (loss * counted).sum(dtype=torch.float64)
            byte_count += target_bytes.sum(dtype=torch.float64)
    return float(nats.item() / (math.log(2) * byte_count.item()))
