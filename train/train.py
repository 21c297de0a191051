"""One experiment: pretrain a small GPT for a fixed wall-clock budget, then report val_bpb.

    python train/train.py                       # preset from the device: gpu on CUDA, else cpu
    PRESET=tiny TIME_BUDGET=3 python train/train.py
    MATRIX_LR=0.05 DEPTH=10 python train/train.py
    python train/train.py --knobs               # the knob table as JSON (no torch import)

This is the file experiments change. The knobs below are the ALL_CAPS block; each is overridable by
the environment variable of the same name. The evaluation (train/evaluate.py) and the data
(train/prepare.py) live apart. The run ends with `---` and `key: value` lines.
"""

import gc
import os
import sys
import time

TOTAL_START = time.perf_counter()
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # one shape all run: no fragmentation
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
LONG_DOCS = Knob("crop", "split", "split", choices=("crop", "split"),
                 help="training rows are BOS-aligned packed documents; one longer than a row: crop = its first "
                      "row only (autoresearch), split = also its later rows, each starting a row")
TIME_BUDGET = Knob(300.0, 60.0, 5.0, min=0.1, help="seconds of training, excluding compilation and UNTIMED_STEPS")
MAX_STEPS = Knob(0, min=0, help="stop after this many optimizer steps even if time is left; 0 = no limit")
UNTIMED_STEPS = Knob(10, 1, 1, min=0, help="first steps (compile, allocator warm-up) not counted in the budget")
DEPTH = Knob(8, 4, 2, min=1, max=128, help="number of transformer blocks")
ASPECT_RATIO = Knob(64, 32, 32, min=1, help="model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM")
HEAD_DIM = Knob(128, 32, 32, min=2, help="width of one attention head (even, for rotary embeddings)")
MAX_SEQ_LEN = Knob(2048, 128, 64, min=2, help="context length in tokens")
VOCAB_SIZE = Knob(8192, 2048, 512, min=257, max=65536, help="BPE vocabulary size incl. one BOS token (own tokenizer per size)")
TOTAL_BATCH_SIZE = Knob(2**19, 4096, 1024, min=1, help="tokens per optimizer step; a multiple of DEVICE_BATCH_SIZE*MAX_SEQ_LEN")
DEVICE_BATCH_SIZE = Knob(128, 32, 16, min=1, help="sequences per forward/backward; the rest is gradient accumulation")
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
COMPILE = Knob(True, False, False, help="torch.compile the model, the loss chunks and Muon (slow to start on CPU)")
DTYPE = Knob("bfloat16", "float32", "float32", choices=("bfloat16", "float32"),
             help="autocast dtype of the matmuls and the residual stream; float32 = no autocast")
LOG_EVERY = Knob(10, 20, 20, min=1, help="print the training loss every this many steps")

apply_knobs(globals())  # handles --knobs/--check-knobs, validates env values, then resolves the preset

# ------------------------------------------------------------------------------------- imports
import math  # noqa: E402
import resource  # noqa: E402
from contextlib import nullcontext  # noqa: E402

import numpy as np  # noqa: E402
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
COMPUTE_DTYPE = torch.bfloat16 if DTYPE == "bfloat16" else torch.float32
# Logits per cross-entropy chunk: the (tokens, vocab) fp32 logits are never held whole. Big enough
# for full-speed matmuls on a GPU (8192 rows at vocab 8192), small next to a CPU's memory.
LOSS_CHUNK = 2**26 if ON_CUDA else 2**22

# --------------------------------------------------------------------------------------- model


def norm(x):
    return F.rms_norm(x, (x.size(-1),)).to(x.dtype)  # CUDA autocast computes it in fp32: keep bf16 activations


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

    def forward(self, idx, targets, reduction="mean"):
        """Next-token cross-entropy in nats: the mean, or one per target (reduction="none")."""
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.embed(idx)).to(COMPUTE_DTYPE)  # the residual stream in bf16 under autocast
        for i, block in enumerate(self.blocks):
            x = self.resid_scale[i] * x + self.x0_scale[i] * x0
            x = block(x, cos, sin)
        return linear_cross_entropy(norm(x).to(COMPUTE_DTYPE), self.lm_head.weight, targets, self.softcap, reduction)

    def flops_per_token(self):
        """Training FLOPs per token, as autoresearch counts them: 6 * (non-embedding matmul params)
        + 12 * layers * dim * seq (attention scores and values, forward and backward, full causal window)."""
        matmul_params = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and n != "embed.weight")
        return 6 * matmul_params + 12 * len(self.blocks) * self.embed.embedding_dim * self.cos.size(1)


