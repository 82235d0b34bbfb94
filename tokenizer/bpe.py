"""Byte-level BPE training: ``train_bpe`` (pre-tokenize, then merge).

The merge loop works on *distinct* pre-tokens ("words") with their counts, never on the text, and per
merge it touches only the words that hold the merged pair. On web-like text there are hundreds of
thousands of distinct words and a few million (word, merge) touches in a run, so what is done per
touch decides the speed: a Python statement per touch costs seconds. Here nothing is: each merge is a
handful of whole-array steps, run in C by ``str`` methods, ``map`` and NumPy.

* **A word is a ``str`` with one character per symbol**: symbol id ``i`` is ``chr(i)``, and the 256
  bytes are the first 256 code points, so a word starts as ``token.decode("latin-1")``. Merging the
  pair ``(a, b)`` into the new symbol ``X`` is ``word.replace(a + b, X)``: leftmost non-overlapping
  occurrences first, which is exactly BPE's rule. Whether a word holds the pair is ``a + b in word``.
  The words live in a NumPy array of objects, so the holders of a pair are gathered, tested, merged
  and stored back in one call each.
* **Which words hold a pair**: for the pairs of two bytes, an index built once (``_BytePairIndex``);
  for a pair with a merged symbol, ``_NewPairIndex``, one batch per merge of the pairs it created and
  the words it gave them (a pair with ``X`` only ever appears where a merge puts ``X``, or puts a
  symbol next to ``X``). Entries go stale as words change; they are cheaper to test than to remove.
* **How pair counts change** is read off the merged words: laid end to end as one array of code
  points (``_CodePoints``), every ``X`` has its neighbours right beside it, and each change follows from
  the neighbours alone (``_pair_changes``): ``(c, a)`` became ``(c, X)``, ``(b, c)`` became ``(X, c)``,
  and each occurrence used up one ``(a, b)``. A merge that touches only a few words (most merges of a
  low-diversity corpus) applies the same rules in plain Python instead (``_few_changes``): there
  NumPy's cost per call, not the work, would dominate.

Pairs are integers ``a << 21 | b`` (code points need 21 bits). A heap of ``(-count, order key of a,
order key of b, pair)`` gives the next merge; entries are checked when popped ("lazy invalidation"):
one whose count is out of date is pushed again with the true count.

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
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from itertools import accumulate, chain, compress, repeat
from typing import NamedTuple

import numpy as np

from tokenizer.pretokenize import DEFAULT_CHUNK_BYTES, count_file

_REVERSE_BYTES = bytes(range(255, -1, -1))
_SEPARATOR = 0x10FFFF  # the code point between words laid end to end; symbol ids stay below it
_SHIFT = 21  # pair = a << 21 | b
_LOW = (1 << _SHIFT) - 1
_FEW_WORDS = 32  # a merge touching at most this many words is done in plain Python (_few_changes)


def _order_key(token: bytes) -> str:
    """A string whose ascending order is the *descending* order of the byte strings."""
    return token.translate(_REVERSE_BYTES).decode("latin-1") + "\u0100"


class MergeResult(NamedTuple):
    """What the merge loop learned."""

    merges: list[tuple[bytes, bytes]]
    n_tokens: int  # pre-tokens' length in tokens after all merges, weighted by their counts


class _CodePoints:
    """Some words laid end to end as one array of code points, each word followed by the separator.

    ``codes[i]`` is a symbol id (or the separator) and ``word[i]`` the index of the word it belongs
    to, so NumPy can look at every position of every word at once.
    """

    def __init__(self, words: list[str]) -> None:
        sep = chr(_SEPARATOR)
        text = sep.join(words) + sep
        # utf-32 is one 4-byte unit per code point; "surrogatepass" lets symbol ids 0xD800-0xDFFF through.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        self.codes = codes.astype(np.int64)  # (positions,)
        ends = self.codes == _SEPARATOR
        self.word = np.cumsum(ends) - ends  # (positions,) which word each position is in

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every adjacent pair inside a word: (pair codes, index of the word holding it)."""
        left, right = self.codes[:-1], self.codes[1:]
        inside = (left != _SEPARATOR) & (right != _SEPARATOR)
        return (left[inside] << _SHIFT) | right[inside], self.word[:-1][inside]


