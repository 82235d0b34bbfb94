"""Byte-level BPE training: ``train_bpe`` (pre-tokenize, then merge).

The merge loop works on *distinct* pre-tokens ("words") with their counts, never on the text. Each
word is a list of symbol ids. Per merge, only the words that contain the merged pair are touched:

* ``pair_counts[pair]``: how often each adjacent pair occurs, weighted by word counts;
* ``pair_words[pair]``: the words in which the pair has occurred (a list that may hold stale or
  repeated entries; they are cheap to skip, cheaper than keeping a set per pair up to date);
* a heap of ``(-count, order key of a, order key of b, a, b)`` whose entries are checked when popped
  ("lazy invalidation"): an entry whose count is out of date is pushed again with the true count.

Ties go to the lexicographically greater pair of byte strings. Python's heap pops the *smallest*
entry, so each symbol gets an order key that sorts in the reverse order of its bytes: byte ``x``
becomes ``chr(255 - x)``, and a terminator ``chr(256)`` that sorts after every such character makes a
longer string (``b"ab"``) come before its prefix (``b"a"``), as ``b"ab" > b"a"`` requires.
"""

from __future__ import annotations

import heapq
import os
import time
import warnings
from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

from tokenizer.pretokenize import DEFAULT_CHUNK_BYTES, count_file

_REVERSE_BYTES = bytes(range(255, -1, -1))


def _order_key(token: bytes) -> str:
    """A string whose ascending order is the *descending* order of the byte strings."""
    return token.translate(_REVERSE_BYTES).decode("latin-1") + "\u0100"


class MergeResult(NamedTuple):
    """What the merge loop learned."""

    merges: list[tuple[bytes, bytes]]
    n_tokens: int  # pre-tokens' length in tokens after all merges, weighted by their counts


def bpe_merges(
    word_counts: dict[bytes, int], num_merges: int, progress: Callable[[int, int], None] | None = None
) -> MergeResult:
    """Learn up to ``num_merges`` merges from pre-token counts (fewer if no pair is left)."""
    symbols = [bytes([i]) for i in range(256)]  # symbol id -> bytes
    symbol_id = {s: i for i, s in enumerate(symbols)}  # bytes -> symbol id
    order_key = [_order_key(s) for s in symbols]

    words: list[list[int]] = []
    freqs: list[int] = []
    n_single = 0  # single-byte words never change; only their weight in n_tokens matters
    pair_counts: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], list[int]] = {}
    for token, count in word_counts.items():
        if len(token) < 2:
            n_single += count
            continue
        w = len(words)
        words.append(list(token))
        freqs.append(count)
        for pair in pairwise(token):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            pair_words.setdefault(pair, []).append(w)
    heap = [(-c, order_key[a], order_key[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges and heap:
        neg_count, key_a, key_b, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg_count:
            # Out of date. A lower true count is pushed back; a higher one already has its own entry.
            if 0 < count < -neg_count:
                heapq.heappush(heap, (-count, key_a, key_b, a, b))
            continue

        merged = symbols[a] + symbols[b]
        merges.append((symbols[a], symbols[b]))
        new = symbol_id.get(merged)  # two different merges can spell the same bytes: one symbol
        if new is None:
            new = symbol_id[merged] = len(symbols)
            symbols.append(merged)
            order_key.append(_order_key(merged))

        # Rewrite each word that holds the pair, noting how pair counts change: around each
        # occurrence, (prev, a) becomes (prev, new) and (b, next) becomes (new, next).
        changes: dict[tuple[int, int], int] = {}
        for w in set(pair_words.pop((a, b))):
            word, freq = words[w], freqs[w]
            out: list[int] = []
            i, n = 0, len(word)
            while i < n:
                if word[i] == a and i + 1 < n and word[i + 1] == b:
                    if out:
                        prev = out[-1]
                        changes[prev, a] = changes.get((prev, a), 0) - freq
                        changes[prev, new] = changes.get((prev, new), 0) + freq
                        pair_words.setdefault((prev, new), []).append(w)
                    if i + 2 < n:
                        after = word[i + 2]
                        changes[b, after] = changes.get((b, after), 0) - freq
                        changes[new, after] = changes.get((new, after), 0) + freq
                        pair_words.setdefault((new, after), []).append(w)
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out

        # Only pairs with `new` go up (they need a heap entry); the others go down (lazily handled).
        for pair, change in changes.items():
            count = pair_counts.get(pair, 0) + change
            if count > 0:
                pair_counts[pair] = count
                if change > 0:
                    heapq.heappush(heap, (-count, order_key[pair[0]], order_key[pair[1]], *pair))
            else:  # the pair occurs in no word any more
                pair_counts.pop(pair, None)
                pair_words.pop(pair, None)
        pair_counts.pop((a, b), None)
        if progress is not None:
            progress(len(merges), num_merges)

    n_tokens = n_single + sum(len(word) * freq for word, freq in zip(words, freqs, strict=True))
    return MergeResult(merges=merges, n_tokens=n_tokens)


class TrainResult(NamedTuple):
    """``train_bpe``'s result plus what the command line reports about the run."""

    vocab: dict[int, bytes]
    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str]
    n_bytes: int  # size of the input file
    n_tokens: int  # the input's length in tokens (each special token occurrence is one token)
    n_replaced: int  # invalid UTF-8 sequences replaced by U+FFFD
    num_workers: int  # processes that pre-tokenized
    pretokenize_seconds: float
    merge_seconds: float


def check_training_args(input_path: str | os.PathLike, vocab_size: int, special_tokens: list[str]) -> None:
    """Raise a one-line error naming the bad argument (before any work or output happens)."""
    path = os.fspath(input_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"input file {path} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"input {path} is a directory; expected a text file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"input file {path} is not readable")
    if os.path.getsize(path) == 0:
        raise ValueError(f"input file {path} is empty; expected some text to train on")
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special token {token!r} is not a non-empty string")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens {special_tokens!r} contain a duplicate")
    minimum = 256 + len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: expected at least {minimum} "
            f"(256 bytes + {len(special_tokens)} special tokens)"
        )


