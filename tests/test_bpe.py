"""``train_bpe`` against a deliberately naive reference: the textbook algorithm, recounting every pair of
every word at every merge. Same merges, same vocab, on real text and on generated corpora full of ties
and special tokens."""

from __future__ import annotations

import warnings
from collections import Counter
from itertools import pairwise
from unittest import mock

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import pretokenize, train_bpe
from tokenizer.bpe import _order_key, train

EOT = "<|endoftext|>"
GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def naive_bpe(text: str, vocab_size: int, special_tokens: list[str]):
    """The textbook algorithm, slow on purpose: ``(vocab, merges, length of the text in tokens)``."""
    pieces = [text]
    if special_tokens:
        pieces = regex.split("|".join(map(regex.escape, sorted(special_tokens, key=len, reverse=True))), text)
    words = Counter(
        tuple(bytes([b]) for b in token.encode("utf-8"))
        for piece in pieces
        for token in regex.findall(GPT2, piece)
    )
    vocab = {i: t.encode("utf-8") for i, t in enumerate(special_tokens)}
    vocab.update({len(special_tokens) + i: bytes([i]) for i in range(256)})
    merges = []
    while len(vocab) < vocab_size:
        pairs: dict[tuple[bytes, bytes], int] = {}
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))  # most frequent, then greatest
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            if best[0] in word:
                out, i = [], 0
                while i < len(word):
                    if word[i] == best[0] and i + 1 < len(word) and word[i + 1] == best[1]:
                        out.append(best[0] + best[1])
                        i += 2
                    else:
                        out.append(word[i])
                        i += 1
                word = tuple(out)
            merged[word] += count
        words = merged
    n_tokens = sum(len(w) * c for w, c in words.items()) + len(pieces) - 1
    return vocab, merges, n_tokens


def check_against_naive(path, vocab_size, special_tokens, **kwargs):
    text = path.read_bytes().decode("utf-8", errors="replace")
    vocab, merges, n_tokens = naive_bpe(text, vocab_size, special_tokens)
    result = train(path, vocab_size, special_tokens, **kwargs)
    assert result.merges == merges
    assert result.vocab == vocab
    assert result.n_tokens == n_tokens
    return result


@pytest.mark.parametrize(
    "name, vocab_size",
    [("corpus.en", 1000), ("tinystories_sample.txt", 500), ("german.txt", 400), ("address.txt", 400)],
)
def test_matches_naive_on_real_text(fixture_file, name, vocab_size):
    check_against_naive(fixture_file(name), vocab_size, [EOT])


@pytest.mark.slow
def test_matches_naive_on_tinyshakespeare(fixture_file):
    result = check_against_naive(fixture_file("tinyshakespeare.txt"), 1000, [EOT], num_workers=2)
    assert len(result.merges) == 1000 - 257


# Small alphabets make many pairs tie; special tokens land next to anything, repeated or not.
FRAGMENTS = ["a", "b", "c", "ab", "ba", " ", "  ", "\n", "\n\n", "é", "1", "'s", ".", EOT, "<|pad|>", "<|"]
corpora = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=80).map("".join)


@settings(max_examples=150, deadline=None)
@given(
    text=corpora,
    special_tokens=st.sampled_from([[], [EOT], [EOT, "<|pad|>"], ["<|pad|>", EOT, EOT + EOT]]),
    extra=st.integers(0, 40),
    num_workers=st.sampled_from([1, 2]),
)
def test_matches_naive_on_generated_corpora(tmp_path_factory, text, special_tokens, extra, num_workers):
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    vocab_size = 256 + len(special_tokens) + extra
    with mock.patch.object(pretokenize, "MIN_CHUNKS_PER_WORKER", 1):  # fork even for a few bytes
        result = check_against_naive(path, vocab_size, special_tokens, num_workers=num_workers, chunk_bytes=2)
    assert result.num_workers <= num_workers


