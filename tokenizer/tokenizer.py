"""``Tokenizer``: byte-level BPE encode / decode, with the same ids as tiktoken for the same vocabulary.

Encoding a text is three steps:

1. cut out special tokens (longest first where several match at one place);
2. split the rest into pre-tokens with GPT-2's regex,
   ``'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``;
3. turn each pre-token into ids: a pre-token that is itself a token is that token, otherwise its bytes
   are merged pair by pair, always the pair whose merge has the lowest rank, leftmost on ties.

Step 3 is what tiktoken does. A pair's rank is the position in ``merges`` of the merge that makes
its concatenation; tiktoken ranks by token id instead, which orders alike whenever every multi-byte
token is a merge result numbered in merge order (GPT-2's files, ``train_bpe``'s output).

Step 3 is slow in Python, but text is Zipfian: a few thousand distinct pre-tokens make up most of
any corpus. So a dict maps pre-token -> ids, and the BPE runs only on a miss. The ids are kept as
the raw bytes of an array of ``id_dtype`` (uint16, or uint32 for a vocabulary over 65,536), so the
ids of a whole batch of pre-tokens are one ``b"".join`` of their cached values (C, a memcpy each),
viewed as an array by NumPy, with no Python int made per id on the way to ``encode_to_numpy`` or
``encode_file``. The dict holds two
generations of at most ``cache_size / 2`` entries each, which bounds memory on any input. Web-like
text has a long tail of rare words that miss anyway: the pre-tokens of up to ``_WINDOW`` are looked
up together (a C-level ``map``; a miss leaves a placeholder), their misses merged together, with
NumPy (``tokenizer.batch_merge``), several times faster than one word at a time, and the
placeholders filled in place.

Steps 1 and 2 (and where a text may be cut for streaming) live in ``tokenizer.splitting``, which
BPE training uses too: a tokenizer is applied with exactly the segmentation it was trained on.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Set
from functools import cached_property
from itertools import compress, islice, repeat
from operator import is_, not_
from pathlib import Path
from typing import Literal

import numpy as np

from tokenizer import io
from tokenizer.batch_merge import PairTable, merge_pieces
from tokenizer.files import EOT, read_json, write_json
from tokenizer.splitting import last_cut, pretokenize, special_regex

# Pre-tokens; ~140 bytes each (measured on long-tailed text: key 60, packed ids 43, dict slot 37; a
# tuple of int objects took 80 for the ids), so at most ~150 MB per process. A turnover of the
# generations is costly (the next window's every pre-token misses the new one and is fetched back
# from the old): 2^20 holds the ~420K distinct pre-tokens of 20 MB of long-tailed text without one, and
# encodes it at 0.51x tiktoken against 0.36x with 2^18 (medians of 4 interleaved runs).
DEFAULT_CACHE_SIZE = 1 << 20
_MAX_CACHED_CHARS = 256  # longer pre-tokens (long runs of spaces, ...) are rare: not worth the memory
_WINDOW = 1 << 18  # pre-tokens whose cache misses are merged together
_BATCH_MIN = 128  # fewer misses than this: one by one (a batch costs ~20 NumPy calls per merge step)
_BATCH_MAX_BYTES = 32  # longer misses (rare) are merged one by one
_TABLE_AFTER = 1 << 15  # misses merged one by one before the batch's pair table (~0.1 s for GPT-2) is built

AllowedSpecial = Literal["all", "none", "none_raise"] | Set[str]


class _PieceCache(dict):
    """Pre-token -> its token ids (a bytearray of an ``id_dtype`` array's bytes), looked up a batch at
    a time by ``Tokenizer._emit`` with ``map(cache.__getitem__, pieces)``: a hit costs no Python call.

    A miss calls ``__missing__`` (from C). A pre-token of the previous generation is moved back; any
    other gets a placeholder, an empty ``bytearray``, put in the cache (so its later occurrences in
    the batch are hits) and recorded in ``pending``. Once the batch is looked up, ``Tokenizer`` merges
    all the pending pre-tokens together and extends each placeholder with its ids in place (a bytearray
    joins like bytes); the filled placeholders stay in the cache as the ids (``store``). So the misses
    of a batch cost one Python call each, need no search for them, and leave no holes to fill in a
    second pass. Replacing each placeholder by an immutable ``bytes`` copy cost a second dictionary
    store per miss and the freeing of the bytearray: ~6% of a long-tailed encode (20 MB, 420K
    distinct pre-tokens: median 2.65 -> 2.47 s of 6 interleaved runs) for ~25 bytes less per entry
    (10 MB there).
    A batch that fails (text that does not encode) takes its placeholders back out (``discard``).

    Two generations bound the memory without forgetting everything at once: when, after a batch, this
    dict holds more than ``max_entries // 2`` pre-tokens, the last ``max_entries // 2`` become the
    ``previous`` generation (the one before is dropped) and this one starts empty. Frequent
    pre-tokens thus survive a turnover, which on long-tailed text saves re-merging them. Within a
    batch the dict may hold one batch's misses more.
    """

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.generation = max(1, max_entries // 2)  # entries per generation; two at most
        self.previous: dict[str, bytearray] = {}
        self.pending: list[str] = []  # the misses of the batch being looked up, which have placeholders
        self.placeholders: list[bytearray] = []  # theirs, in the same order

    def __missing__(self, piece: str) -> bytearray:
        ids = self.previous.get(piece)
        if ids is None:
            ids = bytearray()
            self.pending.append(piece)
            self.placeholders.append(ids)
        self[piece] = ids
        return ids

    def store(self) -> None:
        """Keep the ``pending`` pre-tokens, their placeholders now filled, but for pre-tokens over
        ``_MAX_CACHED_CHARS`` (long runs of spaces and the like: rare, and not worth the memory); then
        a new generation if this one is full."""
        pieces, self.pending, self.placeholders = self.pending, [], []
        if max(map(len, pieces), default=0) > _MAX_CACHED_CHARS:
            long = compress(pieces, map(_MAX_CACHED_CHARS.__lt__, map(len, pieces)))
            deque(map(self.pop, long), 0)
        if len(self) > self.generation:
            self.previous = dict(islice(self.items(), len(self) - self.generation, None))
            self.clear()

    def discard(self) -> None:
        """Take the ``pending`` pre-tokens' placeholders out."""
        pieces, self.pending, self.placeholders = self.pending, [], []
        deque(map(self.pop, pieces, repeat(None)), 0)


class Tokenizer:
    """Byte-level BPE over ``vocab`` (id -> bytes, ids 0..n-1) and ``merges`` (in rank order).

    ``special_tokens`` are strings whose UTF-8 bytes must be in ``vocab``; in text they are matched
    before pre-tokenization and become their own id (see ``encode`` for the control over that).
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.vocab = dict(vocab)
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.special_tokens = list(dict.fromkeys(special_tokens or []))
        if not all(isinstance(t, str) and t for t in self.special_tokens):
            raise ValueError(f"special tokens must be non-empty strings, got {self.special_tokens!r}")
        n = len(self.vocab)
        if sorted(self.vocab) != list(range(n)):
            missing = next(i for i in range(n) if i not in self.vocab)
            raise ValueError(f"vocabulary ids must be 0..{n - 1} without gaps; id {missing} is missing")
        ids_of: dict[bytes, int] = {}
        for i, token in self.vocab.items():
            if token in ids_of:
                raise ValueError(f"vocabulary ids {ids_of[token]} and {i} are both the token {token!r}")
            ids_of[token] = i
        self.special_ids = {}
        for token in self.special_tokens:
            if token.encode("utf-8") not in ids_of:
                raise ValueError(f"special token {token!r} is not in the vocabulary")
            self.special_ids[token] = ids_of[token.encode("utf-8")]
        # Ordinary text never encodes to a special token's id, even if a pre-token spells one.
        special_id_set = set(self.special_ids.values())
        self._encoder = {t: i for t, i in ids_of.items() if i not in special_id_set}
        for b in range(256):
            if bytes([b]) not in self._encoder:
                raise ValueError(f"vocabulary lacks the single byte {b:#04x} (byte-level BPE needs all 256)")
        self._ranks: dict[bytes, int] = {}
        for rank, (a, b) in enumerate(self.merges):
            for part in (a, b, a + b):
                if part not in self._encoder:
                    raise ValueError(f"merge {rank} ({a!r}, {b!r}): {part!r} is not an ordinary token")
            self._ranks.setdefault(a + b, rank)
        self._special_re = special_regex(self.special_tokens)
        self._any_special_re = special_regex(self.special_tokens, overlapping=True)
        self._subset_res: dict[frozenset[str], tuple[re.Pattern[str] | None, re.Pattern[str] | None]] = {}
        # Token ids as stored (the cache, encode_file's arrays): the smallest unsigned type that holds them.
        self.id_dtype = np.dtype(np.uint16 if n <= 1 << 16 else np.uint32)
        self._special_packed = {token: self._pack((i,)) for token, i in self.special_ids.items()}
        self._cache = _PieceCache(cache_size)
        self._misses_seen = 0  # distinct pre-tokens that missed the cache, over all calls
        self._cache_size = cache_size

    def __reduce__(self):
        # Worker processes get the definition, not the compiled regexes or the cache.
        return (_rebuild, (self.vocab, self.merges, self.special_tokens, self._cache_size))

    # ----- files -------------------------------------------------------------------------------

    @classmethod
    def from_files(
        cls,
        vocab_path: str | os.PathLike,
        merges_path: str | os.PathLike,
        special_tokens: list[str] | None = None,
    ) -> Tokenizer:
        """From GPT-2-format ``vocab.json`` and ``merges.txt`` (validated: see ``tokenizer.io``)."""
        vocab = io.read_vocab_json(vocab_path, special_tokens or ())
        merges = io.read_merges_txt(merges_path, vocab, vocab_path)
        known = set(vocab.values())
        for token in special_tokens or []:
            if token.encode("utf-8") not in known:
                raise ValueError(f"{vocab_path}: special token {token!r} is not in the vocabulary")
        return cls(vocab, merges, special_tokens)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """From a folder written by ``save``; ``meta.json`` names the special tokens and the hash."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found (a tokenizer folder from Tokenizer.save; for bare GPT-2 files use "
                "Tokenizer.from_files(vocab, merges, special_tokens))"
            )
        meta = read_json(meta_path, "tokenizer metadata")
        specials = meta.get("special_tokens", []) if isinstance(meta, dict) else None
        if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
            raise ValueError(f"{meta_path}: 'special_tokens' must be a list of strings, got {specials!r}")
        tok = cls.from_files(path / "vocab.json", path / "merges.txt", specials)
        if meta.get("hash", tok.fingerprint) != tok.fingerprint:
            raise ValueError(
                f"{meta_path}: hash {meta['hash'][:16]}... does not match vocab.json + merges.txt "
                f"({tok.fingerprint[:16]}...); the files were changed after saving"
            )
        return tok

    def save(self, out_dir: str | os.PathLike, extra_meta: dict | None = None) -> Path:
        """Write vocab.json, merges.txt, tokenizer.json (Hugging Face) and meta.json to ``out_dir``."""
        out_dir = Path(out_dir)
        meta = {
            "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size,
            "hash": self.fingerprint,
        }
        clash = sorted(set(meta) & set(extra_meta or {}))
        if clash:
            raise ValueError(f"extra_meta may not override {clash}")
        out_dir.mkdir(parents=True, exist_ok=True)
        io.write_vocab_json(out_dir / "vocab.json", self.vocab, self.special_tokens)
        io.write_merges_txt(out_dir / "merges.txt", self.merges)
        io.write_hf_tokenizer_json(out_dir / "tokenizer.json", self.vocab, self.merges, self.special_tokens)
        write_json(out_dir / "meta.json", meta | (extra_meta or {}))
        return out_dir

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of vocab + merges + special tokens: names this tokenizer in caches of its outputs."""
        canonical = {
            "vocab": [self.vocab[i].hex() for i in range(self.vocab_size)],
            "merges": [[a.hex(), b.hex()] for a, b in self.merges],
            "special_tokens": self.special_tokens,
        }
        return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()

    # ----- lookups -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>`` when it is a special token (documents are separated by it)."""
        return self.special_ids.get(EOT)

    def token_to_id(self, token: str) -> int:
        """Id of a special token, or of an ordinary token given as its text."""
        if token in self.special_ids:
            return self.special_ids[token]
        try:
            return self._encoder[token.encode("utf-8")]
        except KeyError:
            raise ValueError(f"{token!r} is not a token of this vocabulary") from None

    # ----- encoding ----------------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special: AllowedSpecial = "all") -> list[int]:
        """Token ids of ``text``.

        ``allowed_special`` says what a special token's spelling in the text means:
        ``"all"`` (default): that special token; ``"none"``: ordinary text (as tiktoken's
        ``encode_ordinary``); ``"none_raise"``: an error; a set of special tokens: those are special,
        the others ordinary text. The default differs from tiktoken's (which raises) on purpose: the
        text we encode is training data in which ``<|endoftext|>`` *is* the document separator, and
        ``encode_file`` / ``encode_iterable`` must give the ids ``encode`` gives. Text from untrusted
        sources should be encoded with ``"none"`` or ``"none_raise"``.
        """
        return self.encode_to_numpy(text, allowed_special=allowed_special).tolist()

    def encode_to_numpy(self, text: str, *, allowed_special: AllowedSpecial = "all") -> np.ndarray:
        """``encode(text)`` as a 1-d array of ``id_dtype``: what a token file stores, without a Python
        int per id on the way (``encode_file`` writes these)."""
        special_re = self._special_res(allowed_special, text)[0]
        # Encoding makes millions of containers (lists of pre-tokens, bytes of ids) and no reference
        # cycle, so the cyclic garbage collector has nothing to find, yet every 700 allocations it runs
        # and now and then it walks every live container (the cache too): on long-tailed text that was
        # ~1.2 s of a 6 s encode of 20 MB. It is paused for the call and restored as it was.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            packed = self._encode(text, special_re)
        except UnicodeEncodeError:
            # Lone surrogates (text decoded with errors="surrogateescape", ...) have no UTF-8 form.
            # Like tiktoken: join valid surrogate pairs, replace the rest with U+FFFD.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            packed = self._encode(text, special_re)
        finally:
            if was_enabled:
                gc.enable()
        return np.frombuffer(packed, dtype=self.id_dtype)  # a bytearray: the array is writable

    def _pack(self, ids: Iterable[int]) -> bytes:
        """``ids`` as the bytes of an ``id_dtype`` array: the form of the cache's values."""
        return np.fromiter(ids, dtype=self.id_dtype).tobytes()

    def _encode(self, text: str, special_re: re.Pattern[str] | None) -> bytearray:
        """The ids of ``text`` as the bytes of an ``id_dtype`` array."""
        parts = special_re.split(text) if special_re is not None else [text]
        out: list[bytes] = []  # the ids of each batch, packed
        batch: list[bytes | list[str]] = []  # special ids and pre-token lists, up to _WINDOW pre-tokens
        size = 0
        for i, part in enumerate(parts):
            if i % 2:  # split() returns the captured separators at the odd positions
                batch.append(self._special_packed[part])
            elif part:
                pieces = pretokenize(part)
                for start in range(0, len(pieces), _WINDOW):  # a long part, a window at a time
                    window = pieces if len(pieces) <= _WINDOW else pieces[start : start + _WINDOW]
                    batch.append(window)
                    size += len(window)
                    if size >= _WINDOW:
                        self._emit(batch, out)
                        batch, size = [], 0
        self._emit(batch, out)
        return bytearray().join(out)

    def _emit(self, batch: list[bytes | list[str]], out: list[bytes]) -> None:
        """Append the ids of ``batch`` (special tokens' ids and lists of pre-tokens) to ``out``, packed.

        One pass looks every pre-token up (C-level ``map``); the misses get placeholders (see
        ``_PieceCache``), which are filled in place once the misses of the whole batch are merged
        together (``_merge_misses``). Then each list's ids are one ``join`` of its pre-tokens' bytes.
        """
        cache = self._cache
        try:
            found = [item if type(item) is bytes else list(map(cache.__getitem__, item)) for item in batch]
            merged = self._merge_misses(cache.pending)
            deque(map(bytearray.extend, cache.placeholders, merged), 0)  # `found` holds these bytearrays
            cache.store()  # and a new generation if this one is full (recalls count too)
        except BaseException:  # UnicodeEncodeError (lone surrogates), Ctrl-C, ...: no placeholder stays
            cache.discard()
            raise
        out.extend(item if type(item) is bytes else b"".join(item) for item in found)

    def _merge_misses(self, pieces: list[str]) -> list[bytes]:
        """The ids of ``pieces``, the distinct pre-tokens of a batch that missed the cache: merged all
        together (``tokenizer.batch_merge``) when there are enough of them, on long-tailed text several
        times faster than ``_bpe`` one pre-token at a time; else, and for the few longer than
        ``_BATCH_MAX_BYTES``, by ``_bpe``."""
        self._misses_seen += len(pieces)
        # Few misses so far (most text): the batch's pair table would cost more than it saves.
        if (
            len(pieces) < _BATCH_MIN
            or ("_pair_table" not in self.__dict__ and self._misses_seen < _TABLE_AFTER)
            or not PairTable.fits(self.vocab_size, len(self.merges))  # a vocabulary of millions of tokens
        ):
            return list(map(self._pack, map(self._bpe, map(str.encode, pieces))))
        out = list(map(self._text_tokens.get, pieces))  # a pre-token that is a token is that token
        todo = list(compress(range(len(out)), map(is_, out, repeat(None))))
        datas = list(map(str.encode, map(pieces.__getitem__, todo)))
        short = list(map(_BATCH_MAX_BYTES.__ge__, map(len, datas)))
        batched = merge_pieces(self._pair_table, list(compress(datas, short)), self.id_dtype)
        deque(map(out.__setitem__, compress(todo, short), batched), 0)
        long = list(map(not_, short))  # rare: one by one
        long_ids = map(self._pack, map(self._bpe, compress(datas, long)))
        deque(map(out.__setitem__, compress(todo, long), long_ids), 0)
        return out

    @cached_property
    def _pair_table(self) -> PairTable:
        return PairTable(self._encoder, self._ranks)

    @cached_property
    def _text_tokens(self) -> dict[str, bytes]:
        """Text -> the packed id of every ordinary token whose bytes are UTF-8: a pre-token (a ``str``,
        hash already known from the cache lookup) is a token exactly when it is here, since no text
        encodes to bytes that are not UTF-8. Cheaper than encoding every miss to look it up by bytes.
        A miss found here is copied into its placeholder, like a merged one."""
        texts, ids = [], []
        for token, i in self._encoder.items():
            try:
                texts.append(token.decode("utf-8"))
            except UnicodeDecodeError:  # part of a multi-byte character: no text
                continue
            ids.append(i)
        packed = np.array(ids, dtype=self.id_dtype).view(f"V{self.id_dtype.itemsize}")  # one item per id
        return dict(zip(texts, packed.tolist(), strict=True))

    def _special_res(
        self, allowed: AllowedSpecial, text: str | None = None
    ) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
        """(regex that splits out the special tokens, regex of every spelling a cut must not split)."""
        if isinstance(allowed, str):
            if allowed == "all":
                return self._special_re, self._any_special_re
            if allowed == "none":
                return None, None
            if allowed == "none_raise":
                if text is not None and self._special_re is not None:
                    found = self._special_re.search(text)
                    if found:
                        raise ValueError(
                            f"text contains the special token {found.group()!r} (allowed_special="
                            "'none_raise'); pass 'all' to encode it as that token or 'none' as plain text"
                        )
                return None, self._any_special_re
            raise ValueError(f"allowed_special={allowed!r}: expected 'all', 'none', 'none_raise' or a set")
        key = frozenset(allowed)
        if key not in self._subset_res:
            unknown = sorted(key - self.special_ids.keys())
            if unknown:
                raise ValueError(f"allowed_special: {unknown} are not special tokens of this tokenizer")
            self._subset_res[key] = (special_regex(key), special_regex(key, overlapping=True))
        return self._subset_res[key]

    def _bpe(self, piece: bytes) -> tuple[int, ...]:
        """Ids of one pre-token: itself if it is a token, else merged by rank as tiktoken does.

        The symbols form a linked list (``nxt``/``prv`` by start offset) and the candidate merges sit
        in a heap of (rank, start offset), so the lowest rank, then the leftmost pair, is merged first,
        in O(n log n) even for a pre-token of a million bytes. A heap entry is stale once either of its
        symbols has changed; the concatenation (hence rank) then differs, which is how it is detected.
        """
        encoder, ranks = self._encoder, self._ranks
        token = encoder.get(piece)
        if token is not None:
            return (token,)
        n = len(piece)
        parts: list[bytes | None] = [piece[i : i + 1] for i in range(n)]
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get(piece[i : i + 2])) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if parts[i] is None or j >= n or ranks.get(merged := parts[i] + parts[j]) != rank:
                continue
            parts[i], parts[j] = merged, None
            nxt[i] = k = nxt[j]
            if k < n:
                prv[k] = i
                if (r := ranks.get(merged + parts[k])) is not None:
                    heapq.heappush(heap, (r, i))
            if (p := prv[i]) >= 0 and (r := ranks.get(parts[p] + merged)) is not None:
                heapq.heappush(heap, (r, p))
        return tuple(encoder[part] for part in parts if part is not None)

    def encode_iterable(
        self, texts: Iterable[str], *, allowed_special: AllowedSpecial = "all", buffer_chars: int = 1 << 16
    ) -> Iterator[int]:
        """The ids of ``"".join(texts)``, lazily, holding about ``buffer_chars`` of text at a time.

        Pieces are buffered and the buffer is encoded up to its last safe cut (``splitting.last_cut``)
        that splits no special token, so a pre-token or special token spanning two pieces still
        encodes as one.
        Memory stays flat for any input that has such cuts (any text with spaces or newlines).
        """
        straddle_re = self._special_res(allowed_special)[1]  # also validates allowed_special
        margin = max(map(len, self.special_tokens), default=1)
        buffer: list[str] = []
        size, check_at, lo = 0, buffer_chars, 0
        for piece in texts:
            buffer.append(piece)
            size += len(piece)
            if size < check_at:
                continue
            text = "".join(buffer)
            hi = len(text) - margin  # cuts at <= hi: a special token across one is wholly in `text`
            cut = last_cut(text, lo, hi, straddle_re, margin)
            if cut > 0:
                yield from self.encode(text[:cut], allowed_special=allowed_special)
                text = text[cut:]
                lo, check_at = max(hi + 1 - cut, 0), buffer_chars
            else:  # no cut yet (one huge line?): wait for more text instead of rescanning this
                lo, check_at = max(hi + 1, 0), len(text) + buffer_chars
            buffer, size = [text], len(text)
        tail = "".join(buffer)
        if tail:
            yield from self.encode(tail, allowed_special=allowed_special)

    # ----- decoding ----------------------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of ``ids`` (a token may hold part of a multi-byte character)."""
        try:
            return b"".join(map(self.vocab.__getitem__, ids))
        except KeyError as e:
            bad, last = e.args[0], self.vocab_size - 1
            raise ValueError(f"token id {bad!r} is not in the vocabulary (ids 0..{last})") from None


def _rebuild(vocab, merges, special_tokens, cache_size) -> Tokenizer:
    return Tokenizer(vocab, merges, special_tokens, cache_size=cache_size)
