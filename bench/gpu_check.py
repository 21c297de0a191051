"""The device check: train/train.py's gpu preset on one H100/H200, offline, in about six minutes.

    python bench/gpu_check.py --pack                 # here, once: offline data and tokenizers into .gpucheck/
    bash bench/gpu_check.sh                          # there: needs only its python3 with PyTorch, and .gpucheck/
    python bench/gpu_check.py --dry-run              # rehearsal on a CPU: the same stages at toy scale

A machine lent for the check reaches no network and no package registry, so everything the runs read
is packed beforehand (`--pack`, on a machine with this repo's environment) into .gpucheck/ (ignored by
git; name it in the device tool's `carry`). It holds the World English Bible tokenized at the gpu
preset's vocabulary twice: once as the offline source, and once standing in for FineWeb-Edu under the
real source's name with the real evaluation's size (its validation chapters repeated to 10,485,760
tokens), so the timed run uses the preset's defaults unchanged, DATA=real included, and evaluates as
long as a real run does. Its val_bpb is not comparable to FineWeb-Edu's. Vocabularies too large for
the Bible's BPE (it stops near 21k merges) get a synthetic tokenizer and random tokens: the memory
probes at those sizes need shapes, not text.

Stages, each a real `python train/train.py` run (knobs set in this environment apply to all of them):
  correctness  the gpu preset's code path on a small model (compile, bf16 autocast, fused optimizers,
               pinned copies, chunked loss), compiled and eager, 5 steps each: both exit 0 and learn,
               the first loss is an untrained model's ln V, and their losses agree within 1%
  timed        the gpu preset as the fleet runs it, --budget seconds (120): tokens/s, MFU, peak memory,
               steps/s, step-time p50/p95, evaluation seconds, checked against the issue's targets
  probes       two optimizer steps at DEVICE_BATCH_SIZE 256 (192 if that does not fit), and at
               VOCAB_SIZE 65536 (32768 if that does not fit), on the offline data: their peak memory, or
               out of memory; with a line through the two batch sizes' peaks, the largest micro-batch
               estimated to fit this GPU and an 80 GB H100
Output: `key: value` lines on stdout, also written to $OUT/gpu_check.txt (or --out), and every run's
log to gpu_check.log beside it. Figures are written after each stage, so a run cut short keeps them.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train" / "train.py"
DEFAULT_PACK = REPO / ".gpucheck"
REAL_EVAL_TOKENS = 10 * 2**20  # train/evaluate.py's EVAL_TOKENS["real"]
REAL_SHARDS = 8  # the DATA_SHARDS default the stand-in is filed under

# Targets from the issue, on the default gpu preset.
TARGET_MFU_PERCENT = 45.0
TARGET_PEAK_MEMORY_MB = 70e9 / 2**20  # 70 GB, in the MiB train.py reports
TARGET_STEP_P95_OVER_P50 = 1.05
TARGET_EVAL_SECONDS = 10.0
H100_MEMORY_MB = 80 * 1000**3 / 2**20  # "80 GB" is decimal


class Scale:
    """What one scale of the check runs: the gpu preset on a GPU, or a toy copy of it on a CPU."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.vocab = 512 if dry_run else 8192
        self.seq_len = 64 if dry_run else 2048
        # knobs on top of PRESET=gpu: nothing on a GPU; toy sizes on a CPU (compile and bf16 stay on)
        self.base = dict(PRESET="gpu")
        if dry_run:
            self.base.update(DEVICE="cpu", DATA="offline", VOCAB_SIZE="512", DEPTH="2", ASPECT_RATIO="32",
                             HEAD_DIM="32", MAX_SEQ_LEN="64", DEVICE_BATCH_SIZE="8", TOTAL_BATCH_SIZE="1024")
        # the correctness runs: the gpu preset's code path on a small model, compiled and eager, 5 steps
        self.toy = dict(MAX_STEPS="5", UNTIMED_STEPS="1", TIME_BUDGET="600", LOG_EVERY="1", DATA="offline")
        if not dry_run:
            self.toy.update(DEPTH="2", ASPECT_RATIO="64", HEAD_DIM="64", MAX_SEQ_LEN="256", DEVICE_BATCH_SIZE="16",
                            TOTAL_BATCH_SIZE="8192")
        self.toy_vocab = self.vocab
        self.batch_probes = [16] if dry_run else [256]  # until one does not fit
        self.batch_fallback = 12 if dry_run else 192  # tried when the first does not fit
        self.vocab_probes = [2048] if dry_run else [65536, 32768]  # largest first, until one fits
        self.default_batch = 8 if dry_run else 128