# ------------------------------------------------------------------------------ cross-entropy
# The output layer and the loss go chunk by chunk over the tokens, so the (tokens, vocab) fp32
# logits never exist: at micro-batch 128 x 2048 and vocab 8192 they would be 8.6 GB. In training,
# each chunk's gradients are computed right after its loss (softmax minus one-hot, through the
# soft-cap), so backward has nothing left to recompute. Outside the compiled model on purpose:
# the chunk kernel is compiled once and reused by every chunk.


def capped_logits(h, weight, softcap):
    """One chunk's fp32 logits, soft-capped in place (only called where no gradient flows through them)."""
    logits = (h @ weight.T).float()
    return logits.div_(softcap).tanh_().mul_(softcap) if softcap > 0 else logits


def chunk_nats(h, weight, targets, softcap):
    """Cross-entropy (nats) of each row of h against its target; no gradients."""
    logits = capped_logits(h, weight, softcap)
    return torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)


def chunk_loss_and_grads(h, weight, targets, softcap, scale):
    """Summed nats of one chunk, and the gradients of `scale` * that sum w.r.t. h and weight.

    In place where it can: compiled, it fuses into a few kernels anyway; eager (CPU), it allocates
    two chunk-sized tensors instead of ten."""
    logits = capped_logits(h, weight, softcap)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    nats = lse.squeeze(1) - logits.gather(1, targets[:, None]).squeeze(1)
    grad = torch.sub(logits, lse).exp_()  # softmax ...
    grad[torch.arange(grad.size(0), device=grad.device), targets] -= 1  # ... minus one-hot
    if softcap > 0:
        grad.mul_(logits.div_(softcap).square_().neg_().add_(1))  # d/dz c*tanh(z/c) = 1 - tanh^2
    grad = grad.mul_(scale).to(h.dtype)
    return nats.sum(), grad @ weight, grad.T @ h


