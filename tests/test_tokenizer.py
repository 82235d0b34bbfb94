"""Tokenizer: ids identical to tiktoken for GPT-2's vocabulary, special tokens, decode, files."""

from __future__ import annotations

import functools
import gc
import json
import pickle

import numpy as np
import pytest
from gpt2_reference import (
    EOT,
    FRAGMENTS,
    GPT2_PATTERN,
    TEXT_FILES,
    ours_gpt2,
    tiktoken_gpt2,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer.tokenizer import Tokenizer

texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join)
with_eot = st.lists(st.one_of(texts, st.just(EOT)), max_size=6).map("".join)
quick = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", TEXT_FILES)
def test_ids_equal_tiktoken_on_real_text(fixture_file, name):
    text = fixture_file(name).read_text(encoding="utf-8")
    ids = ours_gpt2().encode(text)
    assert ids == tiktoken_gpt2().encode(text, allowed_special="all")
    assert ours_gpt2().decode(ids) == text
    if EOT not in text:
        assert ids == tiktoken_gpt2().encode_ordinary(text)


@quick
@given(texts)
def test_ids_equal_tiktoken_on_unicode_strings(text):
    ids = ours_gpt2().encode(text)
    assert ids == tiktoken_gpt2().encode(text, allowed_special="all")
    assert ours_gpt2().decode(ids) == text
    assert ours_gpt2().encode(text, allowed_special="none") == tiktoken_gpt2().encode_ordinary(text)


@quick
@given(st.text())
def test_ids_equal_tiktoken_on_any_code_points(text):
    ids = ours_gpt2().encode(text, allowed_special="none")
    assert ids == tiktoken_gpt2().encode_ordinary(text)
    assert ours_gpt2().decode(ids) == text


@quick
@given(with_eot)
def test_endoftext_inserted_anywhere(text):
    tok, ref = ours_gpt2(), tiktoken_gpt2()
    ids = tok.encode(text)
    assert ids == ref.encode(text, allowed_special="all")
    assert ids.count(50256) == text.count(EOT)
    assert tok.decode(ids) == text
    # "none": the spelling is ordinary text, exactly as tiktoken's encode_ordinary
    assert tok.encode(text, allowed_special="none") == ref.encode_ordinary(text)
    assert tok.encode(text, allowed_special=set()) == ref.encode_ordinary(text)


def test_long_pre_tokens_match_tiktoken():
    """Long pre-tokens go through the heap merge (and are not cached); a quadratic merge would crawl."""
    tok, ref = ours_gpt2(), tiktoken_gpt2()
    for text in ["a" * 20_000, " " * 5000 + "x", "\U0001f600" * 3000, "ab" * 7000, "1" * 9999 + "!" * 500]:
        assert tok.encode(text) == ref.encode_ordinary(text)


def test_lone_surrogates_become_replacement_characters_as_in_tiktoken():
    tok, ref = ours_gpt2(), tiktoken_gpt2()
    for text in ["a\ud800b", "\udfff", "x \ud83d\ude00 y", "zq\udc80zq"]:
        assert tok.encode(text) == ref.encode(text)
        # The first try (its misses failed to encode) left no empty placeholder or other half-done entry.
        assert all(type(ids) is bytearray and ids for ids in tok._cache.values())
    assert tok.encode("zq") == ref.encode("zq")


def test_decode_invalid_utf8_becomes_replacement_character():
    tok = ours_gpt2()
    emoji = tok.encode("\U0001f600")  # 4 bytes, several tokens
    assert len(emoji) > 1
    assert tok.decode(emoji[:-1]) == tiktoken_gpt2().decode(emoji[:-1])
    assert "\ufffd" in tok.decode(emoji[:-1])
    assert tok.decode_bytes(emoji) == "\U0001f600".encode()
    with pytest.raises(ValueError, match="token id 50257 is not in the vocabulary"):
        tok.decode([1, 50257])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])


def test_allowed_special_modes():
    tok = ours_gpt2()
    text = f"a{EOT}b"
    assert tok.encode(text) == tok.encode(text, allowed_special={EOT}) == [64, 50256, 65]
    assert 50256 not in tok.encode(text, allowed_special="none")
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>'.*none_raise"):
        tok.encode(text, allowed_special="none_raise")
    assert tok.encode("ab", allowed_special="none_raise") == tok.encode("ab")
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match="expected 'all', 'none', 'none_raise' or a set"):
        tok.encode(text, allowed_special="some")
    assert tok.eot_id == tok.token_to_id(EOT) == 50256
    assert tok.token_to_id(" the") == 262
    with pytest.raises(ValueError, match="not a token"):
        tok.token_to_id("no such token at all")