# ---------------------------------------------------------------------------------------- packing


def load_prepare():
    sys.path.insert(0, str(REPO / "train"))
    import prepare  # noqa: PLC0415  (train/ is a folder of scripts)

    return prepare


def write_meta(folder: Path, meta: dict, tokenizer: Path) -> None:
    digest = hashlib.sha256(tokenizer.read_bytes())
    for split in ("train", "val"):
        digest.update(hashlib.sha256((folder / f"{split}.bin").read_bytes()).hexdigest().encode())
    meta["data_sha"] = digest.hexdigest()[:16]
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def pack_stand_in_real(cache: Path, vocab: int, prepare) -> None:
    """real/s8-v<V>/: the offline text filed as the real source, validation repeated to the real eval size."""
    offline = cache / "offline" / f"v{vocab}"
    meta = json.loads((offline / "meta.json").read_text())
    folder = cache / "real" / f"s{REAL_SHARDS}-v{vocab}"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = cache / "real" / meta["tokenizer"]
    shutil.copyfile(cache / "offline" / meta["tokenizer"], tokenizer)
    shutil.copyfile(offline / "train.bin", folder / "train.bin")
    val = prepare.load_split("offline", vocab, "val")
    repeats = math.ceil((REAL_EVAL_TOKENS + 1) / len(val))
    (folder / "val.bin").write_bytes(bytes(val.tobytes()) * repeats)
    write_meta(folder, {**meta, "source": "real", "shards": REAL_SHARDS, "val_tokens": len(val) * repeats,
                        "stand_in": "World English Bible (offline source), validation repeated: not FineWeb-Edu"},
               tokenizer)


