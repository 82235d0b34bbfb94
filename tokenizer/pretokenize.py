"""Files in parallel: cut a file into chunks at safe places, hand them to forked workers, and count
the pre-tokens of a file for BPE training.

BPE never merges across a pre-token, so training only needs *how often each distinct pre-token
occurs*. ``count_file`` produces that for a file of any size: the file is cut into byte ranges at safe
cuts (``chunk_ranges``; the rule is ``tokenizer.splitting.CUT_RE``), worker processes read their own
ranges (no process ever holds the whole file) and return a ``Counter`` of pre-tokens, whose size
grows with the number of distinct pre-tokens, not with the file. The pre-tokens are the encoder's
(``tokenizer.splitting.pretokenize``), so a tokenizer is trained on the segmentation it is used with.

``encode_file`` (``tokenizer.encode_to_npy``) uses the same chunks and the same ``Workers``.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import re
import select
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain, compress, pairwise, repeat
from operator import eq, gt
from typing import BinaryIO

from tokenizer.splitting import WORDS_RE, pretokenize, safe_cuts, special_regex

try:
    import fcntl  # POSIX: pipe sizes
except ImportError:  # Windows (which does not fork either)
    fcntl = None

DEFAULT_CHUNK_BYTES = 1 << 16  # one range of work; bounds the transient memory of a worker (~15x this)
MAX_WORDS = 1 << 16  # distinct words a worker collects before pre-tokenizing them
MIN_CHUNKS_PER_WORKER = 16  # a process is worth forking (and its memory) for 16 chunks' bytes: 1 MB
DEFAULT_WINDOW_BYTES = 1 << 12  # how far ahead a chunk boundary is looked for at a time
CAN_FORK = hasattr(os, "fork")  # not on Windows: there, one process does all the work
PIPE_BYTES = 1 << 20  # a worker's pipe to the parent (Linux's default upper limit for unprivileged users)

# ----- counting pre-tokens --------------------------------------------------------------------------


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

    # A worker's counts travel to the parent with `marshal`, which reads and writes a dict of str -> int
    # faster than JSON: ~0.25 s against ~0.65 s for the 480K pre-tokens of 25 MB of long-tailed text,
    # while the parent waits. Like
    # pickle it must not be fed untrusted bytes; these come from our own forked child through a pipe.
    def to_bytes(self) -> bytes:
        return marshal.dumps((self.n_special, self.n_replaced, dict(self.counts)))

    @classmethod
    def from_bytes(cls, data: bytes) -> PretokenCounts:
        result = cls()
        result.n_special, result.n_replaced, counts = marshal.loads(data)
        dict.update(result.counts, counts)
        return result


class Words:
    """The distinct "words" of some text (``WORDS_RE`` pieces: a white-space run and the non-space run
    after it) with their counts, waiting to be pre-tokenized; ``pretokenize_into`` does that.

    Pre-tokenizing word by word costs a regex call and a Python loop per distinct word: ~1.4 us, about
    half of training's counting on long-tailed text, where most words of a batch occur once. But a
    piece from the middle of a text starts with white space and ends with a non-space character, so
    between two such pieces laid end to end there is a safe cut (``splitting.CUT_RE``): their pre-tokens
    are those of each. So the words that occur once are joined and pre-tokenized in one regex call, and
    counted in one C call. The first and last piece of each text are kept apart (``edges``), as they
    may start with a non-space character or be all white space, and go word by word with the rest.
    """

    def __init__(self) -> None:
        self.inner: Counter[str] = Counter()  # pieces with white space before and non-space after them
        self.edges: Counter[str] = Counter()  # the first and last piece of each text

    def __len__(self) -> int:
        return len(self.inner) + len(self.edges)

    def add(self, text: str, special_re: re.Pattern[str] | None) -> int:
        """Count the words of ``text``; return how many special tokens it contained. Special tokens
        are cut out first, so no word (and no pre-token) ever spans or contains one."""
        pieces = special_re.split(text) if special_re is not None else [text]
        for piece in pieces[::2]:  # split() puts the special tokens themselves at the odd positions
            found = WORDS_RE.findall(piece)
            if found:
                self.edges.update((found[0], found[-1]) if len(found) > 1 else found)
                self.inner.update(found[1:-1])
        return len(pieces) // 2

    def pretokenize_into(self, counts: Counter[str]) -> None:
        """Add the pre-tokens of every distinct word, times its count, to ``counts``; forget the words."""
        # (compress and map pick the words in C: a Python loop over them would cost ~0.3 us each)
        once = compress(self.inner, map(eq, self.inner.values(), repeat(1)))
        counts.update(pretokenize("".join(once)))  # a safe cut between every two: see the class
        repeated = compress(self.inner.items(), map(gt, self.inner.values(), repeat(1)))
        for word, n in chain(repeated, self.edges.items()):
            for pretoken in pretokenize(word):
                counts[pretoken] += n
        self.inner.clear()
        self.edges.clear()


def count_pretokens(text: str, special_tokens: list[str]) -> Counter[str]:
    """The pre-token counts of one in-memory text (what ``count_file`` computes for a file)."""
    words = Words()
    words.add(text, special_regex(special_tokens))
    counts: Counter[str] = Counter()
    words.pretokenize_into(counts)
    return counts


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode ``data``, replacing invalid UTF-8 with U+FFFD; return the text and the number replaced."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        # U+FFFD that was already in the file is valid UTF-8 (EF BF BD) and is not a replacement.
        return text, text.count("\ufffd") - data.count("\ufffd".encode())


# ----- chunks of a file -----------------------------------------------------------------------------


def _char_start(data: bytes, i: int) -> int:
    """``i``, moved past at most 3 UTF-8 continuation bytes (10xxxxxx): where a character starts."""
    for _ in range(3):
        if i < len(data) and 0x80 <= data[i] < 0xC0:
            i += 1
    return i


def find_boundary(
    f: BinaryIO,
    pos: int,
    file_size: int,
    straddle_re: re.Pattern[str] | None,
    margin: int,
    window: int = DEFAULT_WINDOW_BYTES,
) -> int:
    """The first safe cut (``splitting.safe_cuts``) at or after byte ``pos`` of ``f``; ``file_size``
    if there is none. ``straddle_re`` and ``margin`` (the longest special token, in bytes) keep cuts
    out of special tokens.

    Reads ``window`` bytes at a time with some context on each side, decoded with
    ``surrogateescape``: each invalid byte becomes a lone surrogate that encodes back to that byte, so
    a position in the text converts exactly to a position in the file.
    """
    if pos <= 0 or pos >= file_size:
        return min(max(pos, 0), file_size)
    context = 4 * margin + 4  # bytes that surely hold `margin` characters, and the one before a cut
    while pos < file_size:
        lo = max(0, pos - context)
        f.seek(lo)
        data = f.read(pos - lo + window + context)
        head, first = _char_start(data, 0), _char_start(data, pos - lo)  # both at a character
        text = data[head:].decode("utf-8", "surrogateescape")
        lo_char = len(data[head:first].decode("utf-8", "surrogateescape"))
        hi_char = len(text) if lo + len(data) >= file_size else len(text) - margin  # room to check
        cut = next(safe_cuts(text, lo_char, hi_char, straddle_re, margin), -1)
        if cut >= 0:
            return lo + first + len(text[lo_char:cut].encode("utf-8", "surrogateescape"))
        pos += window
    return file_size


def chunk_ranges(
    f: BinaryIO, file_size: int, special_tokens: list[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[tuple[int, int]]:
    """Cut a file into ``(start, end)`` byte ranges of about ``chunk_bytes``, at safe cuts."""
    straddle_re = special_regex(special_tokens, overlapping=True)
    margin = max((len(t.encode("utf-8")) for t in special_tokens), default=1)
    bounds = [0]
    while bounds[-1] < file_size:
        bounds.append(find_boundary(f, bounds[-1] + chunk_bytes, file_size, straddle_re, margin))
    return list(pairwise(bounds))


# ----- forked workers -------------------------------------------------------------------------------


def _send(fd: int, kind: bytes, payload: bytes = b"") -> None:
    """Write one message: a kind byte, the payload's length (64 bits), the payload."""
    data = memoryview(kind + len(payload).to_bytes(8, "little") + payload)
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, min(n, 1 << 20))
        if not part:
            raise RuntimeError("a forked worker died (was it killed for memory?)")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


