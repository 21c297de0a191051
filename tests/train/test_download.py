"""The real-data path against a loopback HTTP server: Range resume, retries, and a full prepare."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import prepare


def write_shard(path: Path, index: int, docs: int = 60) -> None:
    """A FineWeb-style parquet file (a `text` column plus others) of real English, ~100 KB."""
    texts = prepare.offline_documents("train")[index * docs:(index + 1) * docs]
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path)


class FlakyShardServer:
    """Serves a folder over HTTP with Range support; can cut a response short or answer 503 first.

    faults: file name -> list of actions for successive requests ("cut" = send half the body then
    close, "503" = service unavailable); when the list is used up, requests are served normally.
    """

    def __init__(self, root: Path):
        self.root, self.faults, self.requests = root, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                path = server.root / name
                if not path.exists():
                    self.send_error(404)
                    return
                action = server.faults.get(name, []).pop(0) if server.faults.get(name) else None
                if action == "503":
                    self.send_error(503)
                    return
                data = path.read_bytes()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if action == "cut":
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def shard_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    for index in (0, 1, 2):  # 0 and 1 train (and train the tokenizer), 2 is the pinned validation shard
        write_shard(root / f"shard_{index:05d}.parquet", index)
    server = FlakyShardServer(root)
    yield server
    server.close()


def test_interrupted_download_resumes_with_a_range_request(shard_server, tmp_path):
    shard_server.faults["shard_00000.parquet"] = ["cut"]
    dest = tmp_path / "got" / "shard_00000.parquet"
    delays = []
    prepare.download(f"{shard_server.url}/shard_00000.parquet", dest, sleep=delays.append, log=lambda m: None)
    assert dest.read_bytes() == (shard_server.root / "shard_00000.parquet").read_bytes()
    assert not dest.with_name(dest.name + ".partial").exists()
    ranges = [r for name, r in shard_server.requests if name == "shard_00000.parquet"]
    size = (shard_server.root / "shard_00000.parquet").stat().st_size
    assert len(ranges) == 2 and ranges[0] is None
    resumed_from = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= size // 2  # kept what arrived before the cut
    assert len(delays) == 1


def test_server_errors_are_retried_with_growing_backoff(shard_server, tmp_path):
    shard_server.faults["shard_00001.parquet"] = ["503", "503", "cut"]
    dest = tmp_path / "shard_00001.parquet"
    delays = []
    prepare.download(f"{shard_server.url}/shard_00001.parquet", dest, backoff=0.5, sleep=delays.append,
                     log=lambda m: None)
    assert dest.read_bytes() == (shard_server.root / "shard_00001.parquet").read_bytes()
    assert delays == [0.5, 1.0, 2.0]


def test_missing_file_and_exhausted_retries_fail_clearly(shard_server, tmp_path):
    with pytest.raises(prepare.DownloadError, match="HTTP 404"):
        prepare.download(f"{shard_server.url}/shard_00099.parquet", tmp_path / "x", sleep=lambda s: None)
    shard_server.faults["shard_00002.parquet"] = ["503"] * 10
    with pytest.raises(prepare.DownloadError, match="giving up after 3 attempts"):
        prepare.download(f"{shard_server.url}/shard_00002.parquet", tmp_path / "y", retries=2,
                         sleep=lambda s: None, log=lambda m: None)


def test_real_source_prepares_from_the_server(shard_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SKYFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SKYFLEET_DATA_URL", shard_server.url)
    monkeypatch.setenv("SKYFLEET_VAL_SHARD", "2")
    monkeypatch.setattr(prepare, "RETRY_BACKOFF_S", 0.0)
    shard_server.faults["shard_00001.parquet"] = ["cut"]
    meta = prepare.ensure_prepared("real", 300, shards=1, log=lambda m: None)
    assert meta["source"] == "real" and meta["shards"] == 1 and meta["val_shard"] == 2
    served = {name for name, _ in shard_server.requests}
    assert served == {"shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"}
    encoding = prepare.load_tokenizer(prepare.tokenizer_path("real", 300))
    train = prepare.load_split("real", 300, "train", shards=1)
    assert len(train) == meta["train_tokens"] and train[0] == meta["bos_id"] == 299
    first_doc = pq.read_table(shard_server.root / "shard_00000.parquet")["text"][0].as_py()
    assert encoding.decode(list(train[1:1 + len(encoding.encode_ordinary(first_doc))])) == first_doc
    count = len(shard_server.requests)
    again = prepare.ensure_prepared("real", 300, shards=1, log=lambda m: None)
    assert again == meta and len(shard_server.requests) == count  # cached: no network at all