def pack_synthetic(cache: Path, vocab: int, pattern: str, seed: int = 0) -> None:
    """offline/v<V>/: a tokenizer of V - 1 distinct byte strings plus BOS, and random documents."""
    import numpy as np

    tokens = [bytes([b]) for b in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    spec = {"pattern": pattern, "bos": "<|bos|>", "vocab_size": vocab,
            "tokens_b64": [base64.b64encode(t).decode("ascii") for t in tokens[:vocab - 1]]}
    tokenizer = cache / "offline" / f"tokenizer-v{vocab}.json"
    tokenizer.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.write_text(json.dumps(spec))
    folder = cache / "offline" / f"v{vocab}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, count in (("train", 1_000_000), ("val", 100_000)):
        ids = rng.integers(0, vocab - 1, size=count).astype(np.uint16)
        ids[::500] = vocab - 1  # a BOS every 500 tokens: documents to pack
        (folder / f"{split}.bin").write_bytes(ids.tobytes())
        counts[f"{split}_tokens"] = count
    write_meta(folder, {"source": "offline", "vocab_size": vocab, "dtype": "uint16", "bos_id": vocab - 1,
                        "tokenizer": tokenizer.name, **counts, "synthetic": "random tokens, for memory probes"},
               tokenizer)


def pack(pack_dir: Path, scale: Scale) -> None:
    cache = pack_dir / "cache"
    os.environ["SKYFLEET_CACHE"] = str(cache)
    prepare = load_prepare()
    for vocab in sorted({scale.vocab, 512} if scale.dry_run else {scale.vocab}):
        prepare.ensure_prepared("offline", vocab)
    pack_stand_in_real(cache, scale.vocab, prepare)
    pattern = json.loads(prepare.tokenizer_path("offline", scale.vocab).read_text())["pattern"]
    for vocab in scale.vocab_probes:
        pack_synthetic(cache, vocab, pattern)
    size = sum(f.stat().st_size for f in pack_dir.rglob("*") if f.is_file())
    print(f"pack: {pack_dir} ({size / 2**20:.1f} MiB); carry it with the device tool: carry=[\"{pack_dir.name}\"]",
          file=sys.stderr)


# ------------------------------------------------------------------------------------------- runs


def summary_of(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    if "---" not in lines:
        return {}
    tail = lines[len(lines) - lines[::-1].index("---"):]
    return dict(line.split(": ", 1) for line in tail if ": " in line)


def losses_of(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^step \d+ loss (\S+)", stdout, re.M)]


class Check:
    def __init__(self, out: Path, log: Path, pack_dir: Path, scale: Scale):
        self.out, self.log, self.scale = out, log, scale
        self.env = {**os.environ, "SKYFLEET_CACHE": str(pack_dir / "cache"), "PYTHONUNBUFFERED": "1"}
        self.figures: dict[str, object] = {}
        self.started = time.perf_counter()
        log.write_text("")

    def record(self, **figures: object) -> None:
        """Print figures and rewrite the file with every figure so far (and the seconds since the start)."""
        for key, value in figures.items():
            self.figures[key] = value
            print(f"{key}: {value}", flush=True)
        self.figures.setdefault("check_seconds", 0)
        if "check_seconds" not in figures:
            self.figures["check_seconds"] = f"{time.perf_counter() - self.started:.0f}"
        self.out.write_text("".join(f"{k}: {v}\n" for k, v in self.figures.items()))

    def train(self, name: str, **knobs: str) -> tuple[int, str, dict[str, str]]:
        env = {**self.env, **self.scale.base, **knobs}
        shown = " ".join(f"{k}={v}" for k, v in {**self.scale.base, **knobs}.items())
        print(f"gpu_check: {name}: {shown} python train/train.py", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(TRAIN_PY)], env=env, capture_output=True, text=True, cwd=REPO)
        with self.log.open("a") as handle:
            handle.write(f"==== {name}: {shown} (exit {result.returncode}, {time.perf_counter() - started:.0f} s)\n")
            handle.write(result.stdout + result.stderr + "\n")
        return result.returncode, result.stdout + result.stderr, summary_of(result.stdout)

    # ------------------------------------------------------------------------------------- stages

    def environment(self) -> None:
        probe = ("import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(),"
                 " torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',"
                 " torch.cuda.get_device_properties(0).total_memory / 2**20 if torch.cuda.is_available() else 0)")
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"gpu_check: {sys.executable} cannot import PyTorch:\n{result.stderr}")
        python, torch_version, cuda, rest = result.stdout.strip().split(" ", 3)
        name, memory = rest.rsplit(" ", 1)
        self.gpu_memory_mb = float(memory)
        self.record(date=datetime.date.today().isoformat(), python=python, torch=torch_version, cuda=cuda,
                    device=name, device_memory_mb=f"{self.gpu_memory_mb:.0f}",
                    scale="toy (dry run on CPU)" if self.scale.dry_run else "gpu preset")
        if not self.scale.dry_run and cuda != "True":
            raise SystemExit("gpu_check: PyTorch sees no CUDA device (use --dry-run to rehearse on a CPU)")

    def correctness(self) -> None:
        """The gpu preset's code path on a small model, compiled and eager: both run, learn and agree."""
        problems, losses = [], {}
        for compiled in ("1", "0"):
            setting = os.environ.get("COMPILE", "1") if compiled == "1" else "0"  # COMPILE=0 here: both eager
            code, output, summary = self.train(f"correctness_compile_{compiled}", COMPILE=setting, **self.scale.toy)
            losses[compiled] = losses_of(output)
            if code != 0:
                problems.append(f"COMPILE={compiled} exit code {code}: {output.strip().splitlines()[-1:]}")
            elif len(losses[compiled]) < 2 or not losses[compiled][-1] < losses[compiled][0]:
                problems.append(f"COMPILE={compiled} loss did not fall: {losses[compiled]}")
            elif not float(summary["val_bpb"]) < float(summary["val_bpb_uniform"]):
                problems.append(f"COMPILE={compiled} val_bpb {summary['val_bpb']} not below uniform "
                                f"{summary['val_bpb_uniform']}")
        ln_v = math.log(self.scale.toy_vocab)
        if not problems and abs(losses["1"][0] - ln_v) > 0.05 * ln_v:
            problems.append(f"first loss {losses['1'][0]} is not near ln V = {ln_v:.3f} (an untrained model's)")
        worst = max((abs(a - b) / abs(b) for a, b in zip(losses["1"], losses["0"])), default=float("nan"))
        if not problems and (len(losses["1"]) != len(losses["0"]) or not worst <= 1e-2):
            problems.append(f"compiled and eager losses differ: {losses['1']} vs {losses['0']}")
        self.record(correctness="ok" if not problems else f"FAILED: {problems[0]}",
                    correctness_compiled_vs_eager_max_rel_diff=f"{worst:.2e}",
                    correctness_losses=" ".join(f"{v:.4f}" for v in losses["1"]))

    def timed(self, budget: float) -> None:
        code, output, summary = self.train("timed", TIME_BUDGET=str(budget))
        losses = losses_of(output)
        if code != 0 or not summary:
            self.record(timed=f"FAILED: exit code {code}: {output.strip().splitlines()[-1:]}")
            return
        if not (len(losses) >= 2 and losses[-1] < losses[0]):
            self.record(timed=f"FAILED: loss did not fall: {losses}")
            return
        p50, p95 = float(summary["step_ms_p50"]), float(summary["step_ms_p95"])
        ratio = p95 / p50 if p50 > 0 else float("inf")
        self.peak_default_mb = float(summary["peak_memory_mb"])
        speed = {k: summary[k] for k in ("tokens_per_sec", "mfu_percent", "peak_memory_mb", "steps_per_sec",
                                         "step_ms_p50", "step_ms_p95")}
        rest = {k: summary[k] for k in ("eval_seconds", "num_steps", "training_seconds", "total_seconds", "val_bpb",
                                        "num_params_M", "device_batch_size", "vocab_size")}
        self.record(timed="ok", time_budget=f"{budget:g}", timed_losses=f"{losses[0]:.4f} {losses[-1]:.4f}", **speed,
                    step_ms_p95_over_p50=f"{ratio:.3f}", **rest)
        mfu = float(summary["mfu_percent"]) if summary["mfu_percent"] != "unknown" else float("nan")
        checks = {"target_mfu_percent_ge_45": mfu >= TARGET_MFU_PERCENT,
                  "target_peak_memory_le_70gb": self.peak_default_mb <= TARGET_PEAK_MEMORY_MB,
                  "target_step_p95_over_p50_le_1.05": ratio <= TARGET_STEP_P95_OVER_P50,
                  "target_eval_seconds_le_10": float(summary["eval_seconds"]) <= TARGET_EVAL_SECONDS}
        self.record(**{k: "pass" if ok else "FAIL" for k, ok in checks.items()})

    def probe(self, name: str, **knobs: str) -> float | None:
        """Peak memory (MiB) of two optimizer steps with these knobs, or None when out of memory."""
        code, output, summary = self.train(name, DATA="offline", MAX_STEPS="2", UNTIMED_STEPS="1",
                                           TIME_BUDGET="600", **knobs)
        if code == 0 and summary:
            self.record(**{f"{name}_peak_memory_mb": summary["peak_memory_mb"]})
            return float(summary["peak_memory_mb"])
        oom = "out of memory" in output.lower() or "OutOfMemoryError" in output
        self.record(**{f"{name}_peak_memory_mb": "out of memory" if oom else f"FAILED: exit code {code}"})
        return None

    def probes(self) -> None:
        scale, seq = self.scale, self.scale.seq_len
        fits = {scale.default_batch: getattr(self, "peak_default_mb", None)}
        for batch in scale.batch_probes:
            peak = self.probe(f"probe_batch_{batch}", DEVICE_BATCH_SIZE=str(batch), TOTAL_BATCH_SIZE=str(batch * seq))
            if peak is None:
                if batch == scale.batch_probes[0]:
                    fallback = scale.batch_fallback
                    peak = self.probe(f"probe_batch_{fallback}", DEVICE_BATCH_SIZE=str(fallback),
                                      TOTAL_BATCH_SIZE=str(fallback * seq))
                    if peak is not None:
                        fits[fallback] = peak
                break
            fits[batch] = peak
        measured = {b: m for b, m in fits.items() if m is not None}
        self.record(largest_device_batch_size_run=max(measured, default="none"))
        if len(measured) >= 2:  # peak memory is close to linear in the micro-batch: fit it, then solve
            (b0, m0), (b1, m1) = sorted(measured.items())[0], sorted(measured.items())[-1]
            per_row = (m1 - m0) / (b1 - b0)
            usable = 0.95  # headroom for the allocator's fragmentation and cuBLAS workspaces
            estimate = {label: int((usable * memory - (m0 - per_row * b0)) / per_row)
                        if per_row > 0 and memory > 0 else "unknown"
                        for label, memory in (("this_gpu", self.gpu_memory_mb), ("80gb", H100_MEMORY_MB))}
            self.record(peak_memory_mb_per_sequence=f"{per_row:.1f}",
                        largest_device_batch_size_est_this_gpu=estimate["this_gpu"],
                        largest_device_batch_size_est_80gb=estimate["80gb"])
        largest_vocab = "none"
        for vocab in scale.vocab_probes:
            if self.probe(f"probe_vocab_{vocab}", VOCAB_SIZE=str(vocab)) is not None:
                largest_vocab = vocab
                break
        self.record(largest_vocab_size_run=largest_vocab)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", action="store_true", help="build the pack (on a machine with this repo's .venv)")
    parser.add_argument("--pack-dir", type=Path, default=DEFAULT_PACK, help="default: .gpucheck/ in the repo")
    parser.add_argument("--dry-run", action="store_true", help="the same stages on a CPU at toy scale")
    parser.add_argument("--budget", type=float, default=None, help="timed run's TIME_BUDGET (default 120; dry: 5)")
    parser.add_argument("--skip-probes", action="store_true", help="no memory probes (saves two to three minutes)")
    parser.add_argument("--out", type=Path, default=None, help="figures file (default: $OUT/gpu_check.txt, "
                                                                "else gpu_check.txt here)")
    args = parser.parse_args()
    scale = Scale(args.dry_run)
    if args.pack:
        pack(args.pack_dir, scale)
        return 0
    if not (args.pack_dir / "cache").is_dir():
        raise SystemExit(f"gpu_check: no pack at {args.pack_dir}; build it first where the repo is installed: "
                         f"python bench/gpu_check.py --pack{' --dry-run' if args.dry_run else ''}")
    out = args.out or Path(os.environ.get("OUT") or ".") / "gpu_check.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    check = Check(out, out.with_suffix(".log"), args.pack_dir, scale)
    check.environment()
    check.correctness()
    check.timed(args.budget if args.budget is not None else (5.0 if args.dry_run else 120.0))
    if not args.skip_probes:
        check.probes()
    check.record(figures_file=str(out), check_seconds=f"{time.perf_counter() - check.started:.0f}")
    return 0 if str(check.figures.get("correctness")) == "ok" and check.figures.get("timed") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
