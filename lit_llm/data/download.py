"""Download the public corpora: resumable, verified, atomic.

Every named dataset lands in ``<data_dir>/raw/<dataset>/`` as plain UTF-8 text (``train.txt`` and
``valid.txt``, or ``input.txt`` for a corpus that is split later). A download goes to ``<name>.part``
first; a cut connection is resumed with an HTTP ``Range`` request instead of starting over (TinyStories
is 2 GB); size and SHA-256 are checked where the registry knows them, and the result is renamed into
place only once it is whole. Gzipped sources are decompressed the same way. Beside each file,
``<name>.source.json`` records where it came from and the size/SHA-256 actually received, so an
unverified download can be pinned later.

A file that is already in place is trusted and never fetched again: that is also how to work offline
(place the file yourself).

    python -m lit_llm.data.download tinystories [--data-dir data]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# sha256_file is part of this module's API too (tests and prepare use download.sha256_file).
from tokenizer.files import atomic_write, fsync_dir, replace, sha256_file, sweep_stale_temps, write_json

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it lives and what it must look like when it arrives."""

    url: str
    filename: str
    """Local name under ``raw/<dataset>/`` (after decompression)."""
    size: int | None = None
    """Bytes of the downloaded object (the .gz itself for gzipped sources); None where unknown."""
    sha256: str | None = None
    """SHA-256 of the downloaded object; None where unknown (what arrived is recorded instead)."""
    gzipped: bool = False


_HF = "https://huggingface.co/datasets"
DATASETS: dict[str, tuple[RemoteFile, ...]] = {
    "tinystories": (
        RemoteFile(f"{_HF}/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt", "train.txt"),
        RemoteFile(f"{_HF}/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt", "valid.txt"),
    ),
    "owt": (
        RemoteFile(
            f"{_HF}/stanford-cs336/owt-sample/resolve/main/owt_train.txt.gz", "train.txt", gzipped=True
        ),
        RemoteFile(
            f"{_HF}/stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz", "valid.txt", gzipped=True
        ),
    ),
    "shakespeare": (
        RemoteFile(
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "input.txt",
            size=1_115_394,
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    ),
}


class DownloadError(RuntimeError):
    """A download that could not complete; the message says which file to place where instead."""


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not enabled, transient=False)


def _fetch(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its current size); raises on a cut."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lit-llm"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the .part is already whole
            return
        raise
    with response:
        resumed = response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()  # a range we did not ask for: the next attempt starts over
            raise ConnectionError(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
        if offset and not resumed:  # the server ignored Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as out, _progress(progress) as bar:
            task = bar.add_task(label, total=total, completed=offset)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.advance(task, len(chunk))
        received = part.stat().st_size
        if total is not None and received < total:
            raise ConnectionError(f"connection closed after {received} of {total} bytes")


def _verify(part: Path, remote: RemoteFile) -> tuple[int, str]:
    """Size and SHA-256 checks; a mismatching file is deleted, never left to be trusted later."""
    size = part.stat().st_size
    digest = sha256_file(part)
    problem = None
    if remote.size is not None and size != remote.size:
        problem = f"size {size} bytes, expected {remote.size}"
    elif remote.sha256 is not None and digest != remote.sha256:
        problem = f"sha256 {digest}, expected {remote.sha256}"
    if problem:
        part.unlink()
        raise DownloadError(f"download of {remote.url} is corrupt ({problem}); the partial file was removed")
    return size, digest


def download_file(
    remote: RemoteFile,
    dest: str | os.PathLike,
    *,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch ``remote`` to ``dest`` unless it is already there; resumes cuts, verifies, renames atomically."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(Path(remote.url).name + ".part")
    failures = 0  # in a row without progress: a long download over a flaky link may be cut many times
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            label = dest.parent.name + "/" + dest.name
            _fetch(remote.url, part, timeout=timeout, progress=progress, label=label)
            break
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500:  # not found, forbidden: retrying cannot help
                raise _placement_error(remote, dest, f"HTTP {err.code} {err.reason}") from None
            failure: Exception = err
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, cuts
            failure = err
        failures = 0 if part.exists() and part.stat().st_size > before else failures + 1
        if failures > retries or _unreachable(failure):
            raise _placement_error(remote, dest, _reason(failure)) from None
        time.sleep(backoff * failures)
    size, digest = _verify(part, remote)
    if remote.gzipped:
        with gzip.open(part, "rb") as src, atomic_write(dest) as out:
            shutil.copyfileobj(src, out, _CHUNK)
        part.unlink()
    else:
        with open(part, "rb") as f:  # the verified bytes are on disk before their final name is
            os.fsync(f.fileno())
        replace(part, dest)  # the .part is beside dest: an atomic rename (files.replace: the test hook)
        fsync_dir(dest.parent)
    record = {"url": remote.url, "downloaded_bytes": size, "sha256": digest, "gzipped": remote.gzipped}
    write_json(dest.with_name(dest.name + ".source.json"), record)
    return dest


def _unreachable(err: Exception) -> bool:
    """No route to the host at all (offline, no DNS): waiting and retrying will not change that."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    return isinstance(reason, (socket.gaierror, ConnectionRefusedError))


def _reason(err: Exception) -> str:
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def _placement_error(remote: RemoteFile, dest: Path, reason: str) -> DownloadError:
    how = " (gunzip it first)" if remote.gzipped else ""
    return DownloadError(
        f"could not download {remote.url} ({reason}); place that file{how} at {dest} yourself"
    )


def dataset_dir(dataset: str, data_dir: str | os.PathLike = "data") -> Path:
    return Path(data_dir) / "raw" / dataset


def download_dataset(dataset: str, data_dir: str | os.PathLike = "data", **kwargs) -> dict[str, Path]:
    """Every file of a named dataset, fetched where missing: ``{"train.txt": path, ...}``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(sorted(DATASETS))}")
    folder = dataset_dir(dataset, data_dir)
    sweep_stale_temps(folder)  # a killed run's temporaries (not its .part files: those resume)
    return {r.filename: download_file(r, folder / r.filename, **kwargs) for r in DATASETS[dataset]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lit_llm.data.download", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument(
        "--data-dir", default="data", help="files go to DATA_DIR/raw/DATASET/ (default: data)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        paths = download_dataset(args.dataset, args.data_dir, progress=not args.no_progress)
    except (DownloadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
