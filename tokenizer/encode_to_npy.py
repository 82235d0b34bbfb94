"""``encode_file``: a text file -> a ``.npy`` of token ids, in parallel, in constant memory.

How (and why):

* The file is cut into byte ranges of about ``chunk_bytes`` at *safe* cuts, where encoding the two
  sides apart gives the ids of the whole (``tokenizer.pretokenize.chunk_ranges``: white space after a
  non-space character, never inside a special token), the chunks BPE training counts too.
* ``num_workers`` forked processes (``tokenizer.pretokenize.Workers``) take the ranges one at a time,
  each the next one free when it is done with its last (``tokenizer.pretokenize.Tickets``: a faster
  worker takes more; with one worker, this process encodes them itself). Each reads and encodes its
  own ranges (only offsets travel) and sends the ids back as raw uint16/uint32 bytes through its pipe,
  headed by the range's number.
* This process only writes the results, in file order, straight after a ``.npy`` header whose length
  field is fixed once the token count is known. A worker that is ahead waits with a chunk's ids in its
  pipe, after at most one more read ahead here (``_next_chunk`` says why that bound holds): neither
  the text nor the array is ever held whole. Everything goes to a temporary name in the output's
  folder and is renamed at the end. Meanwhile this process hashes the file for the metadata.
* ``<output stem>.meta.json`` (``train.npy`` -> ``train.meta.json``) is written after the array,
  so its presence means the array is complete; it records what produced the array (tokenizer hash,
  source size / mtime / sha256), for caches to tell a stale array from a good one.
* Invalid UTF-8 is refused before any work (``FILE: invalid UTF-8 at byte N``, ``check_utf8``: one
  decoding pass, ~18 ms for 20 MB) unless ``errors="replace"``, which decodes every chunk with U+FFFD
  for the bad bytes. The file's hash for the metadata is computed while the workers encode. Stale
  temporary files of dead writers in the output's folder are swept first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tokenizer.files import (
    InvalidUTF8Error,
    ProgressBar,
    atomic_write,
    check_errors_option,
    check_utf8,
    sha256_file,
    sweep_stale_temps,
    write_json,
)
from tokenizer.pretokenize import CAN_FORK, Tickets, Workers, chunk_ranges
from tokenizer.tokenizer import Tokenizer

__all__ = ["encode_file", "meta_path_for"]

MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 1 << 16, 1 << 22


def meta_path_for(output_path: str | os.PathLike) -> Path:
    """``dir/train.npy`` -> ``dir/train.meta.json``."""
    return Path(output_path).with_suffix(".meta.json")


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # respects taskset / container CPU limits
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _encode_range(path: Path, start: int, end: int, tokenizer: Tokenizer, errors: str = "strict") -> bytes:
    """Ids of bytes ``[start, end)`` of ``path``, as the raw bytes of a ``tokenizer.id_dtype`` array."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:  # the file changed since it was checked
        raise InvalidUTF8Error(path, start + e.start) from None
    return tokenizer.encode_to_numpy(text).tobytes()


def _next_chunk(
    pool: Workers, workers: int, pending: dict[int, tuple[int, bytes]], j: int, path: Path
) -> memoryview:
    """The ids of range ``j``, reading the workers' messages (the range's number, then its ids) as
    they come; the ones of later ranges wait in ``pending``.

    Only workers with nothing in ``pending`` are read. The worker encoding range j has nothing there:
    it took its ranges in increasing order, and every range below j is written. So the others are each
    held at one range waiting here and one in their pipe, and memory stays bounded.
    """
    while j not in pending:
        busy = {worker for worker, _ in pending.values()}
        ready = pool.ready(None, among=[i for i in range(workers) if i not in busy])
        if not ready:
            raise RuntimeError(f"encoding {path}: the workers finished before range {j}")
        for i in ready:
            if (message := pool.receive(i)) is not None:
                pending[int.from_bytes(message[:4], "little")] = (i, message)
    return memoryview(pending.pop(j)[1])[4:]


def _write_npy_header(f, dtype: np.dtype, length: int) -> int:
    """A version 1.0 ``.npy`` header for a 1-d array; returns its length in bytes.

    numpy pads the header so that the shape can grow to 21 digits in place, which is what lets us
    write it first with length 0 and again at the end with the real length.
    """
    start = f.tell()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(f, header)
    return f.tell() - start