class _BytePairIndex:
    """The count of every pair of two bytes, and which words hold it, computed once.

    All words laid end to end are one array of bytes; each position whose neighbour is in the same
    word holds the pair ``256 * a + b``, a 16-bit number. Sorting the positions by pair (stably, so
    word ids stay ascending within a pair; NumPy's stable sort of 16-bit keys is a radix sort, linear
    time) puts the holders of each pair in one slice of ``_owners``; ``words_with`` reads it.
    """

    def __init__(self, words: list[str], freqs: np.ndarray) -> None:
        data = np.frombuffer("".join(words).encode("latin-1"), dtype=np.uint8)  # every char is a byte
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        word_of = np.repeat(np.arange(len(words), dtype=np.int32), lengths)  # (positions,)
        inside = word_of[:-1] == word_of[1:]  # the pair at position i lies within one word
        codes = (data[:-1].astype(np.uint16) << 8 | data[1:])[inside]
        owners = word_of[:-1][inside]
        del word_of, inside
        # (bincount is ~10x faster given intp and float64 than converting them itself)
        weights = freqs[owners].astype(np.float64)  # exact: counts stay far below 2**53
        self.counts = np.bincount(codes.astype(np.intp), weights, minlength=1 << 16).astype(np.int64)
        order = np.argsort(codes, kind="stable")
        codes, owners = codes[order], owners[order]
        del order
        # A word holding a pair twice is listed once: drop repeats of (pair, word), which are adjacent.
        first = np.ones(len(codes), dtype=bool)
        first[1:] = (codes[1:] != codes[:-1]) | (owners[1:] != owners[:-1])
        codes, self._owners = codes[first], owners[first]
        self._starts = np.searchsorted(codes, np.arange((1 << 16) + 1))  # pair code -> first slot

    def words_with(self, a: int, b: int) -> np.ndarray:
        code = 256 * a + b
        return self._owners[self._starts[code] : self._starts[code + 1]]


