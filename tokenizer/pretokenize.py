"""Pre-tokenization for BPE training: GPT-2's regex, special-token splitting and parallel counting.

BPE never merges across a pre-token, so training only needs *how often each distinct pre-token
occurs*. That count is what this module produces, for a file of any size: the file is cut into byte
ranges at "safe" boundaries, worker processes read their own ranges (no process ever holds the whole
file) and return a ``Counter`` of pre-tokens, whose size grows with the number of distinct pre-tokens,
not with the file.

A boundary at byte ``p`` is safe when pre-tokenizing the two sides separately gives exactly the
pre-tokens of the whole. Two kinds are used (``find_boundary``):

* the start of a special token: special tokens split the text anyway;
* an ASCII whitespace byte (a newline preferred) right after any non-whitespace character. Why this
  is safe: no GPT-2 pre-token holds a non-space character followed by white space (white space only
  ever leads a token, or forms a run of its own), so the pre-token covering the character before
  ``p`` ends at ``p``; the pattern's only look-ahead, ``\\s+(?!\\S)``, belongs to white-space runs,
  and none of them crosses that character. So the matching from ``p`` on is the same with or without
  the left part. ``count_words`` cuts text the same way before any white space character (ASCII or
  not), so that GPT-2's pattern runs once per distinct word-like piece.

Either kind is only used if no occurrence of a special token straddles it.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import BinaryIO

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PATTERN)

# The characters the regex module's \s matches (Unicode White_Space). Spelled out so that the stdlib
# `re` can use them: its own \s also matches \x1c-\x1f, which GPT-2's pattern treats as non-space.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Cuts text at every safe boundary (a whitespace run that follows a non-space): "a, b\n\nc" ->
# ["a,", " b", "\n\nc"]. The pieces are word-like and repeat, so the slow GPT-2 pattern runs once per
# *distinct* piece. The stdlib engine does this simple split about 3x faster than GPT-2's pattern.
_WORDS_RE = re.compile(f"[{WHITESPACE}]*[^{WHITESPACE}]+|[{WHITESPACE}]+")

# Whitespace boundaries, in order of preference: a newline, else any other ASCII whitespace byte; each
# only right after a non-whitespace character (see the module docstring for why that is safe).
_WHITESPACE_BOUNDARIES = (re.compile(rb"\n"), re.compile(rb"[ \t\r\f\v]"))
_WHITESPACE_CHAR_RE = re.compile(f"[{WHITESPACE}]")

DEFAULT_CHUNK_BYTES = 1 << 16  # one range of work; bounds the transient memory of a worker (~15x this)
MAX_WORDS = 1 << 16  # distinct words a worker collects before pre-tokenizing them
MIN_CHUNKS_PER_WORKER = 16  # a process is worth forking (and its memory) for 16 chunks' bytes: 1 MB
DEFAULT_WINDOW_BYTES = 1 << 12  # read-ahead when looking for a boundary (a special token "in sight")


class PretokenCounts:
    """What pre-tokenizing a file (or part of it) yields; ``add`` merges a worker's share."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # pre-token -> occurrences
        self.n_special = 0  # special tokens seen (each becomes one token)
        self.n_replaced = 0  # invalid UTF-8 sequences replaced by U+FFFD
        self.num_workers = 1  # processes that did the counting

    def add(self, other: PretokenCounts) -> None:
        self.counts.update(other.counts)
        self.n_special += other.n_special
        self.n_replaced += other.n_replaced

    def to_json(self) -> bytes:
        return json.dumps([self.n_special, self.n_replaced, self.counts]).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PretokenCounts:
        result = cls()
        result.n_special, result.n_replaced, counts = json.loads(data)
        result.counts.update(counts)
        return result


