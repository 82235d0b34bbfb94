"""``encode_file``: a text file -> a ``.npy`` of token ids, in parallel, in constant memory.

How (and why):

* The file is cut into byte ranges of about ``chunk_bytes`` at *safe* boundaries, where encoding
  the two sides apart gives the ids of the whole (``tokenizer.pretokenize.chunk_ranges``: the start of
  a special token, or white space after a printable character, never inside a special token).
* Worker processes read and encode their own ranges (only the offsets travel to them) and send back
  the ids as raw uint16/uint32 bytes, which pickle for nearly nothing.
* The parent writes the results in order, straight after a ``.npy`` header whose length field is
  fixed once the token count is known; at most ``2 * num_workers`` chunks are in flight, so neither
  the text nor the array is ever held whole. Everything goes to a temporary name in the output's
  folder and is renamed at the end.
* ``<output stem>.meta.json`` (``train.npy`` -> ``train.meta.json``) is written after the array,
  so its presence means the array is complete; it records what produced the array (tokenizer hash,
  source size / mtime / sha256), for caches to tell a stale array from a good one.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import numpy as np

from tokenizer.io import atomic_write
from tokenizer.pretokenize import chunk_ranges
from tokenizer.tokenizer import Tokenizer

__all__ = ["encode_file", "meta_path_for"]

MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 1 << 16, 1 << 22

_WORKER_TOKENIZER: Tokenizer | None = None


def meta_path_for(output_path: str | os.PathLike) -> Path:
    """``dir/train.npy`` -> ``dir/train.meta.json``."""
    return Path(output_path).with_suffix(".meta.json")


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # respects taskset / container CPU limits
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _init_worker(tokenizer: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_range(path: str, start: int, end: int, dtype: str, tokenizer: Tokenizer | None = None) -> bytes:
    """Ids of bytes ``[start, end)`` of ``path``, as the raw bytes of a ``dtype`` array."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: invalid UTF-8 at byte {start + e.start} ({e.reason})") from None
    ids = (tokenizer or _WORKER_TOKENIZER).encode(text)
    return np.array(ids, dtype=dtype).tobytes()


def _write_npy_header(f, dtype: np.dtype, length: int) -> int:
    """A version 1.0 ``.npy`` header for a 1-d array; returns its length in bytes.

    numpy pads the header so that the shape can grow to 21 digits in place, which is what lets us
    write it first with length 0 and again at the end with the real length.
    """
    start = f.tell()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(f, header)
    return f.tell() - start


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _encoded_chunks(
    path: Path, ranges: list[tuple[int, int]], tokenizer: Tokenizer, dtype: str, workers: int
) -> Iterator[Iterator[tuple[bytes, int]]]:
    """An iterator of ``(ids as bytes, text size)`` per range, in file order.

    The worker processes exist when this is entered: on Linux they are forked (fast, and they inherit
    the tokenizer with its warm cache), before the caller starts any thread of its own such as the
    progress bar's. Elsewhere they are spawned, as fork is unsafe on macOS.
    """
    if workers == 1:
        yield ((_encode_range(str(path), start, end, dtype, tokenizer), end - start) for start, end in ranges)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer,))
    todo = iter(ranges)
    in_flight: deque = deque()

    def submit_next() -> None:
        for start, end in islice(todo, 1):
            in_flight.append((pool.submit(_encode_range, str(path), start, end, dtype), end - start))

    def results() -> Iterator[tuple[bytes, int]]:
        while in_flight:
            future, size = in_flight.popleft()
            submit_next()  # keep the workers busy while the parent writes
            yield future.result(), size

    try:
        for _ in range(2 * workers):  # bounded read-ahead: memory stays a few chunks
            submit_next()
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    tokenizer: Tokenizer,
    *,
    num_workers: int | None = None,
    chunk_bytes: int | None = None,
    progress: bool = True,
) -> int:
    """Encode the UTF-8 text file ``input_path`` into the 1-d array ``output_path`` (``.npy``).

    Ids equal ``tokenizer.encode(whole text)``; the array is uint16 when the vocabulary has at most
    65,536 tokens, else uint32. ``num_workers`` defaults to the usable cores (1: encode in this process);
    ``chunk_bytes`` (default: about an eighth of a worker's share, between 64 KiB and 4 MiB) bounds
    each worker's memory. Writes ``meta_path_for(output_path)`` too. Returns the number of tokens.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {input_path} not found")
    if output_path.suffix != ".npy":
        raise ValueError(f"output {output_path}: expected a file name ending in .npy")
    if not output_path.parent.is_dir():
        raise FileNotFoundError(f"output folder {output_path.parent} does not exist")
    if output_path.is_dir():
        raise IsADirectoryError(f"output {output_path} is a folder; expected a .npy file name")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers={num_workers}: expected at least 1")
    stat = input_path.stat()
    source_sha256 = _sha256(input_path)  # also warms the page cache for the workers
    workers = num_workers or _usable_cores()
    if chunk_bytes is None:
        chunk_bytes = min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, math.ceil(stat.st_size / (8 * workers))))
    with open(input_path, "rb") as f:
        ranges = chunk_ranges(f, stat.st_size, tokenizer.special_tokens, chunk_bytes)
    workers = max(1, min(workers, len(ranges)))
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)

    n_tokens = 0
    tmp = output_path.with_name(f".{output_path.name}.tmp{os.getpid()}")
    try:
        with (
            _encoded_chunks(input_path, ranges, tokenizer, dtype.str, workers) as chunks,
            open(tmp, "wb") as out,
            _Progress(stat.st_size, input_path.name, progress) as bar,
        ):
            header_size = _write_npy_header(out, dtype, 0)
            for data, size in chunks:
                out.write(data)
                n_tokens += len(data) // dtype.itemsize
                bar.advance(size)
            out.seek(0)
            if _write_npy_header(out, dtype, n_tokens) != header_size:  # cannot happen below 10**21 tokens
                raise RuntimeError(f"{output_path}: the .npy header changed size")
        meta_path_for(output_path).unlink(missing_ok=True)  # an old one must not vouch for the new array
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)

    meta = {
        "tokenizer_hash": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "n_tokens": n_tokens,
        "n_bytes": stat.st_size,
        "bytes_per_token": stat.st_size / n_tokens if n_tokens else None,
        "source_path": str(input_path.resolve()),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "source_sha256": source_sha256,
    }
    atomic_write(meta_path_for(output_path), json.dumps(meta, indent=2) + "\n")
    return n_tokens


class _Progress:
    """A rich progress bar in MB/s, or nothing when ``enabled`` is false."""

    def __init__(self, total: int, name: str, enabled: bool) -> None:
        self.progress = self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("encoding {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.task = self.progress.add_task(name, total=total)

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.start()
        return self

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