def train(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    pretokenize_progress: Callable[[int, int], None] | None = None,
    merge_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """``train_bpe`` with statistics and progress callbacks (what the command line shows).

    ``chunk_bytes`` is the size of one unit of pre-tokenizing work; tests move it to show that where
    the chunk boundaries fall changes nothing.
    """
    special_tokens = list(special_tokens)
    check_training_args(input_path, vocab_size, special_tokens)
    t0 = time.perf_counter()
    pretokens = count_file(
        input_path,
        special_tokens,
        num_workers=num_workers,
        chunk_bytes=chunk_bytes,
        progress=pretokenize_progress,
    )
    word_counts = {token.encode("utf-8"): count for token, count in pretokens.counts.items()}
    pretokens.counts.clear()
    t1 = time.perf_counter()
    result = bpe_merges(word_counts, vocab_size - 256 - len(special_tokens), merge_progress)
    t2 = time.perf_counter()

    vocab = {i: token.encode("utf-8") for i, token in enumerate(special_tokens)}
    vocab.update({len(special_tokens) + i: bytes([i]) for i in range(256)})
    for a, b in result.merges:
        vocab[len(vocab)] = a + b
    return TrainResult(
        vocab=vocab,
        merges=result.merges,
        special_tokens=special_tokens,
        n_bytes=os.path.getsize(input_path),
        n_tokens=result.n_tokens + pretokens.n_special,
        n_replaced=pretokens.n_replaced,
        num_workers=pretokens.num_workers,
        pretokenize_seconds=t1 - t0,
        merge_seconds=t2 - t1,
    )


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on a text file; return ``(vocab, merges)``.

    Vocab ids: the special tokens first (0..k-1), then the 256 single bytes, then one id per merge in
    the order learned. Each step merges the most frequent adjacent pair; ties go to the
    lexicographically greater ``(bytes_a, bytes_b)``. Training stops early, with fewer than
    ``vocab_size - 256 - k`` merges, once no pair is left (every pre-token is a single token).

    Pre-tokens are the encoder's (``tokenizer.splitting``: GPT-2's regex with tiktoken's Unicode
    classes), after the special tokens are cut out of the text, so no merge crosses or enters a
    special token. ``num_workers`` processes (default: all cores) count them.
    Invalid UTF-8 is replaced by U+FFFD, with a warning that gives the count.
    """
    result = train(input_path, vocab_size, special_tokens, num_workers=num_workers)
    if result.n_replaced:
        warnings.warn(
            f"{os.fspath(input_path)}: replaced {result.n_replaced} invalid UTF-8 sequence(s) with U+FFFD",
            stacklevel=2,
        )
    return result.vocab, result.merges