def special_token_regex(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A pattern matching any special token, the longest first where several match at one place.

    Longest first matters for overlapping tokens: with ``<|endoftext|>`` and
    ``<|endoftext|><|endoftext|>`` both special, a double occurrence is the longer token.
    """
    tokens = sorted(set(special_tokens), key=len, reverse=True)
    if not tokens:
        return None
    return regex.compile("|".join(regex.escape(t) for t in tokens))


def count_words(text: str, special_re: regex.Pattern | None, words: Counter[str]) -> int:
    """Add the word-like pieces of ``text`` to ``words``; return how many special tokens it contained.

    Special tokens are cut out first, so no piece (and no pre-token) ever spans or contains one.
    """
    pieces = special_re.split(text) if special_re is not None else [text]
    for piece in pieces:
        words.update(_WORDS_RE.findall(piece))
    return len(pieces) - 1


def pretokenize_words(words: Counter[str], counts: Counter[str]) -> None:
    """Add the GPT-2 pre-tokens of every distinct word, times its count, to ``counts``."""
    for word, n in words.items():
        for pretoken in PRETOKEN_RE.findall(word):
            counts[pretoken] += n


def count_pretokens(text: str, special_tokens: list[str]) -> Counter[str]:
    """The pre-token counts of one in-memory text (what ``count_file`` computes for a file)."""
    words: Counter[str] = Counter()
    count_words(text, special_token_regex(special_tokens), words)
    counts: Counter[str] = Counter()
    pretokenize_words(words, counts)
    return counts


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode ``data``, replacing invalid UTF-8 with U+FFFD; return the text and the number replaced."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        # U+FFFD that was already in the file is valid UTF-8 (EF BF BD) and is not a replacement.
        return text, text.count("\ufffd") - data.count("\ufffd".encode())


def _straddles_special(buf: bytes, i: int, specials: list[bytes]) -> bool:
    """Whether an occurrence of a special token in ``buf`` starts before ``i`` and ends after it."""
    for s in specials:
        j = buf.find(s, max(0, i - len(s) + 1), i + len(s) - 1)
        if j != -1 and j < i:
            return True
    return False


def _after_non_space(buf: bytes, j: int) -> bool:
    """Whether the character that ends just before byte ``j`` of ``buf`` is valid UTF-8, not white space."""
    k = j - 1
    while k > 0 and j - k < 4 and 0x80 <= buf[k] < 0xC0:  # back over UTF-8 continuation bytes
        k -= 1
    try:
        char = buf[k:j].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(char) == 1 and not _WHITESPACE_CHAR_RE.match(char)


def find_boundary(
    f: BinaryIO, pos: int, file_size: int, specials: list[bytes], window: int = DEFAULT_WINDOW_BYTES
) -> int:
    """A safe boundary at or after ``pos`` (see the module docstring); ``file_size`` if none.

    Looks ``window`` bytes ahead at a time: a special token in sight wins, else a newline, else
    another whitespace byte; only if the window has none of them is the next window read.
    """
    if pos <= 0 or pos >= file_size:
        return min(max(pos, 0), file_size)
    margin = max([len(s) for s in specials] + [4])  # context: straddling tokens, the character before
    start = pos
    while start < file_size:
        lo = max(0, start - margin)
        f.seek(lo)
        buf = f.read(start - lo + window + margin)
        first, last = start - lo, min(start - lo + window, len(buf))  # candidates: buf[first:last]
        candidates = sorted(j for s in specials if (j := buf.find(s, first, last + len(s) - 1)) != -1)
        for j in candidates:
            if not _straddles_special(buf, j, specials):
                return lo + j
        for pattern in _WHITESPACE_BOUNDARIES:
            for m in pattern.finditer(buf, first, last):
                j = m.start()
                if _after_non_space(buf, j) and not (specials and _straddles_special(buf, j, specials)):
                    return lo + j
        start += window
    return file_size


def chunk_ranges(
    f: BinaryIO, file_size: int, special_tokens: list[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[tuple[int, int]]:
    """Cut a file into ``(start, end)`` byte ranges of about ``chunk_bytes``, at safe boundaries."""
    specials = [t.encode("utf-8") for t in special_tokens]
    bounds = [0]
    while bounds[-1] < file_size:
        bounds.append(find_boundary(f, bounds[-1] + chunk_bytes, file_size, specials))
    return list(pairwise(bounds))


def count_ranges(
    path: str | os.PathLike,
    ranges: list[tuple[int, int]],
    special_tokens: list[str],
    on_chunk: Callable[[int], None] | None = None,
) -> PretokenCounts:
    """Count the pre-tokens in some byte ranges of a file.

    Reads one range at a time, so memory is the counts, at most ``MAX_WORDS`` distinct words and one
    range's text. The more text the word counter spans, the fewer times GPT-2's pattern runs.
    """
    special_re = special_token_regex(special_tokens)
    words: Counter[str] = Counter()
    result = PretokenCounts()
    with open(path, "rb") as f:
        for start, end in ranges:
            f.seek(start)
            text, replaced = decode_utf8(f.read(end - start))
            result.n_replaced += replaced
            result.n_special += count_words(text, special_re, words)
            if len(words) > MAX_WORDS:
                pretokenize_words(words, result.counts)
                words.clear()
            if on_chunk is not None:
                on_chunk(end - start)
    pretokenize_words(words, result.counts)
    return result


def _send(fd: int, kind: bytes, value: int, payload: bytes = b"") -> None:
    """Write one message: a kind byte, a 64-bit value, then ``payload`` (``value`` bytes of it)."""
    data = memoryview(kind + value.to_bytes(8, "little") + payload)
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, min(n, 1 << 20))
        if not part:
            raise RuntimeError("a pre-tokenization worker died (was it killed for memory?)")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _fork_worker(
    path: str | os.PathLike, ranges: list[tuple[int, int]], special_tokens: list[str]
) -> tuple[int, int]:
    """Fork a process that counts ``ranges``; return ``(read end of its pipe, pid)``.

    The worker sends ``P`` messages (bytes done) as it goes, then ``R`` (its counts, as JSON) or ``E``
    (an error message), and leaves with ``os._exit`` so that none of the parent's clean-up runs twice.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid != 0:
        os.close(write_fd)
        return read_fd, pid
    os.close(read_fd)
    status = 1
    try:
        result = count_ranges(path, ranges, special_tokens, lambda n: _send(write_fd, b"P", n))
        data = result.to_json()
        _send(write_fd, b"R", len(data), data)
        status = 0
    except BaseException as e:  # noqa: BLE001 - report anything, even Ctrl-C, to the parent
        message = f"{type(e).__name__}: {e}".encode()
        _send(write_fd, b"E", len(message), message)
    finally:
        os._exit(status)


def count_file(
    path: str | os.PathLike,
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> PretokenCounts:
    """Count the pre-tokens of a whole file, in ``num_workers`` processes (default: all cores).

    The ranges are split into contiguous groups, one per process (fewer processes for a small file:
    each gets at least ``MIN_CHUNKS_PER_WORKER * chunk_bytes`` bytes). The calling process counts the
    first group itself while forked workers count the others, so two workers are two processes, not three.
    Plain ``os.fork`` and pipes rather than ``multiprocessing``: its imports (ctypes, sockets, ...) cost
    about 4 MB, paid again in every worker. Where there is no fork (Windows), one process counts.
    ``progress(bytes_done, file_size)`` is called as the work advances.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        ranges = chunk_ranges(f, file_size, special_tokens, chunk_bytes)
    worth_forking = max(1, file_size // (MIN_CHUNKS_PER_WORKER * chunk_bytes))
    workers = min(num_workers or os.cpu_count() or 1, len(ranges), worth_forking)
    if workers < 1 or not hasattr(os, "fork"):
        workers = 1
    groups = [ranges[i * len(ranges) // workers : (i + 1) * len(ranges) // workers] for i in range(workers)]

    total = PretokenCounts()
    total.num_workers = workers
    pids: dict[int, int] = {}  # read end of a worker's pipe -> its pid
    running: set[int] = set()  # read ends whose worker has not sent its result yet
    bytes_done = 0

    def poll(timeout: float) -> None:
        """Read whatever messages the workers have sent, waiting up to ``timeout`` for one."""
        nonlocal bytes_done
        while running and (ready := select.select(list(running), [], [], timeout)[0]):
            timeout = 0  # then drain what is queued, so that no worker waits on a full pipe
            for fd in ready:
                kind, value = _read_exact(fd, 1), int.from_bytes(_read_exact(fd, 8), "little")
                if kind == b"P":
                    bytes_done += value
                elif kind == b"R":
                    total.add(PretokenCounts.from_json(_read_exact(fd, value)))
                    running.discard(fd)
                else:
                    message = _read_exact(fd, value).decode()
                    raise RuntimeError(f"pre-tokenizing {path} failed in a worker: {message}")

    def on_chunk(n: int) -> None:
        nonlocal bytes_done
        bytes_done += n
        poll(0)
        if progress is not None:
            progress(bytes_done, file_size)

    try:
        for group in groups[1:]:
            fd, pid = _fork_worker(path, group, special_tokens)
            pids[fd] = pid
            running.add(fd)
        total.add(count_ranges(path, groups[0], special_tokens, on_chunk))
        while running:
            poll(0.2)
            if progress is not None:
                progress(bytes_done, file_size)
    finally:
        for fd, pid in pids.items():
            if fd in running:  # only after an error: stop the others
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
    return total