compile_fn = (lambda fn: torch.compile(fn, dynamic=False)) if COMPILE else (lambda fn: fn)
loss_chunk = compile_fn(chunk_loss_and_grads)  # one fused kernel set, reused by every chunk of every step


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softcap(h @ weight^T) against targets; gradients computed in forward."""

    @staticmethod
    def forward(ctx, h, weight, targets, softcap, chunk_rows):
        h2, flat_targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        w = weight.to(h.dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h2)
        grad_w = torch.zeros_like(weight)
        scale = 1.0 / h2.size(0)
        for lo in range(0, h2.size(0), chunk_rows):
            rows = slice(lo, lo + chunk_rows)
            nats, grad_h[rows], chunk_grad_w = loss_chunk(h2[rows], w, flat_targets[rows], softcap, scale)
            total += nats
            grad_w += chunk_grad_w
        ctx.save_for_backward(grad_h.view_as(h), grad_w)
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss, None, None, None


@torch.compiler.disable  # a graph break in the compiled model; loss_chunk is compiled on its own
def linear_cross_entropy(h, weight, targets, softcap, reduction="mean"):
    """Cross-entropy of the capped logits h @ weight^T, `LOSS_CHUNK` logits at a time."""
    chunk_rows = max(1, LOSS_CHUNK // weight.size(0))
    if torch.is_grad_enabled() and reduction == "mean":
        return LinearCrossEntropy.apply(h, weight, targets, softcap, chunk_rows)
    h2, flat_targets, w = h.reshape(-1, h.size(-1)), targets.reshape(-1), weight.to(h.dtype)
    with torch.no_grad():
        nats = torch.cat([chunk_nats(hc, w, tc, softcap)
                          for hc, tc in zip(h2.split(chunk_rows), flat_targets.split(chunk_rows))])
    return nats.view(targets.shape) if reduction == "none" else nats.mean()


# ------------------------------------------------------------------------------------ optimizer


def orthogonalize(G, steps=5):
    """Approximate U V^T of each matrix in G (..., m, n) by a quintic Newton-Schulz iteration.

    The coefficients push singular values towards ~1 quickly (to roughly [0.7, 1.2]), which is all
    Muon needs; bf16 is accurate enough for that.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(COMPUTE_DTYPE)
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

    Parameters of one shape are stacked so the Newton-Schulz iteration runs as one batched matmul. The
    stacked gradient and momentum buffers are made once, here, and reused every step.
    """

    def __init__(self, params, lr, momentum, weight_decay, ortho_fn):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.ortho_fn = ortho_fn
        self.stacks = []  # per group: [(params of one shape, stacked grads, stacked momentum)]
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                by_shape.setdefault(p.shape, []).append(p)
            self.stacks.append([(ps, torch.empty(len(ps), *shape, dtype=ps[0].dtype, device=ps[0].device),
                                 torch.zeros(len(ps), *shape, dtype=ps[0].dtype, device=ps[0].device))
                                for shape, ps in by_shape.items()])

    @torch.no_grad()
    def step(self):
        for group, stacks in zip(self.param_groups, self.stacks):
            for params, grads, momentum in stacks:
                torch.stack([p.grad for p in params], out=grads)
                momentum.lerp_(grads, 1 - group["momentum"])  # m = beta*m + (1-beta)*g
                grads.lerp_(momentum, group["momentum"])  # Nesterov: g + beta*(m - g)
                updates = self.ortho_fn(grads).unbind(0)
                scale = max(1.0, grads.size(-2) / grads.size(-1)) ** 0.5  # same RMS update for tall matrices
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
autocast = torch.autocast(device.type, dtype=COMPUTE_DTYPE) if DTYPE == "bfloat16" else nullcontext()

prepare_start = time.perf_counter()
if not prepare.dataset_ready(DATA, VOCAB_SIZE, DATA_SHARDS):  # setup should have done it: say so, then do it
    print(f"prepare: {DATA} data at VOCAB_SIZE={VOCAB_SIZE} was not prepared before the run; tokenizing now, "
          f"inside the job (prepare it in setup: {prepare.prepare_command(DATA, VOCAB_SIZE, DATA_SHARDS)})",
          file=sys.stderr, flush=True)
meta = prepare.ensure_prepared(DATA, VOCAB_SIZE, DATA_SHARDS)
prepare_seconds = time.perf_counter() - prepare_start
encoding = prepare.load_tokenizer(prepare.dataset_dir(DATA, VOCAB_SIZE, DATA_SHARDS).parent / meta["tokenizer"])
train_tokens = prepare.load_split(DATA, VOCAB_SIZE, "train", DATA_SHARDS)
val_tokens = prepare.load_split(DATA, VOCAB_SIZE, "val", DATA_SHARDS)
batches = prepare.DocumentPacker(train_tokens, meta["bos_id"], DEVICE_BATCH_SIZE, MAX_SEQ_LEN, seed=SEED,
                                 split_long=LONG_DOCS == "split")

with torch.device(device):
    raw_model = GPT(VOCAB_SIZE, DEPTH, MODEL_DIM, N_HEADS, MAX_SEQ_LEN, LOGIT_SOFTCAP)
raw_model.init_weights()
model = compile_fn(raw_model)
num_params = sum(p.numel() for p in raw_model.parameters())
flops_per_token = raw_model.flops_per_token()

matrices = [p for p in raw_model.blocks.parameters() if p.dim() == 2]
adam_groups = [
    dict(params=[raw_model.embed.weight], lr=EMBEDDING_LR),
    dict(params=[raw_model.lm_head.weight], lr=UNEMBEDDING_LR),
    dict(params=[raw_model.resid_scale, raw_model.x0_scale], lr=SCALAR_LR),
]
adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=True)
muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY,
            ortho_fn=compile_fn(orthogonalize))
optimizers = (adamw, muon)
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

print(f"preset {PRESET} | device {DEVICE} | data {DATA} (data_sha {meta['data_sha']}) | vocab {VOCAB_SIZE}")
print(f"model: depth {DEPTH}, dim {MODEL_DIM}, heads {N_HEADS}, seq {MAX_SEQ_LEN}, {num_params / 1e6:.2f}M params")
print(f"batch: {TOTAL_BATCH_SIZE} tokens/step = {DEVICE_BATCH_SIZE} x {MAX_SEQ_LEN} x {GRAD_ACCUM} accumulation")
print(f"budget: {TIME_BUDGET:g}s of training after {UNTIMED_STEPS} untimed step(s); compile={COMPILE} dtype={DTYPE}",
      flush=True)

# One pinned host buffer and one device buffer for every micro-batch: the host packs batch k+1 into
# the pinned buffer while the GPU runs batch k, then queues its copy behind batch k on the stream.
host_rows = torch.empty((DEVICE_BATCH_SIZE, MAX_SEQ_LEN + 1), dtype=torch.int64, pin_memory=ON_CUDA)
device_rows = torch.empty_like(host_rows, device=device) if ON_CUDA else host_rows
copied = torch.cuda.Event() if ON_CUDA else None


def next_batch():
    """(inputs, targets) of the next micro-batch, as views of the device buffer."""
    if ON_CUDA:
        copied.synchronize()  # the last copy out of the pinned buffer has finished: safe to overwrite it
    batches.fill(host_rows.numpy())
    if ON_CUDA:
        device_rows.copy_(host_rows, non_blocking=True)
        copied.record()
    return device_rows[:, :-1], device_rows[:, 1:]


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
step_seconds = []  # each timed step, for the step-time spread
step = 0
pending = None  # (step, loss tensor) of the previous step
x, y = next_batch()
while True:
    step_start = time.perf_counter()
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
        x, y = next_batch()  # packed while the GPU works on this micro-batch
    for opt in optimizers:
        opt.step()
    raw_model.zero_grad(set_to_none=True)
    if pending is not None:
        report(*pending)
    pending = (step, loss_sum / GRAD_ACCUM)
    step += 1
    if step == 1:  # warm: everything the run keeps is allocated; no collector pauses inside timed steps
        gc.collect()
        gc.freeze()
        gc.disable()
    if step > UNTIMED_STEPS:
        step_seconds.append(time.perf_counter() - step_start)
        training_seconds += step_seconds[-1]
    if training_seconds >= TIME_BUDGET or (MAX_STEPS and step >= MAX_STEPS):
        break
tail_start = time.perf_counter()
report(*pending)
if ON_CUDA:
    torch.cuda.synchronize()
if step > UNTIMED_STEPS:
    training_seconds += time.perf_counter() - tail_start
timed_steps = len(step_seconds)

# ---------------------------------------------------------------------------------- evaluation
raw_model.eval()
eval_tokens = evaluate.EVAL_TOKENS[DATA]
token_bytes = prepare.token_byte_lengths(encoding)
eval_start = time.perf_counter()
with autocast:
    val_bpb = evaluate.evaluate_bpb(lambda inputs, targets: raw_model(inputs, targets, reduction="none"),
                                    val_tokens, token_bytes, num_tokens=eval_tokens, seq_len=MAX_SEQ_LEN,
                                    batch_size=DEVICE_BATCH_SIZE, device=DEVICE)
eval_seconds = time.perf_counter() - eval_start
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
tokens_per_sec = timed_steps * TOTAL_BATCH_SIZE / training_seconds if training_seconds > 0 else 0.0
mfu = evaluate.mfu_percent(flops_per_token, tokens_per_sec, device_name)
step_ms = np.percentile(step_seconds, [50, 95]) * 1000 if step_seconds else (0.0, 0.0)
summary = {
    "val_bpb": f"{val_bpb:.6f}",
    "val_bpb_uniform": f"{evaluate.uniform_bpb(val_tokens, token_bytes, eval_tokens):.6f}",
    "training_seconds": f"{training_seconds:.1f}",
    "total_seconds": f"{time.perf_counter() - TOTAL_START:.1f}",
    "eval_seconds": f"{eval_seconds:.2f}",
    "prepare_seconds": f"{prepare_seconds:.2f}",
    "peak_memory_mb": f"{peak_memory_mb:.1f}",
    "mfu_percent": "unknown" if mfu is None else f"{mfu:.2f}",
    "total_tokens_M": f"{step * TOTAL_BATCH_SIZE / 1e6:.3f}",
    "num_steps": step,
    "steps_per_sec": f"{timed_steps / training_seconds if training_seconds > 0 else 0.0:.3f}",
    "tokens_per_sec": f"{tokens_per_sec:.0f}",
    "step_ms_p50": f"{step_ms[0]:.2f}",
    "step_ms_p95": f"{step_ms[1]:.2f}",
    "num_params_M": f"{num_params / 1e6:.3f}",
    "depth": DEPTH,
    "model_dim": MODEL_DIM,
    "vocab_size": VOCAB_SIZE,
    "device_batch_size": DEVICE_BATCH_SIZE,
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
