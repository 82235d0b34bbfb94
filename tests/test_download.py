"""The downloader against a local HTTP server on 127.0.0.1 (never the internet).

The server honours ``Range`` and can be told to cut the connection once, half way through a body
that it announced in full, which is what a dropped connection looks like to the client.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lit_llm.data import download as dl
from lit_llm.data.download import DownloadError, RemoteFile, download_file

PAYLOAD = bytes(range(256)) * 4000 + b"the end\n"  # ~1 MB, not a multiple of the chunk size


class _Server:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_next = 0  # how many upcoming responses to cut short
        self.range_requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.range_requests.append(rng)
                if self.path == "/busy":
                    self.send_error(503)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
                if start >= len(body) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                rest = body[start:]
                if server.cut_next:
                    server.cut_next -= 1
                    rest = rest[: len(rest) // 2]
                self.wfile.write(rest)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(scope="module")
def _running_server():
    srv = _Server({"/data.txt": PAYLOAD, "/data.txt.gz": gzip.compress(PAYLOAD, mtime=0)})
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def server(_running_server):
    _running_server.cut_next = 0
    _running_server.range_requests.clear()
    return _running_server


def _remote(server: _Server, path: str = "/data.txt", **kw) -> RemoteFile:
    return RemoteFile(server.url(path), "train.txt", **kw)


def test_full_download_verified_and_recorded(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "raw" / "x" / "train.txt"
    out = download_file(_remote(server, size=len(PAYLOAD), sha256=sha), dest, progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    record = json.loads((dest.parent / "train.txt.source.json").read_text())
    assert record == {
        "url": server.url("/data.txt"),
        "downloaded_bytes": len(PAYLOAD),
        "sha256": sha,
        "gzipped": False,
    }
    assert sorted(p.name for p in dest.parent.iterdir()) == ["train.txt", "train.txt.source.json"]
    # A file in place is trusted: no second request.
    n = len(server.range_requests)
    download_file(_remote(server), dest, progress=False)
    assert len(server.range_requests) == n


def test_unknown_checksum_records_what_arrived(server, tmp_path):
    dest = tmp_path / "train.txt"
    download_file(_remote(server), dest, progress=False)
    record = json.loads((tmp_path / "train.txt.source.json").read_text())
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert record["downloaded_bytes"] == len(PAYLOAD)


def test_resume_after_a_cut(server, tmp_path):
    server.cut_next = 1
    dest = tmp_path / "train.txt"
    download_file(
        _remote(server, sha256=hashlib.sha256(PAYLOAD).hexdigest()), dest, backoff=0, progress=False
    )
    assert dest.read_bytes() == PAYLOAD
    # First request whole, the second asks only for what the cut left out.
    assert server.range_requests == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_every_cut_that_made_progress_is_resumed(server, tmp_path):
    server.cut_next = 3  # more cuts than retries: each one still brought bytes, so none counts
    download_file(_remote(server), tmp_path / "train.txt", retries=1, backoff=0, progress=False)
    assert (tmp_path / "train.txt").read_bytes() == PAYLOAD
    offsets = [0] + [int(r.removeprefix("bytes=").rstrip("-")) for r in server.range_requests[1:]]
    assert len(offsets) == 4 and offsets == sorted(set(offsets))


def test_server_errors_are_retried_then_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="could not download .*/busy .*Service Unavailable"):
        download_file(_remote(server, "/busy"), tmp_path / "train.txt", retries=2, backoff=0, progress=False)
    assert len(server.range_requests) == 3  # the first try and two retries


def test_resume_of_a_part_file_left_by_an_earlier_run(server, tmp_path):
    (tmp_path / "data.txt.part").write_bytes(PAYLOAD[:1000])
    download_file(_remote(server), tmp_path / "train.txt", progress=False)
    assert (tmp_path / "train.txt").read_bytes() == PAYLOAD
    assert server.range_requests == ["bytes=1000-"]
    assert not (tmp_path / "data.txt.part").exists()


def test_complete_part_file_is_finished_without_a_body(server, tmp_path):
    (tmp_path / "data.txt.part").write_bytes(PAYLOAD)
    download_file(_remote(server, size=len(PAYLOAD)), tmp_path / "train.txt", progress=False)
    assert (tmp_path / "train.txt").read_bytes() == PAYLOAD
    assert server.range_requests == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing left to send


def test_gzipped_source_is_decompressed(server, tmp_path):
    packed = server.files["/data.txt.gz"]
    remote = _remote(server, "/data.txt.gz", size=len(packed), gzipped=True)
    dest = download_file(remote, tmp_path / "train.txt", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt", "train.txt.source.json"]


@pytest.mark.parametrize("field", ["sha256", "size"])
def test_checksum_or_size_mismatch_is_refused_and_removed(server, tmp_path, field):
    bad = {"sha256": "0" * 64} if field == "sha256" else {"size": len(PAYLOAD) + 1}
    dest = tmp_path / "train.txt"
    with pytest.raises(DownloadError, match=rf"corrupt \({field} .*expected") as info:
        download_file(_remote(server, **bad), dest, progress=False)
    assert server.url("/data.txt") in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part stays to be trusted later


def test_offline_error_names_url_and_where_to_place_the_file(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/TinyStoriesV2-GPT4-train.txt"
    dest = tmp_path / "raw" / "tinystories" / "train.txt"
    with pytest.raises(DownloadError) as info:
        download_file(RemoteFile(url, "train.txt"), dest, progress=False)  # no retry when refused
    message = str(info.value)
    assert "\n" not in message
    assert url in message and f"place that file at {dest} yourself" in message


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(_remote(server, "/missing.txt"), tmp_path / "train.txt", progress=False)


def test_registry_names_the_well_known_sources():
    urls = {name: [r.url for r in files] for name, files in dl.DATASETS.items()}
    assert urls["tinystories"][0].endswith("roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt")
    assert urls["owt"][1].endswith("stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz")
    assert urls["shakespeare"][0].endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")


def test_pinned_shakespeare_checksum_matches_the_fixture(fixture_file):
    (remote,) = dl.DATASETS["shakespeare"]
    path = fixture_file("tinyshakespeare.txt")
    assert path.stat().st_size == remote.size
    assert dl.sha256_file(path) == remote.sha256


def test_cli_reports_offline_failure_in_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = RemoteFile(f"http://127.0.0.1:{port}/input.txt", "input.txt")
    monkeypatch.setitem(dl.DATASETS, "shakespeare", (remote,))
    assert dl.main(["shakespeare", "--data-dir", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and err.count("\n") == 1
    assert str(Path(tmp_path, "raw", "shakespeare", "input.txt")) in err
