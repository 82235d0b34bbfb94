"""BPE for many short pre-tokens at once: the same merges as ``Tokenizer._bpe``, array by array.

On web-like text most pre-tokens of a chunk are in the tokenizer's cache, but hundreds of thousands
of distinct rare words are not, and running the merge loop once per word in Python costs ~10 us each:
more than the rest of encoding. Here the misses of one chunk of text are merged together with NumPy.
Pre-tokens of one length ``L`` form a matrix (one row per pre-token, one column per symbol), and each
step does, for every row at once, what one step of the per-word loop does:

1. find the adjacent pair of lowest rank, leftmost on ties (``argmin`` returns the first minimum);
2. replace its left symbol by the merged token and close the gap: columns right of it shift left
   by one (``np.where`` against the column index);
3. look up the ranks of the two pairs that now touch the merged token; the others are unchanged.

Rows with no pair left drop out, and as every remaining row merged once, each holds one symbol fewer:
the matrix loses a column a step. So the work follows the merges actually done. A pair's rank is the
rank of the *concatenated bytes* (as in tiktoken and ``Tokenizer._bpe``), so the table of pairs
(``PairTable``) lists every split of every merge result into two tokens, not only the split its merge
used. The result is exactly ``Tokenizer._bpe``'s (tests/test_batch_merge.py).
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise, repeat
from operator import itemgetter

import numpy as np

_NO_RANK = np.int32(np.iinfo(np.int32).max)  # a pair that is not merged
_EMPTY = -1  # a free slot of the hash table
# Fibonacci hashing: key * this, top bits = slot. As an int64 (two's complement of 0x9E3779B97F4A7C15)
# the product wraps around exactly as in uint64 arithmetic, and no conversion is needed.
_GOLDEN = np.int64(0x9E3779B97F4A7C15 - (1 << 64))


class PairTable:
    """Every pair of ordinary tokens whose concatenation is a merge result, for vectorised lookups:
    ``rank(left, right)`` and ``merged[rank]``.

    ``encoder``: ordinary token bytes -> id; ``ranks``: merge result bytes -> rank (lower merges
    first). A pair is the key ``left * (n + 1) + right``, kept in an open-addressing hash table at most
    a quarter full: a lookup of a whole array of pairs is one gather and compare per probe, and nearly
    every pair is settled by the first probe (a binary search would take ~17 dependent gathers). A slot
    holds its key and rank in one int64, ``key << rank_bits | rank``, so the gather that finds the key
    brings the rank with it: one random memory access per pair instead of two (the table, 4 MB for
    GPT-2's merges, is far from the cache; this made a long-tailed encode ~1.5% faster).
    ``pad`` (= n, no token) marks the end of a row; the keys of its pairs, ``left * (n + 1) + n`` and
    ``n * (n + 1) + right``, are no pair's of two tokens, so they need no special case: never found.
    """

    def __init__(self, encoder: dict[bytes, int], ranks: dict[bytes, int]) -> None:
        self.n = max(encoder.values()) + 1
        n_ranks = max(ranks.values(), default=-1) + 1
        if not self.fits(self.n, n_ranks):
            raise ValueError(f"PairTable: {self.n} tokens and {n_ranks} merges overflow a 64-bit slot")
        self.pad = self.n
        self._base = self.n + 1
        merged = np.zeros(n_ranks, dtype=np.int32)
        merged[list(ranks.values())] = list(map(encoder.__getitem__, ranks))
        keys, key_ranks = _merge_splits(encoder, ranks, self._base)
        self.merged = merged  # rank -> id of the token that merge makes
        self.byte_ids = np.array([encoder[bytes([b])] for b in range(256)], dtype=np.int32)
        n_keys = len(keys)
        self._bits = max(4, (4 * n_keys).bit_length())
        self._rank_bits = max(1, n_ranks).bit_length()
        self._rank_mask = (1 << self._rank_bits) - 1
        self._held = np.full(1 << self._bits, _EMPTY, dtype=np.int64)  # key << _rank_bits | rank
        self._insert(keys, key_ranks)

    @staticmethod
    def fits(n_tokens: int, n_merges: int) -> bool:
        """Whether a pair key (< (n_tokens + 1)^2) and a rank fit one non-negative int64 together
        (vocabularies up to ~2M tokens)."""
        return ((n_tokens + 1) ** 2).bit_length() + max(1, n_merges).bit_length() <= 63

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _GOLDEN) >> (64 - self._bits)) & ((1 << self._bits) - 1)

    def _insert(self, keys: np.ndarray, key_ranks: np.ndarray) -> None:
        """Linear probing, all keys at once: each round, of the keys aiming at one free slot the first
        takes it, and the others (and those that found it taken) try the next slot."""
        slot, mask = self._slots(keys), (1 << self._bits) - 1
        while len(keys):
            free = self._held[slot] == _EMPTY
            _, first = np.unique(np.where(free, slot, -1), return_index=True)
            first = first[free[first]]
            self._held[slot[first]] = (keys[first] << self._rank_bits) | key_ranks[first]
            rest = np.ones(len(keys), dtype=bool)
            rest[first] = False
            keys, key_ranks, slot = keys[rest], key_ranks[rest], (slot[rest] + 1) & mask

    def rank(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Rank of each pair (``_NO_RANK`` if it is not merged, or if either side is padding)."""
        key = (left.astype(np.int64) * self._base + right).ravel()
        slot = self._slots(key)
        held = self._held[slot]
        shift, rank_mask, slot_mask = self._rank_bits, self._rank_mask, (1 << self._bits) - 1
        held_key = held >> shift  # -1 for a free slot (an arithmetic shift): never a key
        out = np.where(held_key == key, held & rank_mask, _NO_RANK)  # nearly all settled here
        todo = np.flatnonzero((held_key != key) & (held != _EMPTY))  # another key in that slot: probe on
        key, slot = key[todo], slot[todo]
        while len(todo):
            slot = (slot + 1) & slot_mask
            held = self._held[slot]
            found = (held >> shift) == key
            out[todo[found]] = held[found] & rank_mask
            going = ~found & (held != _EMPTY)
            todo, key, slot = todo[going], key[going], slot[going]
        return out.reshape(left.shape)


# Byte strings of at most this many bytes are packed into one int64 by ``_edge_packs``.
_PACKED_BYTES = 7


def _edge_packs(tokens: list[bytes], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and the last c bytes of each of ``tokens`` (``lengths`` theirs) as big-endian numbers,
    for c = 0 .. ``_PACKED_BYTES``: (prefix, suffix), each (len(tokens), 8) int64; a column c beyond a
    token's length holds nothing useful. With the length in the top byte, ``c << 56 | prefix[:, c]``
    names a byte string of c <= 7 bytes exactly: an integer key that NumPy can sort and search."""
    n = len(tokens)
    prefix = np.zeros((n, _PACKED_BYTES + 1), dtype=np.int64)
    suffix = np.zeros((n, _PACKED_BYTES + 1), dtype=np.int64)
    if not n:
        return prefix, suffix
    data = np.frombuffer(b"".join(tokens), dtype=np.uint8).astype(np.int64)  # all tokens, end to end
    starts = np.cumsum(lengths) - lengths
    last = len(data) - 1
    for c in range(1, _PACKED_BYTES + 1):
        has = lengths >= c  # the others' indices below point into a neighbour: masked out
        byte_c = np.where(has, data[np.minimum(starts + c - 1, last)], 0)  # the c-th byte
        byte_c_from_end = np.where(has, data[np.maximum(starts + lengths - c, 0)], 0)
        prefix[:, c] = (prefix[:, c - 1] << 8) | byte_c
        suffix[:, c] = suffix[:, c - 1] | (byte_c_from_end << (8 * (c - 1)))
    return prefix, suffix


def _merge_splits(
    encoder: dict[bytes, int], ranks: dict[bytes, int], base: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every split of every merge result into two tokens, as ``PairTable`` keys ``left * base + right``
    and the result's rank (a result has one rank, so no key repeats).

    A split of result t at ``cut`` needs the ids of t[:cut] and t[cut:], where they are tokens: for
    GPT-2's merges 270K cuts, and as two dictionary lookups of fresh slices per cut that took ~90 ms of
    the table's ~110, paid by every encoding worker that builds it. But most halves are short, and a
    half of at most 7 bytes is one integer (``_edge_packs``): the halves of all results at one cut are
    then one array, looked up with one ``searchsorted`` in the sorted keys of the tokens of 7 bytes or
    less. The results come sorted by length, so at each cut the ones longer than ``cut`` are a tail of
    the list, and those whose right half is longer than 7 bytes are a tail of that: only the halves of
    over 7 bytes (a tenth) take the dictionary lookups.
    """
    by_length = sorted(ranks, key=len)
    lengths = np.fromiter(map(len, by_length), dtype=np.int64, count=len(by_length))
    result_ranks = np.fromiter(map(ranks.__getitem__, by_length), dtype=np.int64, count=len(by_length))
    prefix, suffix = _edge_packs(by_length, lengths)
    # The tokens of at most _PACKED_BYTES bytes, by packed key: key -> id with one searchsorted.
    short = [token for token in encoder if len(token) <= _PACKED_BYTES]
    short_lengths = np.fromiter(map(len, short), dtype=np.int64, count=len(short))
    short_keys = (short_lengths << 56) | _edge_packs(short, short_lengths)[0][
        np.arange(len(short)), short_lengths
    ]
    order = np.argsort(short_keys)
    sorted_keys = short_keys[order]
    sorted_ids = np.fromiter(map(encoder.__getitem__, short), dtype=np.int64, count=len(short))[order]

    def short_ids(keys: np.ndarray) -> np.ndarray:  # the token id of each packed key, -1: no token
        # (never empty: the 256 one-byte tokens are short, and PairTable requires them)
        at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return np.where(sorted_keys[at] == keys, sorted_ids[at], -1)

    def long_ids(halves) -> np.ndarray:  # the same by dictionary, for halves of any length
        return np.fromiter(map(encoder.get, halves, repeat(-1)), dtype=np.int64)

    keys, key_ranks = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for cut in range(1, int(lengths.max(initial=1))):
        first = int(np.searchsorted(lengths, cut + 1))  # the results longer than `cut`
        if cut <= _PACKED_BYTES:
            left = short_ids((cut << 56) | prefix[first:, cut])
        else:
            left = long_ids(map(itemgetter(slice(None, cut)), by_length[first:]))
        rows = first + np.flatnonzero(left >= 0)  # only these can split into two tokens
        split = int(np.searchsorted(rows, np.searchsorted(lengths, cut + _PACKED_BYTES + 1)))
        short_rows, long_rows = rows[:split], rows[split:]  # right half of <= 7 bytes, of more
        right_lengths = lengths[short_rows] - cut
        right = np.concatenate(
            [
                short_ids((right_lengths << 56) | suffix[short_rows, right_lengths]),
                long_ids(map(itemgetter(slice(cut, None)), map(by_length.__getitem__, long_rows.tolist()))),
            ]
        )
        found = right >= 0
        keys.append(left[rows[found] - first] * base + right[found])
        key_ranks.append(result_ranks[rows[found]])
    return np.concatenate(keys), np.concatenate(key_ranks)


def merge_pieces(table: PairTable, pieces: list[bytes], dtype: np.dtype) -> list[bytes]:
    """Token ids of each of ``pieces`` (each >= 2 bytes, any lengths), as the raw bytes of a ``dtype``
    array (the form ``Tokenizer`` caches), merged a group of one length at a time. The groups are cut
    from one buffer of all the bytes by NumPy (no Python loop over the pieces to sort them), and each
    group's ids are written straight to their places in the result."""
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths  # where each piece's bytes begin in `data`
    order = np.argsort(lengths, kind="stable")  # piece indices, by length
    bounds = np.flatnonzero(np.diff(lengths[order], prepend=-1)).tolist() + [len(pieces)]
    out: list[bytes] = [b""] * len(pieces)
    for lo, hi in pairwise(bounds):
        rows = order[lo:hi]
        length = int(lengths[rows[0]])
        symbols = table.byte_ids[data[starts[rows, None] + np.arange(length)]]  # (rows, length)
        _merge_same_length(table, symbols, rows, out, np.dtype(dtype))
    return out


def _merge_same_length(
    table: PairTable, symbols: np.ndarray, rows: np.ndarray, out: list[bytes], dtype: np.dtype
) -> None:
    """Merge ``symbols`` (pieces, length) of one length >= 2 to the end; ``out[rows[i]]`` = the ids of
    row i as the bytes of a ``dtype`` array."""
    n, width = symbols.shape
    # Every step merges one pair in every working row, so after s steps every working row holds
    # exactly ``width = length - s`` symbols: the matrices shrink by a column a step, and a row that
    # stops merging has ``width`` tokens. ids: (rows, width + 1), the last column padding; ranks:
    # (rows, width), ranks[:, c] is the pair (ids[:, c], ids[:, c + 1]), the last one always _NO_RANK.
    ids = np.full((n, width + 1), table.pad, dtype=np.int32)
    ids[:, :width] = symbols
    ranks = np.full((n, width), _NO_RANK, dtype=np.int32)
    ranks[:, : width - 1] = table.rank(ids[:, : width - 1], ids[:, 1:width])
    while len(rows):
        at = ranks.argmin(axis=1)  # (rows,) the lowest rank, leftmost on ties
        k = np.arange(len(rows))
        best = ranks.ravel()[k * width + at]
        live = best != _NO_RANK
        if not live.all():  # rows with no pair left to merge are done: out, a bytes object per row
            # Seen as one opaque item of `width` ids ("V": raw bytes), a row converts to one bytes
            # object in C (tolist), with no Python int made per id.
            done = ids[~live, :width].astype(dtype).view(f"V{width * dtype.itemsize}").ravel()
            deque(map(out.__setitem__, rows[~live].tolist(), done.tolist()), 0)
            rows, ids, ranks, at, best = rows[live], ids[live], ranks[live], at[live], best[live]
            k = np.arange(len(rows))
            if not len(rows):
                break
        merged = table.merged[best]
        np.put(ids, k * (width + 1) + at, merged)  # by flat index: cheaper than a 2-D (k, at) index
        # Close the gap: the symbols right of the merged one, and the pairs from the merged one on,
        # move one column left, and the last column (padding, _NO_RANK) is dropped.
        after = at[:, None]
        ids = np.where(np.arange(width) > after, ids[:, 1:], ids[:, :width])
        ranks = np.where(np.arange(width - 1) >= after, ranks[:, 1:], ranks[:, : width - 1])
        width -= 1
        # The two pairs that now touch the merged token: (left neighbour, merged) and (merged, right).
        flat_ids = ids.ravel()
        at_id, at_rank = k * (width + 1) + at, k * width + at  # the merged token, its pair to the right
        left = np.flatnonzero(at)
        np.put(ranks, at_rank[left] - 1, table.rank(flat_ids[at_id[left] - 1], merged[left]))
        np.put(ranks, at_rank, table.rank(merged, flat_ids[at_id + 1]))
