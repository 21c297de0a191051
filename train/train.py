"""One experiment: pretrain a small GPT for a fixed wall-clock budget, then report val_bpb.

    python train/train.py                       # preset from the device: gpu on CUDA, else cpu
    PRESET=tiny TIME_BUDGET=3 python train/train.py
    MATRIX_LR=0.05 DEPTH=10 python train/train.py
    python train/train.py --knobs               # the knob table as JSON (no torch import)

This is the file experiments change. The knobs below are the ALL_CAPS block; each is overridable by
the environment variable of the same name. The evaluation (train/evaluate.py) and the data
(train/prepare.py) live apart. The run ends with `---` and `key: value` lines.
"""

import os
import sys
import time

TOTAL_START = time.time()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from knobs import Knob, apply_knobs  # noqa: E402  (no torch: --knobs must work without it)

# ---------------------------------------------------------------------------------------- knobs
# Knob(gpu, cpu, tiny): per-preset defaults (one value = same for all); min/max are inclusive.
PRESET = Knob("auto", choices=("auto", "gpu", "cpu", "tiny"),
              help="defaults to use: gpu (H100-scale), cpu (2 cores, ~1 min), tiny (tests); auto = gpu on CUDA else cpu")
DEVICE = Knob("auto", choices=("auto", "cuda", "cpu"), help="where to train; auto = cuda when available")
DATA = Knob("real", "offline", "offline", choices=("real", "offline"),
            help="real = FineWeb-Edu shards from the HF hub; offline = World English Bible (no network)")
DATA_SHARDS = Knob(8, min=1, max=1822, help="real data: number of training shards (~250M characters each)")
TIME_BUDGET = Knob(300.0, 60.0, 5.0, min=0.1, help="seconds of training, excluding compilation and UNTIMED_STEPS")
MAX_STEPS = Knob(0, min=0, help="stop after this many optimizer steps even if time is left; 0 = no limit")
UNTIMED_STEPS = Knob(10, 1, 1, min=0, help="first steps (compile, allocator warm-up) not counted in the budget")
DEPTH = Knob(8, 4, 2, min=1, max=128, help="number of transformer blocks")
ASPECT_RATIO = Knob(64, 32, 32, min=1, help="model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM")
HEAD_DIM = Knob(128, 32, 32, min=2, help="width of one attention head (even, for rotary embeddings)")
MAX_SEQ_LEN = Knob(2048, 128, 64, min=2, help="context length in tokens")
VOCAB_SIZE = Knob(8192, 2048, 512, min=257, max=65536, help="BPE vocabulary size incl. one BOS token (own tokenizer per size)")
TOTAL_BATCH_SIZE = Knob(2**19, 4096, 1024, min=1, help="tokens per optimizer step; a multiple of DEVICE_BATCH_SIZE*MAX_SEQ_LEN")
DEVICE_BATCH_SIZE = Knob(64, 32, 16, min=1, help="sequences per forward/backward; the rest is gradient accumulation")
MATRIX_LR = Knob(0.04, 0.04, 0.04, min=0.0, help="Muon learning rate for the 2-D weights inside blocks")
EMBEDDING_LR = Knob(0.6, 0.3, 0.3, min=0.0, help="AdamW learning rate for the token embedding")
UNEMBEDDING_LR = Knob(0.004, 0.008, 0.008, min=0.0, help="AdamW learning rate for the output projection (lm_head)")
SCALAR_LR = Knob(0.1, min=0.0, help="AdamW learning rate for per-layer residual scalars")
WEIGHT_DECAY = Knob(0.1, 0.0, 0.0, min=0.0, help="decoupled weight decay on Muon matrices (multiplied by the lr)")
ADAM_BETA1 = Knob(0.8, min=0.0, max=0.9999, help="AdamW beta1")
ADAM_BETA2 = Knob(0.95, min=0.0, max=0.9999, help="AdamW beta2")
MUON_MOMENTUM = Knob(0.95, min=0.0, max=0.9999, help="Muon (Nesterov) momentum")
WARMUP_RATIO = Knob(0.0, min=0.0, max=1.0, help="fraction of the budget with linearly rising learning rates")
WARMDOWN_RATIO = Knob(0.5, min=0.0, max=1.0, help="fraction of the budget at the end with linearly falling learning rates")
FINAL_LR_FRAC = Knob(0.0, min=0.0, max=1.0, help="learning rate at the end of warmdown, as a fraction of the peak")
LOGIT_SOFTCAP = Knob(15.0, min=0.0, help="logits = c * tanh(logits / c); 0 turns the cap off")
SEED = Knob(42, min=0, max=2**32 - 1, help="initialisation and data order; same seed, same first-step loss")
COMPILE = Knob(True, False, False, help="torch.compile the model and the Muon orthogonalization (slow to start on CPU)")
LOG_EVERY = Knob(10, 20, 20, min=1, help="print the training loss every this many steps")