def test_ties_go_to_the_greater_pair(tmp_path):
    """Every pair below occurs once: the lexicographically greatest pair of byte strings wins."""
    path = tmp_path / "t.txt"
    path.write_bytes(b"ab cd")  # pre-tokens "ab", " cd": pairs (a,b), ( ,c), (c,d), each once
    _, merges = train_bpe(path, 260, [])
    assert merges == [(b"c", b"d"), (b"a", b"b"), (b" ", b"cd")]  # b"a" > b" "
    path.write_bytes(b"zab za")  # (z,a) occurs twice; then (za,b) and ( ,za) tie, and b"za" > b" "
    _, merges = train_bpe(path, 260, [])
    assert merges == [(b"z", b"a"), (b"za", b"b"), (b" ", b"za")]


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=6), min_size=2, max_size=8, unique=True))
def test_order_key_reverses_byte_order(tokens):
    """The heap's tie-break key sorts byte strings in descending order, prefixes after extensions."""
    assert sorted(tokens, key=_order_key) == sorted(tokens, reverse=True)
    pairs = [(a, b) for a in tokens[:3] for b in tokens[:3]]
    assert sorted(pairs, key=lambda p: (_order_key(p[0]), _order_key(p[1]))) == sorted(pairs, reverse=True)


def test_vocab_layout_and_special_tokens_never_merged(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(("the cat<|endoftext|>the hat" + EOT + EOT + "\n") * 30, encoding="utf-8")
    vocab, merges = train_bpe(path, 300, [EOT, "<|pad|>"])
    assert vocab[0] == EOT.encode() and vocab[1] == b"<|pad|>"
    assert [vocab[2 + i] for i in range(256)] == [bytes([i]) for i in range(256)]
    assert [vocab[258 + i] for i in range(len(merges))] == [a + b for a, b in merges]
    assert len(vocab) == 258 + len(merges)
    assert not any(b"<" in a + b or b"|" in a + b for a, b in merges)


def test_stops_early_when_no_pair_is_left(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"ab ab ab")
    vocab, merges = train_bpe(path, 10_000, [])
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert len(vocab) == 258


def test_result_does_not_depend_on_workers_or_chunks(fixture_file):
    path = fixture_file("tinystories_200k.txt")
    reference = train(path, 800, [EOT], num_workers=1, chunk_bytes=1 << 30)
    for workers, chunk_bytes in [(2, 4096), (3, 1000), (2, 97)]:
        result = train(path, 800, [EOT], num_workers=workers, chunk_bytes=chunk_bytes)
        assert (result.vocab, result.merges, result.n_tokens) == (
            reference.vocab,
            reference.merges,
            reference.n_tokens,
        )
        assert result.num_workers == workers


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"caf\xe9 ol\xe9 \xff\xfe caf\xe9\n" * 20)  # 5 invalid sequences a line
    with pytest.warns(UserWarning, match=r"replaced 100 invalid UTF-8 sequence\(s\)"):
        vocab, merges = train_bpe(path, 280, [])
    text = path.read_bytes().decode("utf-8", errors="replace")
    assert (vocab, merges) == naive_bpe(text, 280, [])[:2]
    path.write_bytes(b"clean text\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_bpe(path, 260, [])


@pytest.mark.parametrize(
    "setup, vocab_size, special_tokens, error, message",
    [
        ("missing", 300, [], FileNotFoundError, "does not exist"),
        ("directory", 300, [], IsADirectoryError, "is a directory"),
        ("empty", 300, [], ValueError, "is empty"),
        ("ok", 256, [EOT], ValueError, r"vocab_size=256 is too small: expected at least 257"),
        ("ok", 300, [EOT, EOT], ValueError, "duplicate"),
        ("ok", 300, [""], ValueError, "non-empty"),
    ],
)
def test_bad_input(tmp_path, setup, vocab_size, special_tokens, error, message):
    path = tmp_path / "in.txt"
    if setup == "directory":
        path.mkdir()
    elif setup == "empty":
        path.write_bytes(b"")
    elif setup == "ok":
        path.write_bytes(b"text")
    with pytest.raises(error, match=message):
        train_bpe(path, vocab_size, special_tokens)