def _sum_by_pair(pairs: np.ndarray, amounts: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Add up ``amounts`` per distinct pair; the pairs whose total is not zero, with their totals."""
    unique, inverse = np.unique(pairs, return_inverse=True)
    totals = np.bincount(inverse, weights=amounts, minlength=len(unique))  # exact: far below 2**53
    changed = totals != 0
    return unique[changed].tolist(), totals[changed].astype(np.int64)


def _pair_changes(
    merged: _CodePoints, weights: np.ndarray, a: int, b: int, new: int
) -> tuple[list[int], np.ndarray]:
    """How the weighted pair counts change when ``a b`` became ``new`` in some words (``merged``, the
    words after the merge; ``weights``, their counts), as ``_sum_by_pair`` gives them.

    Every pair that changes touches a ``new``. Around each occurrence, ``(c, a)`` became ``(c, new)``
    and ``(b, c)`` became ``(new, c)``; where two occurrences meet (``abab`` -> ``XX``), ``(b, a)``
    became ``(new, new)``, counted once, as the left neighbour of the second; and each occurrence used
    up one ``(a, b)``. Only valid when no word held ``new`` before this merge.
    """
    codes = merged.codes
    at = np.flatnonzero(codes == new)  # (occurrences,); never at either end: a separator follows
    weight = weights[merged.word[at]]
    left, right = codes[at - 1], codes[at + 1]
    has_left = left != _SEPARATOR  # at == 0 reads codes[-1], the last separator: no left neighbour
    has_right = (right != _SEPARATOR) & (right != new)
    left_before = np.where(left == new, b, left)[has_left]  # what the left neighbour was next to a
    pairs = np.concatenate(
        [
            (left[has_left] << _SHIFT) | new,
            (left_before << _SHIFT) | a,
            (new << _SHIFT) | right[has_right],
            (b << _SHIFT) | right[has_right],
            [(a << _SHIFT) | b],
        ]
    )
    wl, wr = weight[has_left], weight[has_right]
    amounts = np.concatenate([wl, -wl, wr, -wr, [-weight.sum()]]).astype(np.float64)
    return _sum_by_pair(pairs, amounts)


def _few_changes(
    merged: list[str], weights: list[int], ids: list[int], a: int, b: int, new: int
) -> tuple[list[int], np.ndarray, dict[int, list[int]]]:
    """``_pair_changes`` and ``_NewPairIndex.add`` for a merge that touched few words, one occurrence
    at a time in plain Python: the same rules, without NumPy's cost per call, which is what a merge of
    a few words would mostly pay (most merges of a low-diversity corpus touch a handful of words).
    Returns the changed pairs, their changes, and the words holding each pair with ``new``."""
    changes: defaultdict[int, int] = defaultdict(int)
    holders: defaultdict[int, list[int]] = defaultdict(list)
    symbol = chr(new)
    for word, weight, w in zip(merged, weights, ids, strict=True):
        at = word.find(symbol)
        while at >= 0:
            if at > 0:  # (c, a) became (c, new); (b, a) became (new, new) where two occurrences meet
                left = ord(word[at - 1])
                changes[left << _SHIFT | new] += weight
                changes[(b if left == new else left) << _SHIFT | a] -= weight
                holders[left << _SHIFT | new].append(w)
            if at + 1 < len(word):  # (b, c) became (new, c); (new, new) was counted as a left
                right = ord(word[at + 1])
                if right != new:
                    changes[new << _SHIFT | right] += weight
                    changes[b << _SHIFT | right] -= weight
                holders[new << _SHIFT | right].append(w)
            changes[a << _SHIFT | b] -= weight  # each occurrence used up one (a, b)
            at = word.find(symbol, at + 1)
    changed = [p for p, change in changes.items() if change]
    return (
        changed,
        np.fromiter(map(changes.__getitem__, changed), dtype=np.int64, count=len(changed)),
        holders,
    )


def _recount_changes(
    before: _CodePoints, after: _CodePoints, weights: np.ndarray
) -> tuple[list[int], np.ndarray]:
    """The same as ``_pair_changes`` by counting every pair of the words before and after the merge:
    for a merge whose symbol some words already held (two merges can spell the same bytes)."""
    old, old_word = before.pairs()
    new, new_word = after.pairs()
    amounts = np.concatenate([-weights[old_word], weights[new_word]]).astype(np.float64)
    return _sum_by_pair(np.concatenate([old, new]), amounts)


class _NewPairIndex:
    """Which words each merge gave a pair with its new symbol, kept per symbol.

    A pair with a merged symbol ``X`` only appears where a merge creates ``X`` next to something, or
    creates a symbol next to ``X``; so the holders of ``(p, q)`` are among the words that the merges
    creating ``p`` or ``q`` gave that pair. Each merge adds one *batch* for its new symbol: its new
    pairs, sorted, and for each the words that got it. A lookup is a binary search per batch of the
    two symbols: no Python work per pair or per word when the index grows.
    """

    def __init__(self) -> None:
        # symbol -> batches of (sorted distinct pairs, where each pair's words start in owners, owners)
        self._batches: defaultdict[int, list[tuple[list[int], list[int], np.ndarray]]] = defaultdict(list)

    def add(self, merged: _CodePoints, ids: np.ndarray, new: int) -> None:
        """Note the pairs with ``new`` in some merged words (``ids``: their word ids)."""
        codes = merged.codes
        at = np.flatnonzero(codes == new)  # (occurrences,)
        owner = ids[merged.word[at]]
        left, right = codes[at - 1], codes[at + 1]
        has_left, has_right = left != _SEPARATOR, right != _SEPARATOR
        pairs = np.concatenate([(left[has_left] << _SHIFT) | new, (new << _SHIFT) | right[has_right]])
        if len(pairs) == 0:
            return
        owners = np.concatenate([owner[has_left], owner[has_right]])
        order = np.argsort(pairs, kind="stable")
        pairs, owners = pairs[order], owners[order]
        unique, starts = np.unique(pairs, return_index=True)
        self._batches[new].append((unique.tolist(), [*starts.tolist(), len(pairs)], owners))

    def add_pairs(self, new: int, holders: dict[int, list[int]]) -> None:
        """The same as ``add``, given the word ids of each pair with ``new`` (see ``_few_changes``)."""
        pairs = sorted(holders)
        starts = [0, *accumulate(len(holders[p]) for p in pairs)]
        owners = np.fromiter(chain.from_iterable(holders[p] for p in pairs), dtype=np.int64, count=starts[-1])
        self._batches[new].append((pairs, starts, owners))

    def words_with(self, a: int, b: int) -> np.ndarray:
        """The ids of the words that may hold the pair ``(a, b)`` (sorted, without repeats)."""
        pair = a << _SHIFT | b
        found = []
        for symbol in {a, b}:
            for pairs, starts, owners in self._batches.get(symbol, ()):
                i = bisect_left(pairs, pair)
                if i < len(pairs) and pairs[i] == pair:
                    found.append(owners[starts[i] : starts[i + 1]])
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)


def bpe_merges(
    word_counts: dict[bytes, int], num_merges: int, progress: Callable[[int, int], None] | None = None
) -> MergeResult:
    """Learn up to ``num_merges`` merges from pre-token counts (fewer if no pair is left)."""
    if 256 + num_merges >= _SEPARATOR:
        raise ValueError(f"num_merges={num_merges} is too large: expected fewer than {_SEPARATOR - 256}")
    symbols = [bytes([i]) for i in range(256)]  # symbol id -> bytes
    symbol_id = {s: i for i, s in enumerate(symbols)}  # bytes -> symbol id
    order_key = [_order_key(s) for s in symbols]

    tokens = list(word_counts)
    all_counts = np.fromiter(word_counts.values(), dtype=np.int64, count=len(tokens))
    longer = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)) >= 2
    n_single = int(all_counts[~longer].sum())  # single-byte words never change: only their weight counts
    # one character per symbol: byte i -> chr(i) (map and compress: no Python statement per word)
    text_words = list(map(bytes.decode, compress(tokens, longer.tolist()), repeat("latin-1")))
    freqs = all_counts[longer]  # word id -> its count
    del tokens, all_counts
    byte_pairs = _BytePairIndex(text_words, freqs)
    words = np.empty(len(text_words), dtype=object)  # word id -> the word; gathered and stored in bulk
    words[:] = text_words
    del text_words

    pair_counts = {  # pair -> occurrences, weighted by word counts
        (code >> 8) << _SHIFT | (code & 255): int(byte_pairs.counts[code])
        for code in np.flatnonzero(byte_pairs.counts).tolist()
    }
    new_pairs = _NewPairIndex()  # who holds the pairs with a merged symbol
    heap = [(-c, order_key[p >> _SHIFT], order_key[p & _LOW], p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    def push(pairs: list[int], totals: list[int]) -> None:
        for p, total in zip(pairs, totals, strict=True):
            heapq.heappush(heap, (-total, order_key[p >> _SHIFT], order_key[p & _LOW], p))

    # Most pairs a merge creates are rare and will never be merged; a heap entry for each would cost
    # more than the rest of the merge. Pairs counted below `floor` wait in `deferred` instead (repeats
    # and stale entries allowed); the heap is only trusted while its best count is at least `floor`,
    # and when it falls below, `floor` is lowered and the waiting pairs that reach it are pushed.
    # Nothing can overtake: a pair's count is set when a merge creates it and only falls afterwards.
    floor = -heap[0][0] // 1024 if heap else 0  # a start; lowered 4x at a time
    deferred: list[int] = []

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges:
        if not heap or -heap[0][0] < floor:
            if floor == 0:
                break  # no pair is left
            floor //= 4
            waiting = np.fromiter(
                map(pair_counts.get, deferred, repeat(0)), dtype=np.int64, count=len(deferred)
            )
            rise = waiting >= max(floor, 1)
            push(list(compress(deferred, rise.tolist())), waiting[rise].tolist())
            deferred = list(compress(deferred, ((waiting > 0) & ~rise).tolist()))
            continue
        neg_count, key_a, key_b, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:
            # Out of date. A lower true count goes back; a higher one already has its own entry.
            if 0 < count < -neg_count and count >= floor:
                heapq.heappush(heap, (-count, key_a, key_b, pair))
            elif 0 < count < floor:
                deferred.append(pair)
            continue

        a, b = pair >> _SHIFT, pair & _LOW
        merges.append((symbols[a], symbols[b]))
        merged = symbols[a] + symbols[b]
        new = symbol_id.get(merged)  # two different merges can spell the same bytes: one symbol
        seen_before = new is not None
        if new is None:
            new = symbol_id[merged] = len(symbols)
            symbols.append(merged)
            order_key.append(_order_key(merged))

        # The words that may hold the pair; those that no longer do fail the `in` test.
        candidates = byte_pairs.words_with(a, b) if a < 256 and b < 256 else new_pairs.words_with(a, b)
        pair_text, new_text = chr(a) + chr(b), chr(new)
        candidate_words = words[candidates]
        held = np.fromiter(
            map(str.__contains__, candidate_words, repeat(pair_text)), dtype=bool, count=len(candidates)
        )
        ids = candidates[held]
        old_words = candidate_words[held].tolist()  # the words already gathered, not a second gather
        new_words = list(map(str.replace, old_words, repeat(pair_text), repeat(new_text)))
        words[ids] = new_words

        if len(ids) <= _FEW_WORDS and not seen_before:
            changed, changes, holders = _few_changes(new_words, freqs[ids].tolist(), ids.tolist(), a, b, new)
            new_pairs.add_pairs(new, holders)
        else:
            after = _CodePoints(new_words)
            if seen_before:
                changed, changes = _recount_changes(_CodePoints(old_words), after, freqs[ids])
            else:
                changed, changes = _pair_changes(after, freqs[ids], a, b, new)
            new_pairs.add(after, ids, new)

        # All counts at once (C-level map and dict.update); only pairs with `new` go up and need a heap
        # entry, the others go down (lazily handled). A pair at zero occurs in no word any more.
        current = np.fromiter(map(pair_counts.get, changed, repeat(0)), dtype=np.int64, count=len(changed))
        totals = (current + changes).tolist()
        pair_counts.update(zip(changed, totals, strict=True))
        for p in compress(changed, (current + changes <= 0).tolist()):
            del pair_counts[p]
        rising = changes > 0
        high = rising & (current + changes >= floor)
        push(list(compress(changed, high.tolist())), list(compress(totals, high.tolist())))
        deferred.extend(compress(changed, (rising & ~high).tolist()))
        if progress is not None:
            progress(len(merges), num_merges)

    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    return MergeResult(merges=merges, n_tokens=n_single + int(lengths @ freqs))


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
    # pre-token as UTF-8 -> count (map and zip: no Python statement per pre-token, ~0.2 s on the long tail)
    word_counts = dict(zip(map(str.encode, pretokens.counts), pretokens.counts.values(), strict=True))
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