def _tiny_vocab(extra: list[bytes]) -> dict[int, bytes]:
    vocab = {i: bytes([i]) for i in range(256)}
    for token in extra:
        vocab[len(vocab)] = token
    return vocab


def test_overlapping_special_tokens_longest_wins():
    double = EOT + EOT
    tok = Tokenizer(_tiny_vocab([EOT.encode(), double.encode(), b"<|pad|>"]), [], [EOT, double, "<|pad|>"])
    eot, dbl, pad = 256, 257, 258
    assert tok.encode(EOT * 3) == [dbl, eot]
    assert tok.encode(f"x{EOT}{EOT}y<|pad|>") == [ord("x"), dbl, ord("y"), pad]
    assert tok.encode(EOT * 3, allowed_special={EOT}) == [eot, eot, eot]
    assert tok.decode(tok.encode(EOT * 5)) == EOT * 5


RANKED = (
    [b"bc", b"ab", b"abc", b"ca", b"abca"],
    [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc"), (b"c", b"a"), (b"abc", b"a")],
)


def test_merges_applied_by_rank_lowest_first():
    # ranks: "bc" (0) before "ab" (1); "abc" only via ("a", "bc").
    tok = Tokenizer(_tiny_vocab(RANKED[0]), RANKED[1])
    assert tok.encode("abc") == [258]  # also a whole-token hit
    assert tok.encode("abcab") == [258, 257]
    assert tok.encode("abab") == [257, 257]
    assert tok.encode("zbcz") == [ord("z"), 256, ord("z")]


@functools.cache
def _tiktoken_ranked():
    import tiktoken

    vocab = _tiny_vocab(RANKED[0])
    return tiktoken.Encoding(
        "ranked", pat_str=GPT2_PATTERN, mergeable_ranks={t: i for i, t in vocab.items()}, special_tokens={}
    )


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcz ", max_size=40))
def test_tiny_vocab_equals_tiktoken(text):
    assert Tokenizer(_tiny_vocab(RANKED[0]), RANKED[1]).encode(text) == _tiktoken_ranked().encode_ordinary(
        text
    )


def test_whole_pre_token_is_looked_up_before_merging():
    # "abc" is a token that no merge builds. As in tiktoken (and HF's ignore_merges), a pre-token that
    # is a token is emitted whole; inside a longer pre-token only the merges apply.
    tok = Tokenizer(_tiny_vocab([b"bc", b"ab", b"abc"]), [(b"b", b"c"), (b"a", b"b")])
    assert tok.encode("abc") == [258]
    assert tok.encode("abcd") == [ord("a"), 256, ord("d")]


def test_constructor_rejects_bad_vocabularies():
    with pytest.raises(ValueError, match="ids must be 0..256 without gaps; id 256 is missing"):
        Tokenizer({**_tiny_vocab([]), 301: b"xy"}, [])
    with pytest.raises(ValueError, match="lacks the single byte 0x41"):
        Tokenizer({**_tiny_vocab([]), 65: b"AA"}, [])
    with pytest.raises(ValueError, match="special token '<\\|x\\|>' is not in the vocabulary"):
        Tokenizer(_tiny_vocab([]), [], ["<|x|>"])
    with pytest.raises(ValueError, match="special tokens must be non-empty strings"):
        Tokenizer(_tiny_vocab([]), [], [""])
    with pytest.raises(ValueError, match="ids 97 and 256 are both"):
        Tokenizer(_tiny_vocab([b"a"]), [])
    with pytest.raises(ValueError, match=r"merge 0 \(b'a', b'b'\): b'ab' is not an ordinary token"):
        Tokenizer(_tiny_vocab([]), [(b"a", b"b")])


def test_encode_leaves_the_garbage_collector_as_it_found_it(monkeypatch):
    """encode pauses the cyclic collector for its own allocations only, even when it raises."""
    tok = ours_gpt2()
    assert gc.isenabled()
    tok.encode("hello world")
    assert gc.isenabled()
    broken = Tokenizer(tok.vocab, tok.merges, tok.special_tokens)

    def fail(*args):
        assert not gc.isenabled()
        raise RuntimeError("boom")

    monkeypatch.setattr(broken, "_emit", fail)
    with pytest.raises(RuntimeError, match="boom"):
        broken.encode("hello world")
    assert gc.isenabled()
    gc.disable()
    try:
        tok.encode("hello again")
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("name", TEXT_FILES)
def test_encode_to_numpy_is_encode_as_a_writable_array_of_id_dtype(fixture_file, name):
    tok = ours_gpt2()
    text = fixture_file(name).read_text(encoding="utf-8")[:50_000] + EOT + "tail"
    ids = tok.encode_to_numpy(text)
    assert ids.dtype == tok.id_dtype == np.uint16 and ids.ndim == 1 and ids.flags.writeable
    assert ids.tolist() == tok.encode(text) == tiktoken_gpt2().encode(text, allowed_special="all")
    assert tok.encode_to_numpy("").shape == (0,)
    big = Tokenizer({i: bytes([i]) if i < 256 else b"x%d" % i for i in range(70_000)}, [])
    assert big.id_dtype == np.uint32 and big.encode_to_numpy("ab").tolist() == [97, 98]


def test_cache_stays_bounded_and_results_do_not_change():
    tok = ours_gpt2()
    small = Tokenizer(tok.vocab, tok.merges, tok.special_tokens, cache_size=50)
    text = " ".join(f"word{i} w{i * 7}x" for i in range(500))
    assert small.encode(text) == tok.encode(text)
    assert len(small._cache) <= 50


def test_save_and_from_dir_round_trip(tmp_path):
    tok = Tokenizer(
        _tiny_vocab([b"ab", b"abc", EOT.encode(), b" a"]), [(b"a", b"b"), (b"ab", b"c"), (b" ", b"a")], [EOT]
    )
    out = tok.save(tmp_path / "tok", extra_meta={"corpus": "x.txt"})
    assert sorted(p.name for p in out.iterdir()) == [
        "merges.txt",
        "meta.json",
        "tokenizer.json",
        "vocab.json",
    ]
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"special_tokens": [EOT], "vocab_size": 260, "hash": tok.fingerprint, "corpus": "x.txt"}
    again = Tokenizer.from_dir(out)
    assert again.vocab == tok.vocab and again.merges == tok.merges and again.special_tokens == [EOT]
    assert again.fingerprint == tok.fingerprint
    text = f"abc ab a{EOT}\x00\xff \U0001f600"
    assert again.encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match="may not override"):
        tok.save(tmp_path / "other", extra_meta={"hash": "x"})


