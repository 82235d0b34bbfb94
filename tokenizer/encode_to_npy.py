"""``encode_file``: a text file -> a ``.npy`` of token ids, in parallel, in constant memory.

How (and why):

* The file is cut into byte ranges of about ``chunk_bytes`` at *safe* cuts, where encoding the two
  sides apart gives the ids of the whole (``tokenizer.pretokenize.chunk_ranges``: white space after a
  non-space character, never inside a special token), the chunks BPE training counts too.
* The ranges are dealt round-robin to ``num_workers`` forked processes (``tokenizer.pretokenize.Workers``:
  worker i takes ranges i, i + k, i + 2k, ...; with one worker, this process encodes them itself).
  Each reads and encodes its own ranges (only offsets travel) and sends the ids back as raw
  uint16/uint32 bytes through its pipe.
* This process only writes the results, in file order, straight after a ``.npy`` header whose length
  field is fixed once the token count is known. It reads from one worker at a time, so a worker that
  is ahead waits with a chunk's ids in its pipe: neither the text nor the array is ever held whole.
  Everything goes to a temporary name in the output's folder and is renamed at the end.
* ``<output stem>.meta.json`` (``train.npy`` -> ``train.meta.json``) is written after the array,
  so its presence means the array is complete; it records what produced the array (tokenizer hash,
  source size / mtime / sha256), for caches to tell a stale array from a good one.
* Invalid UTF-8 is refused before any work (``FILE: invalid UTF-8 at byte N``, found in the same pass
  that hashes the file) unless ``errors="replace"``, which decodes every chunk with U+FFFD for the bad
  bytes. Stale temporary files of dead writers in the output's folder are swept first.
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
    scan_file,
    sweep_stale_temps,
    write_json,
)
from tokenizer.pretokenize import CAN_FORK, Workers, chunk_ranges
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


def _write_npy_header(f, dtype: np.dtype, length: int) -> int:
    """A version 1.0 ``.npy`` header for a 1-d array; returns its length in bytes.

    numpy pads the header so that the shape can grow to 21 digits in place, which is what lets us
    write it first with length 0 and again at the end with the real length.
    """
    start = f.tell()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(f, header)
    return f.tell() - start


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
    # One pass: the hash, the UTF-8 check (before any work or output), and a warm page cache.
    source_sha256, bad = scan_file(input_path, utf8=errors == "strict")
    if bad is not None:
        raise InvalidUTF8Error(input_path, bad)
    sweep_stale_temps(output_path.parent)
    workers = num_workers or _usable_cores()
    if chunk_bytes is None:
        chunk_bytes = min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, math.ceil(stat.st_size / (8 * workers))))
    with open(input_path, "rb") as f:
        ranges = chunk_ranges(f, stat.st_size, tokenizer.special_tokens, chunk_bytes)
    workers = max(1, min(workers, len(ranges))) if CAN_FORK else 1
    dtype = tokenizer.id_dtype  # uint16, or uint32 for a vocabulary over 65,536 tokens

    # No batched-merge table is built here for the workers to inherit: each builds its own only if its
    # text turns out long-tailed (``Tokenizer``, after 32K misses), at once with the others, and text
    # with few distinct words never pays it (on 20 MB of the Markov corpus the table was ~0.14 s of a
    # 1.2-1.3 s encode_file).
    def work(i: int, send: Callable[[bytes], None]) -> None:  # runs in forked worker i
        for start, end in ranges[i::workers]:
            send(_encode_range(input_path, start, end, tokenizer, errors))

    # With several workers, all of them are forked and this process only writes what they send, in
    # order: a chunk's ids (hundreds of KB) overflow a pipe, so a worker waits until they are read,
    # and this process reading only between chunks of its own would leave the workers idle meanwhile.
    n_tokens = 0
    with (
        Workers(workers if workers > 1 else 0, work) as pool,  # forked before the progress bar's thread
        atomic_write(output_path, "wb") as out,
        ProgressBar(stat.st_size, f"encoding {input_path.name}", progress, unit="bytes") as bar,
    ):
        header_size = _write_npy_header(out, dtype, 0)
        # The tokenizer's hash for the metadata (~50 ms for GPT-2's vocabulary; cached once computed):
        # now, while the workers encode, rather than after the last chunk, when it is all that is left.
        tokenizer_hash = tokenizer.fingerprint
        for j, (start, end) in enumerate(ranges):
            if workers == 1:
                data = _encode_range(input_path, start, end, tokenizer, errors)
            elif (data := pool.receive(j % workers)) is None:
                raise RuntimeError(f"encoding {input_path}: a worker finished early")
            out.write(data)
            n_tokens += len(data) // dtype.itemsize
            bar.advance(end - start)
        out.seek(0)
        if _write_npy_header(out, dtype, n_tokens) != header_size:  # cannot happen below 10**21 tokens
            raise RuntimeError(f"{output_path}: the .npy header changed size")
        meta_path_for(output_path).unlink(missing_ok=True)  # an old one must not vouch for the new array

    meta = {
        "tokenizer_hash": tokenizer_hash,
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
    if errors != "strict":
        meta["errors"] = errors
    write_json(meta_path_for(output_path), meta)
    return n_tokens