def _write_ids(
    input_path: Path,
    output_path: Path,
    tokenizer: Tokenizer,
    ranges: list[tuple[int, int]],
    workers: int,
    tickets: Tickets | None,
    errors: str,
    progress: bool,
) -> tuple[int, tuple[str, str]]:
    """Encode ``ranges`` (in ``workers`` forked processes taking ``tickets``, or here when 1) into the
    ``.npy`` ``output_path``, atomically; (tokens written, (tokenizer hash, file hash))."""
    dtype = tokenizer.id_dtype  # uint16, or uint32 for a vocabulary over 65,536 tokens

    # No batched-merge table is built here for the workers to inherit: each builds its own only if its
    # text turns out long-tailed (``Tokenizer``, after 32K misses), at once with the others, and text
    # with few distinct words never pays it (on 20 MB of the Markov corpus the table was ~0.14 s of a
    # 1.2-1.3 s encode_file).
    def work(i: int, send: Callable[[bytes], None]) -> None:  # runs in a forked worker
        while (j := tickets.take()) is not None:
            start, end = ranges[j]
            send(j.to_bytes(4, "little") + _encode_range(input_path, start, end, tokenizer, errors))

    # With several workers, all of them are forked and this process only writes what they send, in
    # order: a chunk's ids (hundreds of KB) overflow a pipe, so a worker waits until they are read,
    # and this process reading only between chunks of its own would leave the workers idle meanwhile.
    n_tokens = 0
    pending: dict[int, tuple[int, bytes]] = {}  # range -> (worker, message), read ahead of its turn
    file_size = ranges[-1][1] if ranges else 0
    with (
        Workers(workers if workers > 1 else 0, work) as pool,  # forked before the progress bar's thread
        atomic_write(output_path, "wb") as out,
        ProgressBar(file_size, f"encoding {input_path.name}", progress, unit="bytes") as bar,
    ):
        if tickets is not None:
            tickets.close()  # the workers have their copies
        header_size = _write_npy_header(out, dtype, 0)
        # The metadata's hashes now, while the workers encode, rather than after the last chunk: the
        # tokenizer's (~50 ms for GPT-2's vocabulary; cached once computed) and the file's (~16 ms for
        # 20 MB). With one worker this process does everything, in the same order.
        hashes = tokenizer.fingerprint, sha256_file(input_path)
        for j, (start, end) in enumerate(ranges):
            if workers == 1:
                data = _encode_range(input_path, start, end, tokenizer, errors)
            else:
                data = _next_chunk(pool, workers, pending, j, input_path)
            out.write(data)
            if workers > 1:  # to disk now, while this process waits anyway: the final fsync took 9-15 ms
                out.flush()  # for 20 MB of text, with this 0.2-3 ms (macOS has no fdatasync: fsync)
                getattr(os, "fdatasync", os.fsync)(out.fileno())
            n_tokens += len(data) // dtype.itemsize
            bar.advance(end - start)
        out.seek(0)
        if _write_npy_header(out, dtype, n_tokens) != header_size:  # cannot happen below 10**21 tokens
            raise RuntimeError(f"{output_path}: the .npy header changed size")
        meta_path_for(output_path).unlink(missing_ok=True)  # an old one must not vouch for the new array
    return n_tokens, hashes


def encode_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    tokenizer: Tokenizer,
    *,
    num_workers: int | None = None,
    chunk_bytes: int | None = None,
    progress: bool = True,
    errors: str = "strict",
) -> int:
    """Encode the UTF-8 text file ``input_path`` into the 1-d array ``output_path`` (``.npy``).

    Ids equal ``tokenizer.encode(whole text)``; the array is uint16 when the vocabulary has at most
    65,536 tokens, else uint32. ``num_workers`` defaults to the usable cores (1: encode in this process);
    ``chunk_bytes`` (default: about an eighth of a worker's share, between 64 KiB and 4 MiB) bounds
    each worker's memory. Writes ``meta_path_for(output_path)`` too. Returns the number of tokens.
    ``errors``: ``"strict"`` refuses invalid UTF-8 up front (``InvalidUTF8Error``: ``FILE: invalid
    UTF-8 at byte N``), ``"replace"`` encodes it as U+FFFD.
    """
    check_errors_option(errors)
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
    if errors == "strict":
        check_utf8(input_path)
    sweep_stale_temps(output_path.parent)
    workers = (num_workers or _usable_cores()) if CAN_FORK else 1
    if chunk_bytes is None:
        chunk_bytes = min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, math.ceil(stat.st_size / (8 * workers))))
    tickets = Tickets() if workers > 1 else None
    try:
        if tickets is not None:  # a file of many GB: longer ranges, as many as the tickets' pipe holds
            chunk_bytes = max(chunk_bytes, math.ceil(stat.st_size / tickets.capacity))
        with open(input_path, "rb") as f:
            ranges = chunk_ranges(f, stat.st_size, tokenizer.special_tokens, chunk_bytes)
        workers = max(1, min(workers, len(ranges)))
        if workers == 1 and tickets is not None:  # one range: this process encodes it
            tickets.close()
            tickets = None
        if tickets is not None:
            tickets.deal(len(ranges))
        n_tokens, hashes = _write_ids(
            input_path, output_path, tokenizer, ranges, workers, tickets, errors, progress
        )
    finally:
        if tickets is not None:
            tickets.close()
    meta = {
        "tokenizer_hash": hashes[0],
        "vocab_size": tokenizer.vocab_size,
        "dtype": tokenizer.id_dtype.name,
        "n_tokens": n_tokens,
        "n_bytes": stat.st_size,
        "bytes_per_token": stat.st_size / n_tokens if n_tokens else None,
        "source_path": str(input_path.resolve()),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "source_sha256": hashes[1],
    }
    if errors != "strict":
        meta["errors"] = errors
    write_json(meta_path_for(output_path), meta)
    return n_tokens