def test_from_dir_errors(tmp_path):
    tok = Tokenizer(_tiny_vocab([b"ab"]), [(b"a", b"b")])
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        Tokenizer.from_dir(tmp_path)
    out = tok.save(tmp_path / "tok")
    (out / "merges.txt").write_text("#version: 0.2\n")  # edited after saving: no merges
    with pytest.raises(ValueError, match="does not match vocab.json"):
        Tokenizer.from_dir(out)
    (out / "meta.json").write_text('{"special_tokens": "<|endoftext|>"}')
    with pytest.raises(ValueError, match="'special_tokens' must be a list"):
        Tokenizer.from_dir(out)


def test_fingerprint_is_stable_and_sensitive():
    base = Tokenizer(_tiny_vocab([b"ab"]), [(b"a", b"b")])
    same = Tokenizer(dict(reversed(list(_tiny_vocab([b"ab"]).items()))), [(b"a", b"b")])
    assert base.fingerprint == same.fingerprint
    assert len(base.fingerprint) == 64
    plain = Tokenizer(_tiny_vocab([b"ab", b"<s>"]), [(b"a", b"b")])
    special = Tokenizer(_tiny_vocab([b"ab", b"<s>"]), [(b"a", b"b")], ["<s>"])
    no_merges = Tokenizer(_tiny_vocab([b"ab"]), [])
    assert len({base.fingerprint, plain.fingerprint, special.fingerprint, no_merges.fingerprint}) == 4


def test_pickles_without_its_cache():
    tok = Tokenizer(_tiny_vocab([b"ab"]), [(b"a", b"b")])
    tok.encode("ab ab abab")
    clone = pickle.loads(pickle.dumps(tok))
    assert len(clone._cache) == 0
    assert clone.encode("abab") == tok.encode("abab") == [256, 256]