apply_knobs(globals())  # handles --knobs/--check-knobs, validates env values, then resolves the preset

# ------------------------------------------------------------------------------------- imports
import math  # noqa: E402
import resource  # noqa: E402
from contextlib import nullcontext  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import evaluate  # noqa: E402
import prepare  # noqa: E402

MODEL_DIM = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
N_HEADS = MODEL_DIM // HEAD_DIM
TOKENS_PER_MICRO = DEVICE_BATCH_SIZE * MAX_SEQ_LEN  # knobs.combination_error checked it divides the batch
GRAD_ACCUM = TOTAL_BATCH_SIZE // TOKENS_PER_MICRO
ON_CUDA = DEVICE == "cuda"

# --------------------------------------------------------------------------------------- model


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotate(x, cos, sin):
    """Rotary position embedding on (B, T, H, D): rotate each (first half, second half) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # bf16 under autocast
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).unbind(2)
        q, k = rotate(norm(q), cos, sin), rotate(norm(k), cos, sin)  # QK-norm, then RoPE
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.attn = Attention(dim, n_heads)
        self.mlp = MLP(dim)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, dim, n_heads, max_seq_len, softcap):
        super().__init__()
        self.softcap = softcap
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        # per-layer scalars: x <- resid_scale[i] * x + x0_scale[i] * x0 before block i (x0 = embeddings)
        self.resid_scale = nn.Parameter(torch.ones(depth))
        self.x0_scale = nn.Parameter(torch.zeros(depth))
        head_dim = dim // n_heads
        freqs = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)[None, :, None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        dim = self.embed.embedding_dim
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)  # start near uniform predictions
        for block in self.blocks:
            bound = (3 / dim) ** 0.5  # uniform with std 1/sqrt(fan_in)
            nn.init.uniform_(block.attn.qkv.weight, -bound, bound)
            nn.init.uniform_(block.mlp.up.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.down.weight)
        self.resid_scale.fill_(1.0)
        self.x0_scale.fill_(0.0)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.embed(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_scale[i] * x + self.x0_scale[i] * x0
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        if self.softcap > 0:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def flops_per_token(self):
        """Training FLOPs per token, PaLM convention: 6 * (non-embedding params) + 12 * layers * dim * seq."""
        matmul_params = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and n != "embed.weight")
        return 6 * matmul_params + 12 * len(self.blocks) * self.embed.embedding_dim * self.cos.size(1)


# ------------------------------------------------------------------------------------ optimizer


def orthogonalize(G, steps=5):
    """Approximate U V^T of each matrix in G (..., m, n) by a quintic Newton-Schulz iteration.

    The coefficients push singular values towards ~1 quickly (to roughly [0.7, 1.2]), which is all
    Muon needs; bf16 on GPU is accurate enough for that.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then replace each 2-D update by its nearest semi-orthogonal matrix (MomentUm Orthogonalized).

    Parameters of one shape are stacked so the Newton-Schulz iteration runs as one batched matmul.
    """

    def __init__(self, params, lr, momentum, weight_decay, ortho_fn):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.ortho_fn = ortho_fn

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                grads = [p.grad for p in params]
                bufs = [self.state[p].setdefault("momentum", torch.zeros_like(p)) for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])  # buf = m*buf + (1-m)*g
                nesterov = torch._foreach_lerp(grads, bufs, group["momentum"])  # g + m*(buf - g)
                updates = self.ortho_fn(torch.stack(nesterov)).unbind(0)
                scale = max(1.0, shape[0] / shape[1]) ** 0.5  # same RMS update for tall matrices
                if group["weight_decay"]:
                    torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                torch._foreach_add_(params, updates, alpha=-group["lr"] * scale)


def lr_multiplier(progress):
    """Linear warmup over WARMUP_RATIO, flat, then linear warmdown to FINAL_LR_FRAC over WARMDOWN_RATIO."""
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress <= 1 - WARMDOWN_RATIO:
        return 1.0
    left = max(0.0, (1 - progress) / WARMDOWN_RATIO)
    return left + (1 - left) * FINAL_LR_FRAC


# ------------------------------------------------------------------------------------- setup
torch.manual_seed(SEED)
if ON_CUDA:
    torch.cuda.manual_seed(SEED)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
device = torch.device(DEVICE)
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ON_CUDA else nullcontext()
use_compile = COMPILE

meta = prepare.ensure_prepared(DATA, VOCAB_SIZE, DATA_SHARDS)
encoding = prepare.load_tokenizer(prepare.dataset_dir(DATA, VOCAB_SIZE, DATA_SHARDS).parent / meta["tokenizer"])
train_tokens = prepare.load_split(DATA, VOCAB_SIZE, "train", DATA_SHARDS)
val_tokens = prepare.load_split(DATA, VOCAB_SIZE, "val", DATA_SHARDS)
batches = prepare.BatchSampler(train_tokens, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, seed=SEED)

with torch.device(device):
    raw_model = GPT(VOCAB_SIZE, DEPTH, MODEL_DIM, N_HEADS, MAX_SEQ_LEN, LOGIT_SOFTCAP)
raw_model.init_weights()
model = torch.compile(raw_model, dynamic=False) if use_compile else raw_model
num_params = sum(p.numel() for p in raw_model.parameters())
flops_per_token = raw_model.flops_per_token()

matrices = [p for p in raw_model.blocks.parameters() if p.dim() == 2]
adam_groups = [
    dict(params=[raw_model.embed.weight], lr=EMBEDDING_LR),
    dict(params=[raw_model.lm_head.weight], lr=UNEMBEDDING_LR),
    dict(params=[raw_model.resid_scale, raw_model.x0_scale], lr=SCALAR_LR),
]
adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0,
                          fused=ON_CUDA)
muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY,
            ortho_fn=torch.compile(orthogonalize) if use_compile else orthogonalize)
optimizers = (adamw, muon)
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

print(f"preset {PRESET} | device {DEVICE} | data {DATA} (data_sha {meta['data_sha']}) | vocab {VOCAB_SIZE}")
print(f"model: depth {DEPTH}, dim {MODEL_DIM}, heads {N_HEADS}, seq {MAX_SEQ_LEN}, {num_params / 1e6:.2f}M params")
print(f"batch: {TOTAL_BATCH_SIZE} tokens/step = {DEVICE_BATCH_SIZE} x {MAX_SEQ_LEN} x {GRAD_ACCUM} accumulation")
print(f"budget: {TIME_BUDGET:g}s of training after {UNTIMED_STEPS} untimed step(s); compile={use_compile}", flush=True)


def to_device(rows):
    tensor = torch.from_numpy(rows)
    if ON_CUDA:
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor[:, :-1], tensor[:, 1:]


def check_loss(step, loss):
    """Stop the run on a non-finite or exploding loss (above twice the loss of a uniform guess)."""
    if not math.isfinite(loss):
        reason = f"loss is {loss} at step {step}"
    elif loss > 2 * math.log(VOCAB_SIZE):
        reason = f"loss exploded to {loss:.3f} at step {step} (> 2 ln V = {2 * math.log(VOCAB_SIZE):.3f})"
    else:
        return
    print(f"TRAINING_FAILED: {reason}; try lower learning rates", flush=True)
    sys.exit(3)


# -------------------------------------------------------------------------------- training loop
# The loss of step k is read after step k+1 has been queued, so the host never stalls the GPU;
# the read also keeps the host at most one step ahead, which makes host timing honest.


def report(step, loss):
    value = loss.item()
    check_loss(step, value)
    if step % LOG_EVERY == 0:
        print(f"step {step:05d} loss {value:.9f} progress {100 * min(1.0, training_seconds / TIME_BUDGET):5.1f}%",
              flush=True)


training_seconds = 0.0
timed_steps = 0
step = 0
pending = None  # (step, loss tensor) of the previous step
x, y = to_device(next(batches))
while True:
    step_start = time.time()
    multiplier = lr_multiplier(training_seconds / TIME_BUDGET)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
    loss_sum = torch.zeros((), device=device)
    for _ in range(GRAD_ACCUM):
        with autocast:
            loss = model(x, y)
        (loss / GRAD_ACCUM).backward()
        loss_sum += loss.detach()
        x, y = to_device(next(batches))  # queue the next copy while the GPU works
    for opt in optimizers:
        opt.step()
    raw_model.zero_grad(set_to_none=True)
    if pending is not None:
        report(*pending)
    pending = (step, loss_sum / GRAD_ACCUM)
    step += 1
    if step > UNTIMED_STEPS:
        training_seconds += time.time() - step_start
        timed_steps += 1
    if training_seconds >= TIME_BUDGET or (MAX_STEPS and step >= MAX_STEPS):
        break
tail_start = time.time()
report(*pending)
if ON_CUDA:
    torch.cuda.synchronize()
if step > UNTIMED_STEPS:
    training_seconds += time.time() - tail_start

# ---------------------------------------------------------------------------------- evaluation
raw_model.eval()
eval_tokens = evaluate.EVAL_TOKENS[DATA]
token_bytes = prepare.token_byte_lengths(encoding)
with autocast:
    val_bpb = evaluate.evaluate_bpb(raw_model, val_tokens, token_bytes, num_tokens=eval_tokens,
                                    seq_len=MAX_SEQ_LEN, batch_size=DEVICE_BATCH_SIZE, device=DEVICE)
if not math.isfinite(val_bpb):
    print(f"TRAINING_FAILED: val_bpb is {val_bpb}", flush=True)
    sys.exit(3)

# ------------------------------------------------------------------------------------- summary
if ON_CUDA:
    device_name = torch.cuda.get_device_name()
    peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
else:
    device_name = "cpu"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_memory_mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
timed_tokens = timed_steps * TOTAL_BATCH_SIZE
tokens_per_sec = timed_tokens / training_seconds if training_seconds > 0 else 0.0
peak = evaluate.peak_flops(device_name)
mfu = f"{100 * flops_per_token * tokens_per_sec / peak:.2f}" if peak else "unknown"
summary = {
    "val_bpb": f"{val_bpb:.6f}",
    "val_bpb_uniform": f"{evaluate.uniform_bpb(val_tokens, token_bytes, eval_tokens):.6f}",
    "training_seconds": f"{training_seconds:.1f}",
    "total_seconds": f"{time.time() - TOTAL_START:.1f}",
    "peak_memory_mb": f"{peak_memory_mb:.1f}",
    "mfu_percent": mfu,
    "total_tokens_M": f"{step * TOTAL_BATCH_SIZE / 1e6:.3f}",
    "num_steps": step,
    "steps_per_sec": f"{timed_steps / training_seconds if training_seconds > 0 else 0.0:.3f}",
    "tokens_per_sec": f"{tokens_per_sec:.0f}",
    "num_params_M": f"{num_params / 1e6:.3f}",
    "depth": DEPTH,
    "model_dim": MODEL_DIM,
    "vocab_size": VOCAB_SIZE,
    "eval_tokens": eval_tokens,
    "seed": SEED,
    "preset": PRESET,
    "data": DATA,
    "evaluator_sha": evaluate.evaluator_sha(),
    "data_sha": meta["data_sha"],
    "device": device_name,
}
print("---")
for key, value in summary.items():
    print(f"{key}: {value}")