_prctl = None  # libc's prctl on Linux, loaded once in the parent (ctypes then costs no worker anything)


def _load_prctl():
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # no libc to speak of: only the pipe fallback is left
            _prctl = False
    return _prctl or None


def _die_with_parent(parent: int) -> None:
    """In a forked worker: be killed when ``parent`` dies, even by kill -9 (no orphan left under PID 1).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; should the parent have died between ``fork`` and the
    ``prctl``, the signal never comes, so the parent is checked once more afterwards. Elsewhere the
    pipe is the fallback: a worker's next ``send`` to a parent that is gone fails (EPIPE, or SIGPIPE)
    and the worker leaves.
    """
    prctl = _load_prctl()
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


class Tickets:
    """The numbers 0 .. n-1, each taken by whichever forked worker asks first: dynamic scheduling.

    Why: ranges dealt round-robin finish when the slowest worker's share does, and on a shared machine
    one worker often gets the busier core or the slower text (two workers encoding 20 MB: busy 1.64 s
    and 1.54 s). A worker that takes the next range when it is free takes more of them when it is
    faster. ``encode_file`` with two workers on 20 MB, medians of alternating runs against round-robin
    (one process, a noisy host): Markov 0.975 -> 0.898 s (faster in 9 of 12),
    long-tailed 1.86 -> 1.82 s (7 of 16); a first version, without the UTF-8 pass, 0.84 -> 0.79 s and
    1.66 -> 1.59 s (12 and 13 of 16).

    How: ``deal(n)`` writes the numbers, 4 bytes each, into a pipe before any worker is forked, and
    closes its write end. ``take`` reads 4 bytes; a pipe read is done under the pipe's lock, so no two
    workers ever get the same number, and the empty pipe (end of file) means none is left. The pipe
    must hold every number, since no one reads before the workers start: ``capacity`` says how many
    it holds (Linux: the pipe is enlarged to 1 MiB where the user's quota allows; elsewhere one page,
    what any pipe holds). The parent ``close``s its copy once the workers are forked.
    """

    def __init__(self) -> None:
        self._fd, self._write_fd = os.pipe()
        self.capacity = 4096 // 4
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # beyond the user's pipe quota: the size it has
                fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            with contextlib.suppress(OSError):
                self.capacity = fcntl.fcntl(self._write_fd, fcntl.F_GETPIPE_SZ) // 4

    def deal(self, n: int) -> None:
        """Put 0 .. n-1 in the pipe (n <= ``capacity``), then close it for writing."""
        if n > self.capacity:
            raise ValueError(f"{n} tickets do not fit in the pipe (it holds {self.capacity})")
        data = memoryview(b"".join(i.to_bytes(4, "little") for i in range(n)))
        os.set_blocking(self._write_fd, False)  # should the pipe hold less than it said: fail, not hang
        try:
            while data:
                data = data[os.write(self._write_fd, data) :]
        finally:
            os.close(self._write_fd)
            self._write_fd = -1

    def take(self) -> int | None:
        """The next number, or None when all are taken."""
        data = os.read(self._fd, 4)
        return int.from_bytes(data, "little") if data else None

    def close(self) -> None:
        for fd in (self._fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._write_fd = -1


class Workers:
    """``n`` forked processes, each sending messages (bytes) to this one through its own pipe.

    Worker ``i`` runs ``work(i, send)``, where ``send(data)`` passes one message, and then leaves with
    ``os._exit``, so that none of the parent's clean-up (atexit, pytest's) runs twice. The parent
    reads worker ``i``'s next message with ``receive(i)`` (``None`` once it has finished; an exception
    raised in the worker is raised again there) and asks which workers have one waiting with
    ``ready(timeout)``. A pipe holds 1 MiB (``PIPE_BYTES``, where Linux allows), so a worker that gets
    ahead of the parent waits in ``send``: that bounds memory without any further bookkeeping. Leaving
    the ``with`` block kills the workers that have not finished (which happens only after an error)
    and reaps them all.

    Plain ``os.fork`` and pipes rather than ``multiprocessing`` or ``concurrent.futures``: their
    imports (ctypes, sockets, ...) cost about 4 MB, paid again in every worker, and a forked worker
    inherits the parent's state (a tokenizer and its warm cache) for free. Fork before starting any
    thread (a progress bar's): a lock held by another thread at that moment stays held in the child.
    Needs ``CAN_FORK`` when ``n > 0``.

    A message is a kind byte, a 64-bit length and the payload: ``D`` data, ``E`` a pickled exception,
    ``F`` finished.

    A worker dies with this process, however it ends (``_die_with_parent``): a kill -9 of the parent
    leaves no worker behind, whether it was computing or blocked writing to its pipe.
    """

    def __init__(self, n: int, work: Callable[[int, Callable[[bytes], None]], None]) -> None:
        self._fds: list[int] = []  # read end of each worker's pipe
        self._pids: list[int] = []
        self._running: set[int] = set()  # workers that have not sent F
        if n > 0:
            _load_prctl()  # before forking: each worker inherits it instead of importing ctypes
        try:
            for i in range(n):
                self._fork(i, work)
        except BaseException:
            self.close()
            raise

    def _fork(self, i: int, work: Callable[[int, Callable[[bytes], None]], None]) -> None:
        read_fd, write_fd = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux only (fcntl is None on Windows)
            # A pipe of 1 MiB instead of 64 KiB: a worker hands over a whole chunk's ids (~0.6 MB for
            # encode_file's 1.25 MB chunks of a 20 MB file) and goes on while the parent is busy
            # with another worker's, instead of waiting for the parent to drain it.
            with contextlib.suppress(OSError):  # beyond the user's pipe quota: the default size
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        parent = os.getpid()
        pid = os.fork()
        if pid != 0:  # the parent
            os.close(write_fd)
            self._fds.append(read_fd)
            self._pids.append(pid)
            self._running.add(i)
            return
        status = 1
        try:
            _die_with_parent(parent)
            # Everything inherited from the parent (its data, perhaps a large list) is left out of this
            # process's garbage collections: traversing it would cost time and copy its pages.
            gc.freeze()
            for fd in [*self._fds, read_fd]:  # the other workers' pipes are none of this one's business
                os.close(fd)
            work(i, lambda data: _send(write_fd, b"D", data))
            _send(write_fd, b"F")
            status = 0
        except BaseException as e:  # noqa: BLE001 - report anything, even Ctrl-C, to the parent
            import pickle

            try:
                payload = pickle.dumps(e)
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text will do
                payload = pickle.dumps(RuntimeError(f"{type(e).__name__}: {e}"))
            _send(write_fd, b"E", payload)
        finally:
            os._exit(status)

    @property
    def running(self) -> bool:
        """Whether some worker has not finished."""
        return bool(self._running)

    def ready(self, timeout: float | None, among: Iterable[int] | None = None) -> list[int]:
        """The unfinished workers (of ``among``, default all) with a message waiting (or dead), waiting
        up to ``timeout`` seconds (None: until there is one)."""
        workers = sorted(self._running if among is None else self._running.intersection(among))
        fds = [self._fds[i] for i in workers]
        ready = set(select.select(fds, [], [], timeout)[0]) if fds else set()
        return [i for i in workers if self._fds[i] in ready]

    def receive(self, i: int) -> bytes | None:
        """Worker ``i``'s next message (waiting for it); ``None`` once the worker has finished."""
        if i not in self._running:
            return None
        fd = self._fds[i]
        kind = _read_exact(fd, 1)
        payload = _read_exact(fd, int.from_bytes(_read_exact(fd, 8), "little"))
        if kind == b"D":
            return payload
        self._running.discard(i)
        if kind == b"F":
            return None
        import pickle

        try:
            error = pickle.loads(payload)
        except Exception:  # noqa: BLE001 - an exception class that cannot be rebuilt from its pickle
            error = RuntimeError("a forked worker failed, with an exception that does not unpickle")
        raise error

    def close(self) -> None:
        for i, (fd, pid) in enumerate(zip(self._fds, self._pids, strict=True)):
            if i in self._running:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
        self._fds, self._pids, self._running = [], [], set()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----- counting a file ------------------------------------------------------------------------------


def count_ranges(
    path: str | os.PathLike,
    ranges: list[tuple[int, int]],
    special_tokens: list[str],
    on_chunk: Callable[[int], None] | None = None,
) -> PretokenCounts:
    """Count the pre-tokens in some byte ranges of a file.

    Reads one range at a time, so memory is the counts, at most ``MAX_WORDS`` distinct words and one
    range's text. The more text the word counter spans, the fewer times the GPT-2 pattern runs.
    """
    special_re = special_regex(special_tokens)
    words = Words()
    result = PretokenCounts()
    with open(path, "rb") as f:
        for start, end in ranges:
            f.seek(start)
            text, replaced = decode_utf8(f.read(end - start))
            result.n_replaced += replaced
            result.n_special += words.add(text, special_re)
            if len(words) > MAX_WORDS:
                words.pretokenize_into(result.counts)
            if on_chunk is not None:
                on_chunk(end - start)
    words.pretokenize_into(result.counts)
    return result


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
    each gets at least ``MIN_CHUNKS_PER_WORKER * chunk_bytes`` bytes). This process counts the first
    group itself while forked workers count the others, so two workers are two processes, not three.
    A worker sends ``P<bytes>`` after each range and ``R`` + ``PretokenCounts.to_bytes()`` at the end.
    ``progress(bytes_done, file_size)`` is called as the work advances.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        ranges = chunk_ranges(f, file_size, special_tokens, chunk_bytes)
    worth_forking = max(1, file_size // (MIN_CHUNKS_PER_WORKER * chunk_bytes))
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(ranges), worth_forking)) if CAN_FORK else 1
    groups = [ranges[i * len(ranges) // workers : (i + 1) * len(ranges) // workers] for i in range(workers)]

    def work(i: int, send: Callable[[bytes], None]) -> None:  # runs in worker i: groups[i + 1]
        result = count_ranges(path, groups[i + 1], special_tokens, lambda n: send(b"P%d" % n))
        send(b"R" + result.to_bytes())

    total = PretokenCounts()
    total.num_workers = workers
    bytes_done = 0

    def poll(pool: Workers, timeout: float) -> None:
        """Read what the workers have sent, waiting up to ``timeout`` for the first message."""
        nonlocal bytes_done
        while ready := pool.ready(timeout):
            timeout = 0  # then drain what is queued, so that no worker waits on a full pipe
            for i in ready:
                message = pool.receive(i)
                if message is None:  # finished
                    continue
                if message[:1] == b"P":
                    bytes_done += int(message[1:])
                else:
                    total.add(PretokenCounts.from_bytes(message[1:]))
        if progress is not None:
            progress(bytes_done, file_size)

    with Workers(workers - 1, work) as pool:

        def on_chunk(n: int) -> None:
            nonlocal bytes_done
            bytes_done += n
            poll(pool, 0)

        total.add(count_ranges(path, groups[0], special_tokens, on_chunk))
        while pool.running:
            poll(pool, 0.2)
    return total
