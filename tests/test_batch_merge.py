"""The batched BPE of cache misses (``tokenizer.batch_merge``) gives exactly ``Tokenizer._bpe``'s ids,
and encoding long-tailed text (where most pre-tokens miss the cache) gives exactly tiktoken's ids."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from gpt2_reference import ours_gpt2, tiktoken_gpt2
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.diverse_corpus import write_diverse_corpus
from tokenizer.batch_merge import PairTable, merge_pieces
from tokenizer.bpe import train_bpe
from tokenizer.splitting import pretokenize
from tokenizer.tokenizer import Tokenizer


def batched(tok: Tokenizer, pieces: list[bytes]) -> dict[bytes, tuple[int, ...]]:
    """``merge_pieces`` over the distinct ``pieces`` of 2 bytes or more (as ``Tokenizer`` hands them)."""
    distinct = [piece for piece in dict.fromkeys(pieces) if len(piece) >= 2]
    packed = merge_pieces(PairTable(tok._encoder, tok._ranks), distinct, tok.id_dtype)
    assert all(type(ids) is bytes for ids in packed)
    unpacked = [tuple(np.frombuffer(ids, dtype=tok.id_dtype).tolist()) for ids in packed]
    return dict(zip(distinct, unpacked, strict=True))


@functools.cache
def gpt2() -> Tokenizer:
    return ours_gpt2()


def test_equals_per_word_bpe_on_real_text(fixture_file):
    tok = gpt2()
    text = fixture_file("tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    pieces = [p.encode() for p in pretokenize(text)]
    pieces = [p for p in pieces if p not in tok._encoder]  # as Tokenizer hands them over
    got = batched(tok, pieces)
    assert len(got) > 1000
    assert got == {p: tok._bpe(p) for p in got}


def test_rank_is_by_bytes_not_by_the_merge_pair():
    # "abc" is made by the merge (a, bc), but in "xabc" the pair (a, b) merges first, after which the
    # adjacent pair is (ab, c): no merge has it, yet its bytes are the token "abc", so it merges
    # (tiktoken's rule, and _bpe's). A table of the merge pairs alone would leave x + ab + c.
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"bc", 258: b"abc"}
    tok = Tokenizer(vocab, [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")])
    assert tok._bpe(b"xabc") == (ord("x"), 258)
    pieces = [b"xabc", b"abcabc", b"bcab", b"cabx"]
    assert batched(tok, pieces) == {p: tok._bpe(p) for p in pieces}
    table = PairTable(tok._encoder, tok._ranks)
    assert merge_pieces(table, [], tok.id_dtype) == []  # every miss too long to batch


def test_rank_of_any_pair_is_the_rank_of_its_bytes():
    """Every merge pair, every other split of a merge result, random pairs and padding, against the
    dictionaries the table is built from (its slots pack key and rank into one int64)."""
    tok = gpt2()
    table = PairTable(tok._encoder, tok._ranks)
    ids_of = tok._encoder
    pairs = [(ids_of[a], ids_of[b]) for a, b in tok.merges]
    pairs += [
        (ids_of[t[:c]], ids_of[t[c:]])
        for t in list(tok._ranks)[::7]
        for c in range(1, len(t))
        if t[:c] in ids_of and t[c:] in ids_of
    ]
    rng = np.random.default_rng(0)
    pairs += [tuple(p) for p in rng.integers(0, table.n, size=(20_000, 2)).tolist()]
    pairs += [(table.pad, 300), (300, table.pad), (table.pad, table.pad)]
    left, right = (np.array(side, dtype=np.int32) for side in zip(*pairs, strict=True))
    no_rank = np.iinfo(np.int32).max
    expected = [
        no_rank if table.pad in (a, b) else tok._ranks.get(tok.vocab[a] + tok.vocab[b], no_rank)
        for a, b in pairs
    ]
    assert table.rank(left, right).tolist() == expected
    assert PairTable.fits(50_257, 50_000) and not PairTable.fits(3_000_000, 3_000_000)
    huge = {bytes([b]): b for b in range(256)} | {b"zz": 1 << 32}  # an id past 32 bits: keys of 65 bits
    with pytest.raises(ValueError, match="4294967297 tokens and 1 merges overflow a 64-bit slot"):
        PairTable(huge, {b"zz": 0})


@settings(max_examples=40, deadline=None)
@given(merges=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=150))
def test_table_holds_exactly_every_split_into_two_tokens(merges):
    """The table's pairs are every (left, right) of tokens whose bytes join into a merge result, on
    vocabularies with NUL bytes, lengths on both sides of the 7 bytes packed into one integer, and
    results past 20 bytes (halves looked up by dictionary). Brute force: every cut of every result."""
    vocab = [bytes([b]) for b in range(256)]
    ranks: dict[bytes, int] = {}
    for a, b in merges:  # each half a NUL, "a", "b" or an earlier result: splits recur, lengths grow
        pool = [b"\x00", b"a", b"b", *ranks]
        result = pool[a % len(pool)][:15] + pool[b % len(pool)][:15]
        if result not in ranks and len(result) > 1:
            ranks[result] = len(ranks)
            vocab.append(result)
    encoder = {token: i for i, token in enumerate(vocab)}
    table = PairTable(encoder, ranks)
    expected = {
        (encoder[t[:c]], encoder[t[c:]]): rank
        for t, rank in ranks.items()
        for c in range(1, len(t))
        if t[:c] in encoder and t[c:] in encoder
    }
    held = table._held[table._held != -1]
    got = dict(zip((held >> table._rank_bits).tolist(), (held & table._rank_mask).tolist(), strict=True))
    assert got == {a * table._base + b: rank for (a, b), rank in expected.items()}


@settings(max_examples=25, deadline=None)
@given(
    training=st.text(alphabet="abcab c", min_size=50, max_size=400),
    pieces=st.lists(st.text(alphabet="abc", min_size=2, max_size=40), min_size=1, max_size=60),
)
def test_equals_per_word_bpe_on_random_vocabularies(tmp_path_factory, training, pieces):
    path = tmp_path_factory.mktemp("bpe") / "train.txt"
    path.write_text(training, encoding="utf-8")
    vocab, merges = train_bpe(path, 256 + 40, [])
    tok = Tokenizer(vocab, merges)
    encoded = [p.encode() for p in pieces if p.encode() not in tok._encoder]  # as Tokenizer hands them
    assert batched(tok, encoded) == {p: tok._bpe(p) for p in dict.fromkeys(encoded)}


@pytest.fixture(scope="module")
def long_tailed_text(tmp_path_factory) -> str:
    """The first megabyte of the long-tailed benchmark corpus, generated from the same seed."""
    path = write_diverse_corpus(tmp_path_factory.mktemp("diverse") / "diverse.txt", 1_000_000)
    return path.read_text(encoding="utf-8")


def test_ids_equal_tiktoken_on_long_tailed_text(long_tailed_text):
    tok = Tokenizer(gpt2().vocab, gpt2().merges, gpt2().special_tokens)
    ids = tok.encode(long_tailed_text)
    assert tok._misses_seen > 30_000  # most pre-tokens missed the cache: the batched path ran
    assert "_pair_table" in tok.__dict__
    assert ids == tiktoken_gpt2().encode(long_tailed_text, allowed_special="all")
    # No placeholder is left empty: every entry is the packed ids of its pre-token.
    assert all(type(ids) is bytearray and ids for ids in tok._cache.values())
    some = list(tok._cache.items())[::97]
    assert [np.frombuffer(ids, tok.id_dtype).tolist() for _, ids in some] == [tok.encode(p) for p, _ in some]


def test_small_cache_stays_bounded_on_long_tailed_text(long_tailed_text):
    text = long_tailed_text[:200_000]
    small = Tokenizer(gpt2().vocab, gpt2().merges, gpt2().special_tokens, cache_size=1000)
    assert small.encode(text) == gpt2().encode(text)
    assert len(small._cache) + len(small._cache.previous) <= 1000


def test_misses_too_long_to_batch_are_merged_one_by_one_and_huge_ones_not_cached(long_tailed_text):
    tok = Tokenizer(gpt2().vocab, gpt2().merges, gpt2().special_tokens)
    tok.encode(long_tailed_text[:700_000])
    assert "_pair_table" in tok.__dict__  # from now on, a window's misses are merged as a batch
    long_word, huge_word = " " + "abcdefghij" * 4, " " + "q" * 300  # 41 and 301 bytes: one pre-token each
    text = long_tailed_text[700_000:800_000] + long_word + huge_word + long_word
    seen = tok._misses_seen
    assert tok.encode(text) == tiktoken_gpt2().encode(text, allowed_special="all")
    assert tok._misses_seen - seen > 1000  # the batched path ran for this window
    assert long_word in tok._cache and huge_word not in tok._cache


def test_text_tokens_are_the_tokens_a_pretoken_can_spell():
    # A missed pre-token is looked up by its text: every ordinary token whose bytes are UTF-8 is there
    # under that text, and no other (GPT-2 has tokens that are part of a multi-byte character).
    tok = gpt2()
    ids = {text: np.frombuffer(packed, tok.id_dtype).tolist() for text, packed in tok._text_tokens.items()}
    assert all(tok.vocab[i] == text.encode("utf-8") for text, (i,) in ids.items())
    is_text = {i for i, token in tok.vocab.items() if token.decode("utf-8", "replace").encode() == token}
    assert {i for (i,) in ids.values()} == is_text - {tok.eot_id}
    assert 0 < len(tok._text_tokens) < len(tok._encoder)
